"""softmax / log_softmax (functional and ManualSoftmax / ManualLogSoftmax) against native."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from conftest import (
    AUTOCAST,
    assert_hand_derived_only,
    compare_sample_with_native,
    compare_with_native,
    cuda,
    module_info_pairs,
    tolerances,
    wrong_twin,
)
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, hessian, jacfwd, jacrev, vmap
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

import manualgrad.ops.softmax
from manualgrad import ManualLinear, hand_derived_nodes
from manualgrad.ops._apply import ManualOp
from manualgrad.ops.softmax import (
    ManualLogSoftmax,
    ManualLogSoftmaxFunction,
    ManualSoftmax,
    ManualSoftmaxFunction,
    log_softmax,
    softmax,
)

# name -> (manual functional, native functional, Function, ManualOp attribute, module pair)
OPS = {
    "softmax": (softmax, F.softmax, ManualSoftmaxFunction, "_softmax", ManualSoftmax, nn.Softmax),
    "log_softmax": (
        log_softmax,
        F.log_softmax,
        ManualLogSoftmaxFunction,
        "_log_softmax",
        ManualLogSoftmax,
        nn.LogSoftmax,
    ),
}
# (shape, dim): 0-dim (dim 0 and -1), 1-D, every dim of 2-D/3-D, negative dims, empty
CASES = [
    ((), 0),
    ((), -1),
    ((5,), 0),
    ((3, 4), 0),
    ((3, 4), 1),
    ((2, 3, 2), 1),
    ((2, 3, 2), -1),
    ((2, 1, 3, 2), 2),
    ((0,), 0),
    ((3, 0), 1),
    ((0, 3), 1),
]


def _x(shape, dtype=torch.float64, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(device, dtype)


@pytest.fixture(params=list(OPS))
def op(request):
    return request.param


# ---- gradients: numerical checks and native parity --------------------------------------


@pytest.mark.parametrize(("shape", "dim"), CASES, ids=str)
def test_gradcheck_gradgradcheck_forward_ad(op, shape, dim, device):
    fn = OPS[op][0]
    x = _x(shape, device=device).requires_grad_()
    checks = dict(check_forward_ad=True, check_batched_grad=True, check_batched_forward_grad=True)
    assert gradcheck(lambda x: fn(x, dim), (x,), **checks)
    assert gradgradcheck(lambda x: fn(x, dim), (x,), check_batched_grad=True)


@pytest.mark.parametrize(("shape", "dim"), CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_matches_native_bit_for_bit_forward(op, shape, dim, dtype, device):
    manual, native = OPS[op][:2]
    x = _x(shape, dtype, device).requires_grad_()
    out, out_n = compare_with_native(lambda x: manual(x, dim), lambda x: native(x, dim), x)
    assert torch.equal(out, out_n)  # the same forward kernel


@pytest.mark.parametrize(
    ("dtype", "cast"),
    [
        (torch.float32, torch.float64),
        (torch.float64, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float32),
        (torch.float32, torch.float32),
    ],
    ids=str,
)
def test_dtype_casts_first_and_gradient_returns_in_input_dtype(op, dtype, cast, device):
    manual, native = OPS[op][:2]
    x = _x((4, 5), dtype, device).requires_grad_()
    out, out_n = compare_with_native(
        lambda x: manual(x, 1, dtype=cast),
        lambda x: native(x, 1, dtype=cast),
        x,
        tol=tolerances(dtype if dtype in (torch.bfloat16, torch.float16) else cast),
    )
    assert out.dtype == out_n.dtype == cast
    assert torch.equal(out, out_n)
    (g,) = torch.autograd.grad(manual(x, 1, dtype=cast), x, torch.ones_like(out))
    assert g.dtype == dtype
    # integer input with a floating dtype: a forward without gradient, as native
    ints = torch.arange(6, device=device).reshape(2, 3)
    assert torch.equal(manual(ints, 1, dtype=cast), native(ints, 1, dtype=cast))


def test_nan_and_inf_like_native(op, device):
    """Masked attention rows: -inf entries (probability 0), a fully masked row (NaN)."""
    manual, native = OPS[op][:2]
    x = _x((4, 5), device=device)
    x[0, :2] = float("-inf")
    x[1] = float("-inf")
    x[2, 3] = float("inf")
    x[3, 1] = float("nan")
    compare_with_native(lambda x: manual(x, 1), lambda x: native(x, 1), x.requires_grad_())


def test_double_backward_matches_native(op, device):
    """Gradient penalty ``L + |dL/dX|^2``: the backward's own graph, through the saved
    output, against native's double backward."""
    manual, native = OPS[op][:2]
    weight = _x((3, 4), device=device, seed=3)

    def penalized(fn):
        def loss(x):
            out = (fn(x, 1) * weight).sum()
            (gx,) = torch.autograd.grad(out, x, create_graph=True)
            return out + gx.square().sum()

        return loss

    x = _x((3, 4), device=device).requires_grad_()
    compare_with_native(penalized(manual), penalized(native), x)


