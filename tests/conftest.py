"""Shared test helpers: devices and autocast settings, one comparison of an op against its
native twin, PyTorch's ModuleInfo samples as (native, manual) module pairs, wrong twins of the
hand-derived Functions (and the fixtures that route the ops through them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import manualgrad.ops.linear
import manualgrad.ops.mse
from manualgrad import ManualLinearFunction, ManualMSEFunction
from manualgrad.check import TOLERANCES, backward_coverage
from manualgrad.ops._apply import ManualOp

pytest.register_assert_rewrite("helpers_compose")  # its asserts report values, as tests' do

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

DEVICES = ["cpu", pytest.param("cuda", marks=cuda)]

#: (device, autocast dtype) for the autocast tests of every op
AUTOCAST = [
    pytest.param("cpu", torch.bfloat16, id="cpu-bfloat16"),
    pytest.param("cpu", torch.float16, id="cpu-float16"),
    pytest.param("cuda", torch.float16, id="cuda-float16", marks=cuda),
    pytest.param("cuda", torch.bfloat16, id="cuda-bfloat16", marks=cuda),
]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


def tolerances(dtype: torch.dtype) -> dict:
    """``assert_close`` tolerances from the one table, :data:`manualgrad.check.TOLERANCES`.
    Compared entry by entry, each entry gets ``rtol`` as its absolute floor too (the table's
    ``atol`` is for a whole tensor, next to its largest entry)."""
    rtol, _ = TOLERANCES[dtype]
    return dict(rtol=rtol, atol=rtol)


def wrong_twin(fn_cls: type, factor: float = 3.0) -> type:
    """A deliberately wrong copy of a hand-derived Function: the same forward, but every
    gradient its backward returns, and every tangent its jvp returns, times ``factor``.

    Route an op through it (``monkeypatch.setattr(module, "_op", ManualOp(wrong_twin(F)))``,
    where ``_op`` is the op's ManualOp) and a test that still sees native gradients proves
    that the hand-derived rule is not the one that ran.
    """
    # Plain function objects: Dynamo cannot trace ``SomeFunction.backward(...)`` called on a
    # Function class from inside another Function's backward.
    backward, jvp = fn_cls.backward, fn_cls.jvp

    def scaled(result):
        if isinstance(result, tuple):
            return tuple(None if r is None else factor * r for r in result)
        return None if result is None else factor * result

    return type(
        f"Wrong{fn_cls.__name__}",
        (fn_cls,),
        {
            "backward": staticmethod(lambda ctx, *grads: scaled(backward(ctx, *grads))),
            "jvp": staticmethod(lambda ctx, *tangents: scaled(jvp(ctx, *tangents))),
        },
    )


def assert_hand_derived_only(output: torch.Tensor) -> None:
    """The backward graph below ``output`` holds hand-derived nodes only (views, reshapes,
    casts and AccumulateGrad aside), and at least one."""
    coverage = backward_coverage(output)
    assert coverage.complete, str(coverage)


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


def compare_sample_with_native(manual_fn, native_fn, sample, tol: dict | None = None) -> bool:
    """One OpInfo sample: ``manual_fn(sample.input, *sample.args, **sample.kwargs)`` against
    ``native_fn`` (:func:`compare_with_native`: outputs and the gradients of every input,
    the arguments too, that requires grad), with a graph of hand-derived nodes only. Where
    native rejects the sample, ours must raise the same exception type. Returns whether
    the sample was compared (False: rejected by both)."""
    args, kwargs = sample.args, sample.kwargs
    try:
        native_fn(sample.input.detach(), *args, **kwargs)
    except Exception as error:  # native rejects it: ours must, the same way
        with pytest.raises(type(error)):
            manual_fn(sample.input, *args, **kwargs)
        return False
    out, _ = compare_with_native(
        lambda x, *a: manual_fn(x, *a, **kwargs),
        lambda x, *a: native_fn(x, *a, **kwargs),
        sample.input,
        *args,  # e.g. a probability target, which requires grad
        tol=tol,
    )
    assert_hand_derived_only(out)
    return True


def module_info_pairs(native_cls: type, manual_cls: type, device: str, at_least: int = 1):
    """PyTorch's own ModuleInfo samples for ``native_cls`` (``module_db``, float64, with
    grad, training mode): at least ``at_least`` of them. Yields ``(sample, native, manual)``
    per sample: both modules built from its constructor arguments under the same seed, on
    ``device``, with the same state_dict keys and ``manual`` holding ``native``'s state.
    A sample's forward takes positional arguments only."""
    from torch.testing._internal.common_modules import module_db

    (info,) = [m for m in module_db if m.module_cls is native_cls]
    samples = info.module_inputs_func(
        info, device=device, dtype=torch.float64, requires_grad=True, training=True
    )
    assert len(samples) >= at_least
    for sample in samples:
        c_args, c_kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
        torch.manual_seed(0)
        native = native_cls(*c_args, **c_kwargs).to(device)
        torch.manual_seed(0)
        manual = manual_cls(*c_args, **c_kwargs).to(device)
        assert manual.state_dict().keys() == native.state_dict().keys()
        manual.load_state_dict(native.state_dict())
        assert not sample.forward_input.kwargs
        yield sample, native, manual


def native_mse_loss(input, target, reduction="mean"):
    """``F.mse_loss``, with the dtype ``F.mse_loss`` itself picks (after broadcasting, and
    under autocast if it is on) reached by explicit casts first: the same function, whose
    gradients through the casts are the ones native backward returns from torch 2.13 on.
    torch 2.11's own backward raises on mixed dtypes ("Found dtype Double but expected
    Float", pytorch issue 36553), and the GPU machine may still run it."""
    dtype = F.mse_loss(input.detach(), target.detach(), reduction=reduction).dtype
    return F.mse_loss(input.to(dtype), target.to(dtype), reduction=reduction)


# ---- the wrong rules: proof that the hand-derived rule is the one that ran ---------------

#: the known errors of the wrong twins: every Linear gradient and tangent times 3, every
#: MSE gradient and tangent times 2 (distinct, so a product tells which rules ran)
LINEAR_FACTOR, MSE_FACTOR = 3.0, 2.0
_WRONG_LINEAR = ManualOp(wrong_twin(ManualLinearFunction, LINEAR_FACTOR))
_WRONG_MSE = ManualOp(wrong_twin(ManualMSEFunction, MSE_FACTOR))


@pytest.fixture
def wrong_rules(monkeypatch):
    """Route ManualLinear / ManualMSELoss / the functional forms through the wrong twins."""
    monkeypatch.setattr(manualgrad.ops.linear, "_linear", _WRONG_LINEAR)
    monkeypatch.setattr(manualgrad.ops.mse, "_mse", _WRONG_MSE)
    torch._dynamo.reset()  # nothing compiled against the real ops may be reused
    yield
    torch._dynamo.reset()


@pytest.fixture(params=["hand-derived", "wrong"])
def rules(request) -> str:
    """Run a test with the real rules, then with the wrong twins (a test then expects each
    result scaled by the factors above, e.g. ``helpers_compose.scale``)."""
    if request.param == "wrong":
        request.getfixturevalue("wrong_rules")
    return request.param


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
