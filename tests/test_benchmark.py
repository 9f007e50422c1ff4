"""The benchmark runs (smoke mode) and reports ratios against native; no timing is asserted."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).parents[1] / "experiments" / "benchmark.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_smoke_run_writes_ratios(benchmark, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert benchmark.main(["--smoke", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["smoke"] and report["machine"]["torch"]
    kinds = {r["kind"] for r in report["results"]}
    assert kinds == {"time", "memory"}
    for r in report["results"]:
        assert r["native"] > 0 and r["manual"] > 0
        assert r["ratio"] == pytest.approx(sorted(r["ratios"])[len(r["ratios"]) // 2])
    assert "ratio" in capsys.readouterr().out


def test_saved_bytes_counts_distinct_storages(benchmark):
    import torch

    w = torch.randn(16, 8, requires_grad=True)
    x = torch.randn(4, 8)
    # native linear with an input that needs no grad keeps only x for dW
    assert benchmark.saved_bytes(lambda: torch.nn.functional.linear(x, w)) == x.nbytes
    # the hand-derived one keeps the same, and no more
    import manualgrad

    assert benchmark.saved_bytes(lambda: manualgrad.functional.linear(x, w)) == x.nbytes