def test_backward_is_hand_derived(op):
    manual, _, fn_cls = OPS[op][:3]
    for kwargs in ({}, {"dtype": torch.float64}):
        out = manual(_x((3, 4), torch.float32).requires_grad_(), 1, **kwargs)
        assert hand_derived_nodes(out) == {fn_cls.__name__: 1}
        assert_hand_derived_only(out)


def test_no_graph_without_grad(op):
    out = OPS[op][0](_x((3, 4)), 1)
    assert not out.requires_grad and out.grad_fn is None


# ---- PyTorch's own samples ---------------------------------------------------------------


def _op_infos(name):
    from torch.testing._internal.common_methods_invocations import op_db

    return [o for o in op_db if o.name == name]


def test_opinfo_samples_match_native(op, device):
    """Every sample of both OpInfo entries (plain and ``with_dtype``) in float64, and in
    float32 (where ``with_dtype`` asks for float64: a real cast): outputs and gradients
    equal native's, and the graph is hand-derived only."""
    manual = OPS[op][0]
    infos = _op_infos(op)
    assert sorted(o.variant_test_name for o in infos) == ["", "with_dtype"]
    count = 0
    for info in infos:
        for dtype in (torch.float64, torch.float32):
            for sample in info.sample_inputs(device, dtype, requires_grad=True):
                # float32 in, float64 out: float32 gradients
                count += compare_sample_with_native(manual, info.op, sample, tol=tolerances(dtype))
    assert count >= 28


def test_moduleinfo_samples_match_native(op, device):
    *_, manual_cls, native_cls = OPS[op]
    for sample, native, manual in module_info_pairs(native_cls, manual_cls, device, at_least=3):
        assert repr(manual) == repr(native).replace(native_cls.__name__, manual_cls.__name__)
        (x,) = sample.forward_input.args
        out, _ = compare_with_native(manual, native, x)
        assert_hand_derived_only(out)


# ---- what it keeps for backward ---------------------------------------------------------


def _saved_bytes(fn) -> int:
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("dtype", [None, torch.float64], ids=str)
def test_saves_only_the_output(op, dtype):
    manual, native = OPS[op][:2]
    x = _x((16, 8), torch.float32).requires_grad_()
    got = _saved_bytes(lambda: manual(x, 1, dtype=dtype))
    expected = _saved_bytes(lambda: native(x, 1, dtype=dtype))
    out_bytes = 16 * 8 * (8 if dtype is torch.float64 else 4)
    assert got == expected == out_bytes


# ---- torch.func, forward-mode AD, vmap ---------------------------------------------------


