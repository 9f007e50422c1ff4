"""Shared test helpers: devices, and one comparison of an op against its native twin."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ),
]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


def tolerances(dtype: torch.dtype) -> dict:
    return {
        torch.float64: dict(rtol=1e-10, atol=1e-10),
        torch.float32: dict(rtol=1e-5, atol=1e-5),
        torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
        torch.float16: dict(rtol=5e-3, atol=5e-3),
    }[dtype]


def compare_with_native(manual_fn, native_fn, *inputs, tol: dict | None = None, seed: int = 0):
    """Run ``manual_fn`` and ``native_fn`` on copies of ``inputs`` and assert that outputs
    and the gradient of every input that requires grad agree, for a random upstream gradient.

    Dtypes and shapes of gradients are compared exactly (autograd would silently cast or
    sum a wrong one). Returns ``(manual_out, native_out)``.
    """

    def clone(t):
        if not isinstance(t, torch.Tensor):
            return t
        return t.detach().clone().requires_grad_(t.requires_grad)

    manual_in = [clone(t) for t in inputs]
    native_in = [clone(t) for t in inputs]
    out_m = manual_fn(*manual_in)
    out_n = native_fn(*native_in)
    tol = tol or tolerances(out_n.dtype)
    assert out_m.shape == out_n.shape
    assert out_m.dtype == out_n.dtype
    torch.testing.assert_close(out_m, out_n, **tol, equal_nan=True)

    diff_inputs = [
        (m, n)
        for m, n in zip(manual_in, native_in, strict=True)
        if isinstance(m, torch.Tensor) and m.requires_grad
    ]
    if not diff_inputs:
        return out_m, out_n
    gen = torch.Generator(device=out_n.device).manual_seed(seed)
    upstream = torch.randn(out_n.shape, generator=gen, device=out_n.device, dtype=out_n.dtype)
    grads_m = torch.autograd.grad(out_m, [m for m, _ in diff_inputs], upstream, allow_unused=True)
    grads_n = torch.autograd.grad(out_n, [n for _, n in diff_inputs], upstream, allow_unused=True)
    for (m, _), gm, gn in zip(diff_inputs, grads_m, grads_n, strict=True):
        assert gm is not None and gn is not None
        assert gm.shape == m.shape == gn.shape
        assert gm.dtype == gn.dtype
        torch.testing.assert_close(gm, gn, **tol, equal_nan=True)
    return out_m, out_n


# ---- shared by the Lightning and CLI tests (no Lightning import here) -------------------

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
QUIET_CLI = [
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.accelerator=cpu",
]


@pytest.fixture
def one_thread():
    """Tiny models: a second intra-op thread only contends with other processes here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A working directory that looks like the repository root (``experiments/`` in it),
    so the README's relative paths work and ``lightning_logs/`` lands in ``tmp_path``."""
    (tmp_path / "experiments").symlink_to(EXPERIMENTS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run (all its event files), read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={SCALARS: 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()[SCALARS]}
