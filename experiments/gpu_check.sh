#!/usr/bin/env bash
# The CUDA checks, in one run on a lent GPU machine (torch 2.11 there, no network, no
# jsonargparse): every test file that takes the `device` fixture or is CUDA-only, minus
# any that imports the Lightning CLI, then the benchmark on CUDA. About 3-4 minutes.
#
#   OUT=/some/dir PYTHONPATH=. bash experiments/gpu_check.sh
#
# Writes into $OUT (a temp dir if unset): env.txt, pytest_cuda.log, junit_cuda.xml,
# pytest_rerun_warnings.log (only if something failed), bench_cuda.json, bench_cuda.log.
# Time limits (seconds) can be overridden: PYTEST_TIMEOUT, RERUN_TIMEOUT, BENCH_TIMEOUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"

"$PY" - <<'EOF' 2>&1 | tee "$OUT/env.txt"
import platform, sys
import torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        print(f"device {i}:", torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i))
else:
    print("device: none (torch.cuda.is_available() is False): the CUDA cases will be skipped")
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton: not installed (torch.compile on CUDA will fail)")
EOF

files=()
for f in tests/test_*.py; do
    if grep -qE "jsonargparse|LightningCLI|manualgrad\.lightning|pytorch_lightning" "$f"; then
        continue # the CLI needs jsonargparse, which that machine lacks
    fi
    if [[ "$f" == tests/test_cuda.py ]] || grep -qwE "device" "$f"; then
        files+=("$f")
    fi
done
echo "test files: ${files[*]}" | tee -a "$OUT/env.txt"

# SIGINT on timeout: pytest stops cleanly and still writes the junit xml and the summary.
start=$SECONDS
timeout -s INT -k 20 "${PYTEST_TIMEOUT:-160}" "$PY" -m pytest -rA -q "${files[@]}" \
    --junitxml="$OUT/junit_cuda.xml" >"$OUT/pytest_cuda.log" 2>&1
status=$?
echo "pytest exit $status after $((SECONDS - start)) s"
grep -E "^(FAILED|ERROR)" "$OUT/pytest_cuda.log" | head -40
grep -cE "^PASSED .*cuda" "$OUT/pytest_cuda.log" | sed 's/^/CUDA cases passed: /'
tail -n 3 "$OUT/pytest_cuda.log"

if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then
    # Warnings are errors in this suite: rerun what failed with warnings shown, not raised,
    # to tell a torch 2.11 warning from a real failure.
    echo "--- rerun of the failures with -W default ---"
    timeout -s INT -k 20 "${RERUN_TIMEOUT:-45}" "$PY" -m pytest -rA -q --lf -W default \
        "${files[@]}" >"$OUT/pytest_rerun_warnings.log" 2>&1
    grep -E "^(PASSED|FAILED|ERROR)|Warning" "$OUT/pytest_rerun_warnings.log" | sort | uniq -c | head -40
    tail -n 2 "$OUT/pytest_rerun_warnings.log"
fi

if [ -f experiments/benchmark.py ]; then
    echo "--- benchmark on CUDA ---"
    timeout -s INT -k 10 "${BENCH_TIMEOUT:-60}" "$PY" experiments/benchmark.py --device cuda \
        --out "$OUT/bench_cuda.json" >"$OUT/bench_cuda.log" 2>&1
    echo "benchmark exit $?"
    tail -n 30 "$OUT/bench_cuda.log"
fi
cat "$OUT/env.txt"
exit "$status"