def test_forward_ad_and_func_transforms_match_native(op, device):
    manual, native = OPS[op][:2]
    x, tangent, w = (_x((3, 4), device=device, seed=s) for s in (1, 2, 3))
    with fwAD.dual_level():
        out_t = fwAD.unpack_dual(manual(fwAD.make_dual(x, tangent), 1)).tangent
    with fwAD.dual_level():
        out_t_n = fwAD.unpack_dual(native(fwAD.make_dual(x, tangent), 1)).tangent
    torch.testing.assert_close(out_t, out_t_n, **tolerances(torch.float64))
    for transform in (jacrev, jacfwd):
        got, expected = (transform(lambda x, f=f: f(x, -1))(x) for f in (manual, native))
        torch.testing.assert_close(got, expected, **tolerances(torch.float64))
    for transform in (grad, hessian):
        got, expected = (transform(lambda x, f=f: (f(x, 0) * w).sum())(x) for f in (manual, native))
        torch.testing.assert_close(got, expected, **tolerances(torch.float64))


@pytest.mark.parametrize("in_dim", [0, 1])
def test_vmap_and_per_sample_gradients(op, in_dim, device):
    manual, native = OPS[op][:2]
    xs = _x((5, 3, 4), device=device).movedim(0, in_dim)  # 5 samples of (3, 4)
    w = _x((3, 4), device=device, seed=1)
    for dim in (0, -1):
        got = vmap(lambda x, d=dim: manual(x, d), in_dims=in_dim)(xs)
        expected = vmap(lambda x, d=dim: native(x, d), in_dims=in_dim)(xs)
        torch.testing.assert_close(got, expected, **tolerances(torch.float64))
    per_sample = [
        vmap(grad(lambda x, f=f: (f(x, -1) * w).sum()), in_dims=in_dim)(xs)
        for f in (manual, native)
    ]
    torch.testing.assert_close(*per_sample, **tolerances(torch.float64))


# ---- the hand-derived rule is the one that ran: a deliberately wrong twin ----------------


@pytest.fixture
def wrong(monkeypatch):
    """Route both ops through twins whose gradients and tangents are 3x the true ones."""
    for _, _, fn_cls, attr, *_ in OPS.values():
        monkeypatch.setattr(manualgrad.ops.softmax, attr, ManualOp(wrong_twin(fn_cls)))
    torch._dynamo.reset()
    yield 3.0
    torch._dynamo.reset()


def _both(x, w):
    """Both ops in one graph: d/dx of this with the wrong twins is exactly 3x native's."""
    return (softmax(x, -1) * w).sum() + (log_softmax(x, 0) * w).sum()


def _both_native(x, w):
    return (F.softmax(x, -1) * w).sum() + (F.log_softmax(x, 0) * w).sum()


def _grad_of(fn, x, w):
    x = x.detach().clone().requires_grad_()
    fn(x, w).backward()  # not autograd.grad: reentrant checkpointing refuses that
    return x.grad


def test_compiled_fullgraph_matches_native(device):
    x, w = _x((3, 4), torch.float32, device), _x((3, 4), torch.float32, device, seed=1)
    torch._dynamo.reset()
    got = _grad_of(torch.compile(_both, fullgraph=True), x, w)
    torch._dynamo.reset()
    torch.testing.assert_close(got, _grad_of(_both_native, x, w), **tolerances(torch.float32))


def test_compiled_gradient_is_hand_derived(wrong, device):
    x, w = _x((3, 4), torch.float32, device), _x((3, 4), torch.float32, device, seed=1)
    got = _grad_of(torch.compile(_both, fullgraph=True), x, w)
    expected = wrong * _grad_of(_both_native, x, w)
    torch.testing.assert_close(got, expected, **tolerances(torch.float32))


def test_wrong_twin_shows_in_eager_jvp_func_and_checkpoint(wrong):
    """The same known error through every path: eager backward, forward AD, torch.func and
    activation checkpointing (both flavours) all run the hand-derived rules."""
    x, w, tangent = _x((3, 4)), _x((3, 4), seed=1), _x((3, 4), seed=2)
    expected = _grad_of(_both_native, x, w)
    torch.testing.assert_close(_grad_of(_both, x, w), wrong * expected)
    torch.testing.assert_close(grad(_both)(x, w), wrong * expected)
    for reentrant in (False, True):
        got = _grad_of(lambda x, w, r=reentrant: checkpoint(_both, x, w, use_reentrant=r), x, w)
        torch.testing.assert_close(got, wrong * expected)
    for manual, native in [(softmax, F.softmax), (log_softmax, F.log_softmax)]:
        with fwAD.dual_level():
            out_t = fwAD.unpack_dual(manual(fwAD.make_dual(x, tangent), 1)).tangent
        with fwAD.dual_level():
            out_t_n = fwAD.unpack_dual(native(fwAD.make_dual(x, tangent), 1)).tangent
        torch.testing.assert_close(out_t, wrong * out_t_n)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpoint_gives_native_gradients(use_reentrant, device):
    x, w = _x((3, 4), device=device), _x((3, 4), device=device, seed=1)
    got = _grad_of(lambda x, w: checkpoint(_both, x, w, use_reentrant=use_reentrant), x, w)
    torch.testing.assert_close(got, _grad_of(_both_native, x, w), **tolerances(torch.float64))


# ---- autocast: native's output dtypes, per device ----------------------------------------


@pytest.mark.parametrize(("device", "autocast"), AUTOCAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("cast", [None, torch.float16], ids=str)
@pytest.mark.parametrize("backward_inside", [False, True], ids=["backward-after", "inside"])
def test_autocast_matches_native(op, device, autocast, dtype, cast, backward_inside):
    """CUDA autocast runs softmax in float32 (an explicit dtype wins, float64 stays), CPU
    autocast leaves it alone: whatever native gives, output and gradient dtypes agree."""
    manual, native = OPS[op][:2]
    x = _x((4, 6), dtype, device)
    results = []
    for fn in (manual, native):
        xr = x.clone().requires_grad_()
        with torch.autocast(device, dtype=autocast):
            out = fn(xr, 1, dtype=cast)
            if backward_inside:
                (g,) = torch.autograd.grad(out, xr, torch.ones_like(out))
        if not backward_inside:
            (g,) = torch.autograd.grad(out, xr, torch.ones_like(out))
        results.append((out, g))
    (out, g), (out_n, g_n) = results
    assert out.dtype == out_n.dtype and g.dtype == g_n.dtype == dtype
    low = {dtype, out_n.dtype} & {torch.bfloat16, torch.float16}
    tol = tolerances(torch.bfloat16 if low else torch.float32)
    torch.testing.assert_close(out, out_n, **tol)
    torch.testing.assert_close(g, g_n, **tol)


@cuda
def test_cuda_autocast_runs_in_float32(op):
    x = _x((4, 6), torch.float16, "cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        assert OPS[op][0](x, 1).dtype == OPS[op][1](x, 1).dtype == torch.float32


# ---- the implicit dim: native's choice and its warning -----------------------------------


@pytest.mark.parametrize("ndim", [0, 1, 2, 3, 4])
def test_implicit_dim_warns_and_picks_like_native(op, ndim):
    manual, native = OPS[op][:2]
    x = _x((2, 3, 4, 5)[:ndim])
    with pytest.warns(UserWarning, match="Implicit dimension choice") as caught_n:
        out_n = native(x)
    with pytest.warns(UserWarning, match="Implicit dimension choice") as caught:
        out = manual(x)
    assert torch.equal(out, out_n)
    assert str(caught[0].message) == str(caught_n[0].message)
    assert caught[0].filename == __file__  # points at the caller's line, as native
    with pytest.warns(UserWarning) as deeper:
        manual(x, _stacklevel=1)
    assert deeper[0].filename == manualgrad.ops.softmax.__file__


def test_module_with_implicit_dim_warns_where_native_does(op):
    *_, manual_cls, native_cls = OPS[op]
    x = _x((2, 3))
    with pytest.warns(UserWarning) as caught_n:
        out_n = native_cls()(x)
    with pytest.warns(UserWarning) as caught:
        out = manual_cls()(x)
    assert torch.equal(out, out_n)
    assert str(caught[0].message) == str(caught_n[0].message)
    assert (caught[0].filename, caught[0].lineno) == (caught_n[0].filename, caught_n[0].lineno)


def test_compiled_implicit_dim_warns_without_graph_break(op):
    manual, native = OPS[op][:2]
    x = _x((2, 3))
    torch._dynamo.reset()
    with pytest.warns(UserWarning, match="Implicit dimension choice"):
        out = torch.compile(manual, fullgraph=True, backend="eager")(x)
    torch._dynamo.reset()
    torch.testing.assert_close(out, native(x, 1))


# ---- the modules are drop-ins -----------------------------------------------------------


def test_modules_are_drop_ins(op):
    *_, manual_cls, native_cls = OPS[op]
    for dim in (None, 0, 1, -1):
        manual, native = manual_cls(dim), native_cls(dim)
        assert isinstance(manual, native_cls)
        assert manual.dim == native.dim == dim
        assert manual.state_dict() == native.state_dict() == {}
        assert pickle.loads(pickle.dumps(manual)).dim == dim
    assert manual_cls(dim=1).extra_repr() == "dim=1"
    x = _x((3, 4)).requires_grad_()
    compare_with_native(manual_cls(1), native_cls(1), x)
    out = manual_cls(dim=-1)(x)
    assert hand_derived_nodes(out) == {OPS[op][2].__name__: 1}


def test_conversion_and_check_gradients():
    model = nn.Sequential(nn.Linear(4, 5), nn.Softmax(-1), nn.Linear(5, 3), nn.LogSoftmax(1))
    manualgrad.replace_modules(model)
    assert [type(m) for m in model] == [ManualLinear, ManualSoftmax, ManualLinear, ManualLogSoftmax]
    report = manualgrad.check_gradients(model, _x((6, 4), torch.float32))
    assert report.passed, str(report)
    assert report.backward_calls["ManualSoftmaxFunction"] == 1
    assert report.backward_calls["ManualLogSoftmaxFunction"] == 1


# ---- bad input: the native exception type, a message that names the argument ------------


@pytest.mark.parametrize(
    ("dim", "error", "match"),
    [
        (2, IndexError, "Dimension out of range.*dim=2"),
        (-3, IndexError, "Dimension out of range.*dim=-3"),
        (1.0, TypeError, "'dim' must be int, not float"),
        (True, TypeError, "'dim' must be int, not bool"),
        ("C", TypeError, "'dim' must be int, not str"),
    ],
    ids=str,
)
def test_bad_dim(op, dim, error, match):
    manual, native = OPS[op][:2]
    x = _x((3, 4))
    with pytest.raises(error):
        native(x, dim)
    with pytest.raises(error, match=match):
        manual(x, dim)


def test_dim_that_is_an_index_like_native(op):
    import numpy as np

    manual, native = OPS[op][:2]
    x = _x((3, 4))
    for dim in (np.int64(1), torch.tensor(-1)):
        assert torch.equal(manual(x, dim), native(x, 1))
    with pytest.raises(IndexError):
        manual(_x(()), 1)  # a 0-dim tensor takes dim 0 and -1 only
    with pytest.raises(IndexError):
        native(_x(()), 1)


def test_bad_input_dtype_or_dtype_argument(op):
    manual, native = OPS[op][:2]
    ints = torch.arange(6).reshape(2, 3)
    for args, kwargs in [((ints, 1), {}), ((_x((2, 3)), 1), {"dtype": "float"})]:
        try:
            native(*args, **kwargs)
        except (NotImplementedError, RuntimeError, TypeError) as error:
            expected = type(error)
        else:
            pytest.fail("native accepted it")
        with pytest.raises(expected):
            manual(*args, **kwargs)
