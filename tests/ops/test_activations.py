"""relu / tanh / sigmoid / gelu / silu (functional and the Manual* modules) against native."""

from __future__ import annotations

import copy
import pickle
import re
from functools import partial

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from conftest import (
    AUTOCAST,
    assert_hand_derived_only,
    compare_with_native,
    module_info_pairs,
    tolerances,
    wrong_twin,
)
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, hessian, jacfwd, jacrev, vmap
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from manualgrad import hand_derived_nodes
from manualgrad.ops import activations
from manualgrad.ops._apply import ManualOp
from manualgrad.ops.activations import gelu, relu, sigmoid, silu, tanh


def _inplace(fn):
    """``fn(..., inplace=True)`` on a copy of the (leaf) input, checking it returns that copy."""

    def run(x, *args, **kwargs):
        h = x.clone()
        out = fn(h, *args, inplace=True, **kwargs)
        assert out is h
        return out

    return run


# name -> (manual, native, Function, what backward keeps: the op's "output" or "input")
OPS = {
    "relu": (relu, F.relu, activations.ManualReLUFunction, "output"),
    "relu_": (_inplace(relu), _inplace(F.relu), activations.ManualReLUFunction, "output"),
    "tanh": (tanh, torch.tanh, activations.ManualTanhFunction, "output"),
    "sigmoid": (sigmoid, torch.sigmoid, activations.ManualSigmoidFunction, "output"),
    "gelu": (gelu, F.gelu, activations.ManualGELUFunction, "input"),
    "gelu_tanh": (
        partial(gelu, approximate="tanh"),
        partial(F.gelu, approximate="tanh"),
        activations.ManualGELUFunction,
        "input",
    ),
    "silu": (silu, F.silu, activations.ManualSiLUFunction, "input"),
    "silu_": (_inplace(silu), _inplace(F.silu), activations.ManualSiLUFunction, "input"),
}
SHAPES = [(), (7,), (2, 3, 2), (2, 0, 3)]
# module pairs, with a constructor that exercises their arguments
MODULES = {
    "relu": (activations.ManualReLU, nn.ReLU, [{}, {"inplace": True}]),
    "tanh": (activations.ManualTanh, nn.Tanh, [{}]),
    "sigmoid": (activations.ManualSigmoid, nn.Sigmoid, [{}]),
    "gelu": (activations.ManualGELU, nn.GELU, [{}, {"approximate": "tanh"}]),
    "silu": (activations.ManualSiLU, nn.SiLU, [{}, {"inplace": True}]),
}


def _x(shape, dtype=torch.float64, device="cpu", seed=0, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=gen, dtype=torch.float64)).to(device, dtype)


@pytest.fixture(params=list(OPS))
def op(request):
    return request.param


# ---- gradients: numerical checks and native parity --------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gradcheck_gradgradcheck_forward_ad(op, shape, device):
    fn = OPS[op][0]
    x = _x(shape, device=device).requires_grad_()
    checks = dict(check_forward_ad=True, check_batched_grad=True, check_batched_forward_grad=True)
    assert gradcheck(fn, (x,), **checks)
    assert gradgradcheck(fn, (x,), check_batched_grad=True, check_fwd_over_rev=True)


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str
)
@pytest.mark.parametrize("shape", [(), (3, 4), (2, 0, 3)], ids=str)
def test_matches_native(op, shape, dtype, device):
    manual, native = OPS[op][:2]
    x = _x(shape, dtype, device).requires_grad_()
    out, out_n = compare_with_native(manual, native, x, tol=tolerances(dtype))
    assert torch.equal(out, out_n)  # the forward is native's own kernel


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_special_values_like_native(op, dtype, device):
    """0 (relu's kink), -0, tiny, huge, +-inf and NaN: the same outputs and gradients,
    NaN where native has NaN."""
    values = [0.0, -0.0, 1e-30, -1e-30, 1.0, -1.0, 30.0, -30.0, 1e30, -1e30]
    x = torch.tensor(values + [float("inf"), float("-inf"), float("nan")], dtype=dtype)
    manual, native = OPS[op][:2]
    compare_with_native(manual, native, x.to(device).requires_grad_())


def test_relu_gradient_at_zero_and_nan_is_natives_exactly(device):
    """relu' is read from the output as native reads it (``y <= 0`` masks): 0 at 0, the
    upstream gradient passes at NaN, and a masked inf/NaN upstream gradient gives 0."""
    x = torch.tensor([0.0, -0.0, 2.0, -2.0, float("nan"), 0.0, -1.0], device=device)
    upstream = torch.tensor([5.0, 5.0, 5.0, 5.0, 5.0, float("inf"), float("nan")], device=device)
    grads = []
    for fn in (relu, F.relu, _inplace(relu), _inplace(F.relu)):
        xr = x.clone().requires_grad_()
        grads.append(torch.autograd.grad(fn(xr), xr, upstream)[0])
    expected = torch.tensor([0.0, 0.0, 5.0, 0.0, 5.0, 0.0, 0.0], device=device)
    for g in grads:
        torch.testing.assert_close(g, expected, rtol=0, atol=0)


def test_double_backward_matches_native(op, device):
    """Gradient penalty ``L + |dL/dx|^2``: autograd through the backward (through the saved
    output for relu/tanh/sigmoid), against native's double backward."""
    manual, native = OPS[op][:2]
    weight = _x((3, 4), device=device, seed=3)

    def penalized(fn):
        def loss(x):
            out = (fn(x) * weight).sum()
            (gx,) = torch.autograd.grad(out, x, create_graph=True)
            return out + (gx * gx).sum()

        return loss

    x = _x((3, 4), device=device).requires_grad_()
    compare_with_native(penalized(manual), penalized(native), x)


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64], ids=str)
def test_complex_like_native(dtype):
    """tanh and sigmoid take complex input natively, with ``G * conj(f'(z))`` as the
    gradient; relu and gelu refuse it, and silu refuses its gradient: the same here."""
    z = _x((3, 4)).to(dtype) + 1j * _x((3, 4), seed=1).to(dtype)
    for fn, native in [(tanh, torch.tanh), (sigmoid, torch.sigmoid)]:
        compare_with_native(fn, native, z.requires_grad_(), tol=tolerances(torch.float32))
        z128 = z.detach().to(torch.complex128).requires_grad_()
        assert gradcheck(fn, (z128,), check_forward_ad=True)
        assert gradgradcheck(fn, (z128,))
    z = z.detach()
    for fn, native in [(relu, F.relu), (gelu, F.gelu)]:
        with pytest.raises(NotImplementedError) as expected:
            native(z)
        with pytest.raises(NotImplementedError, match=re.escape(str(expected.value))):
            fn(z)
    assert torch.equal(silu(z), F.silu(z))
    for fn in (silu, F.silu):
        with pytest.raises(RuntimeError, match="does not support automatic differentiation"):
            fn(z.clone().requires_grad_())


def test_backward_is_hand_derived(op):
    manual, _, fn_cls, _ = OPS[op]
    out = manual(_x((3, 4)).requires_grad_())
    assert hand_derived_nodes(out) == {fn_cls.__name__: 1}
    assert_hand_derived_only(out)


def test_no_graph_without_grad(op):
    out = OPS[op][0](_x((3, 4)))
    assert not out.requires_grad and out.grad_fn is None
    with torch.no_grad():
        assert OPS[op][0](_x((3, 4)).requires_grad_()).grad_fn is None


# ---- what it keeps for backward ---------------------------------------------------------


def _saved(fn) -> tuple[int, set[int], torch.Tensor]:
    """Bytes of every storage that backward keeps (each counted once), their pointers, and
    what ``fn`` returned."""
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), set(storages), out


def test_keeps_one_tensor_no_more_than_native(op):
    """One tensor of the op's shape and dtype, the same that native keeps: the output for
    relu, tanh, sigmoid; the input for gelu, silu (in-place silu: a copy of it)."""
    manual, native, _, kept = OPS[op]
    x = _x((16, 8), torch.float32).requires_grad_()
    h = x * 1  # an op input that is not a leaf, so that the in-place forms may write into it
    got, ptrs, out = _saved(lambda: manual(h))
    expected, _, _ = _saved(lambda: native(h))
    assert got == expected == 16 * 8 * 4
    if not op.endswith("_"):
        source = out if kept == "output" else h
        assert ptrs == {source.untyped_storage().data_ptr()}


# ---- torch.func, forward-mode AD, vmap ---------------------------------------------------


def test_forward_ad_and_func_transforms_match_native(op, device):
    manual, native = OPS[op][:2]
    x, tangent = _x((3, 4), device=device, seed=1), _x((3, 4), device=device, seed=2)
    tangents = []
    for fn in (manual, native):
        with fwAD.dual_level():
            tangents.append(fwAD.unpack_dual(fn(fwAD.make_dual(x, tangent))).tangent)
    torch.testing.assert_close(*tangents, **tolerances(torch.float64))
    for transform in (jacrev, jacfwd):
        torch.testing.assert_close(transform(manual)(x[0]), jacrev(native)(x[0]))

    def cubed(fn):
        return lambda x: (fn(x) ** 3).sum()

    torch.testing.assert_close(hessian(cubed(manual))(x[0]), hessian(cubed(native))(x[0]))


@pytest.mark.parametrize("in_dim", [0, 1])
def test_vmap_and_per_sample_gradients(op, in_dim, device):
    manual, native = OPS[op][:2]
    xs = _x((4, 5), device=device)
    torch.testing.assert_close(vmap(manual, in_dims=in_dim, out_dims=in_dim)(xs), native(xs))

    def loss(fn):
        return lambda x: (fn(x) ** 2).sum()

    got = vmap(grad(loss(manual)), in_dims=in_dim, out_dims=in_dim)(xs)
    columns = xs.unbind(in_dim)
    rows = [torch.func.grad(loss(native))(x) for x in columns]
    torch.testing.assert_close(got, torch.stack(rows, in_dim))
    # a batched input next to an unbatched one
    other = _x((5,), device=device, seed=4)
    out = vmap(lambda x: manual(x) * manual(other))(xs)
    torch.testing.assert_close(out, native(xs) * native(other))


# ---- torch.compile: no graph break, and the hand-derived rules are the ones compiled ----

# The wrong twins' known errors: each Function's backward (and jvp) times a distinct prime.
WRONG = {
    "_relu": (activations.ManualReLUFunction, 2.0),
    "_tanh": (activations.ManualTanhFunction, 3.0),
    "_sigmoid": (activations.ManualSigmoidFunction, 5.0),
    "_gelu": (activations.ManualGELUFunction, 7.0),
    "_silu": (activations.ManualSiLUFunction, 11.0),
}
# _chain below passes through ReLU twice, Tanh once, GELU twice, SiLU twice, Sigmoid once
CHAIN_SCALE = 2.0**2 * 3.0 * 7.0**2 * 11.0**2 * 5.0


def _chain(ops, x, inplace=True):
    """Every op and form in one chain; the in-place ones write only into tensors that no
    backward keeps (gelu keeps its input, not its output), as native requires."""
    h = ops.gelu(ops.tanh(x))
    h = ops.relu(h, inplace=inplace)
    h = ops.silu(ops.gelu(h, approximate="tanh"), inplace=inplace)
    return ops.relu(ops.silu(ops.sigmoid(h)))


_manual_chain = partial(_chain, activations)
_native_chain = partial(_chain, F)


@pytest.fixture
def wrong(monkeypatch):
    """Route every functional form through its wrong twin (see WRONG)."""
    for name, (fn_cls, factor) in WRONG.items():
        monkeypatch.setattr(activations, name, ManualOp(wrong_twin(fn_cls, factor)))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_fullgraph_matches_native(device):
    torch._dynamo.reset()
    x = _x((4, 5), device=device)
    compiled = torch.compile(_manual_chain, fullgraph=True)
    compare_with_native(compiled, _native_chain, x.requires_grad_())
    torch._dynamo.reset()


def test_compiled_gradient_is_hand_derived(wrong, device):
    """With the wrong twins in place, the compiled gradient moves by exactly their product:
    every Function's own backward is the one the compiled graph runs."""
    x = _x((4, 5), device=device).requires_grad_()
    (got,) = torch.autograd.grad(torch.compile(_manual_chain, fullgraph=True)(x).sum(), x)
    (native,) = torch.autograd.grad(_native_chain(x).sum(), x)
    torch.testing.assert_close(got, CHAIN_SCALE * native)


def test_wrong_twin_shows_in_eager_jvp_func_and_checkpoint(wrong):
    """The same proof for the eager, forward-AD, torch.func and checkpointed paths."""
    x, tangent = _x((4, 5)), _x((4, 5), seed=1)
    xr = x.clone().requires_grad_()
    (native,) = torch.autograd.grad(_native_chain(xr).sum(), xr)
    (got,) = torch.autograd.grad(_manual_chain(xr).sum(), xr)
    torch.testing.assert_close(got, CHAIN_SCALE * native)
    got = torch.func.grad(lambda x: _manual_chain(x).sum())(x)
    torch.testing.assert_close(got, CHAIN_SCALE * native)
    got = vmap(grad(lambda x: _manual_chain(x).sum()))(x)
    torch.testing.assert_close(got, CHAIN_SCALE * native)
    (got,) = torch.autograd.grad(checkpoint(_manual_chain, xr, use_reentrant=False).sum(), xr)
    torch.testing.assert_close(got, CHAIN_SCALE * native)
    # (out of place: the twin's scaled tangent is a new tensor, not the input's, written)
    manual_chain = partial(_chain, activations, inplace=False)
    _, got_t = torch.func.jvp(manual_chain, (x,), (tangent,))
    _, native_t = torch.func.jvp(_native_chain, (x,), (tangent,))
    torch.testing.assert_close(got_t, CHAIN_SCALE * native_t)
    with fwAD.dual_level():
        got_t = fwAD.unpack_dual(manual_chain(fwAD.make_dual(x, tangent))).tangent
    torch.testing.assert_close(got_t, CHAIN_SCALE * native_t)


# ---- checkpointing, autocast ------------------------------------------------------------


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpoint_gives_native_gradients(use_reentrant, device):
    x, upstream = _x((4, 5), device=device), _x((4, 5), device=device, seed=1)
    grads = []
    for fn in (lambda x: checkpoint(_manual_chain, x, use_reentrant=use_reentrant), _native_chain):
        xr = x.clone().requires_grad_()
        out = fn(xr)
        out.backward(upstream)  # (the reentrant form refuses torch.autograd.grad)
        grads.append((out, xr.grad))
    (out, g), (out_n, g_n) = grads
    torch.testing.assert_close(out, out_n, rtol=0, atol=0)
    torch.testing.assert_close(g, g_n)


@pytest.mark.parametrize(("device", "autocast"), AUTOCAST)
@pytest.mark.parametrize("dtype", ["low", torch.float32], ids=["low", "float32"])
@pytest.mark.parametrize("backward_inside", [False, True], ids=["backward-after", "inside"])
def test_autocast_keeps_the_input_dtype_like_native(op, device, autocast, dtype, backward_inside):
    """Native autocast casts none of these: float32 stays float32, bf16/fp16 stay so, and
    the gradients (backward inside the region too) are native's, in the input's dtype."""
    manual, native = OPS[op][:2]
    dtype = autocast if dtype == "low" else dtype
    x = _x((4, 5), dtype, device)
    results = []
    for fn in (manual, native):
        xr = x.clone().requires_grad_()
        with torch.autocast(device, dtype=autocast):
            out = fn(xr)
            if backward_inside:
                (g,) = torch.autograd.grad(out.sum(), xr)
        if not backward_inside:
            (g,) = torch.autograd.grad(out.sum(), xr)
        results.append((out, g))
    (out, g), (out_n, g_n) = results
    assert out.dtype == out_n.dtype == dtype
    assert g.dtype == g_n.dtype == dtype
    tol = tolerances(autocast)
    torch.testing.assert_close(out, out_n, **tol)
    torch.testing.assert_close(g, g_n, **tol)


@pytest.mark.parametrize(("device", "autocast"), AUTOCAST)
def test_autocast_after_a_linear_like_native(device, autocast):
    """Linear runs in low precision under autocast; the activations keep that dtype."""
    torch.manual_seed(0)
    layer = nn.Linear(5, 6).to(device)
    x = _x((4, 5), torch.float32, device)

    def model(ops):
        def run(x):
            with torch.autocast(device, dtype=autocast):
                return _chain(ops, layer(x))

        return run

    out, _ = compare_with_native(model(activations), model(F), x, tol=tolerances(autocast))
    assert out.dtype == autocast


# ---- in place ---------------------------------------------------------------------------

INPLACE = {"relu": (relu, F.relu), "silu": (silu, F.silu)}


@pytest.mark.parametrize("name", list(INPLACE))
def test_inplace_writes_into_the_input_and_gradients_are_natives(name, device):
    """Into a view of a non-leaf too: autograd rebases the base's history (CopySlices)."""
    manual, native = INPLACE[name]

    def into_a_view(fn):
        def run(x):
            h = x * 2
            view = h[1:]
            assert fn(view, inplace=True) is view
            return h * x  # uses h after the write, and x on its own

        return run

    x = _x((4, 5), device=device).requires_grad_()
    compare_with_native(into_a_view(manual), into_a_view(native), x)
    h = _x((4, 5), device=device)
    version = h._version
    assert manual(h, inplace=True) is h and h._version > version
    torch.testing.assert_close(h, native(_x((4, 5), device=device)), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(INPLACE))
def test_inplace_forward_ad_writes_the_tangent_in_place(name):
    manual, native = INPLACE[name]
    x, tangent = _x((3, 4)), _x((3, 4), seed=1)
    results = []
    for fn in (manual, native):
        with fwAD.dual_level():
            dual = fwAD.make_dual(x.clone(), tangent.clone())
            out = fn(dual, inplace=True)
            assert out is dual
            results.append(fwAD.unpack_dual(out).tangent)
    torch.testing.assert_close(*results)


@pytest.mark.parametrize("name", list(INPLACE))
def test_inplace_errors_like_native(name):
    """A leaf that requires grad (or a view of one) is refused, with native's message,
    before anything is written; under no_grad it may be written, as natively."""
    manual, native = INPLACE[name]
    leaf = _x((3, 4)).requires_grad_()
    before = leaf.detach().clone()
    for target in (lambda: leaf, lambda: leaf[1:]):
        with pytest.raises(RuntimeError) as expected:
            native(target(), inplace=True)
        with pytest.raises(RuntimeError, match=re.escape(str(expected.value))):
            manual(target(), inplace=True)
        assert torch.equal(leaf.detach(), before)  # nothing written
    with torch.no_grad():
        assert manual(leaf, inplace=True) is leaf
    torch.testing.assert_close(leaf.detach(), native(before))

    # a tensor that another backward kept, then overwritten: backward refuses, as native
    for fn in (native, manual):
        h = _x((3, 4)).requires_grad_() * 1
        kept = h.sin()
        fn(h, inplace=True)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            kept.sum().backward()
    # a view made under no_grad (of a leaf, of a non-leaf): native's message, nothing written
    for base in (leaf, _x((3, 4)).requires_grad_() * 1):
        with torch.no_grad():
            view = base[1:]
        before = view.detach().clone()
        with pytest.raises(RuntimeError, match="view was created in no_grad mode") as expected:
            native(view, inplace=True)
        with pytest.raises(RuntimeError, match=re.escape(str(expected.value))):
            manual(view, inplace=True)
        assert torch.equal(view.detach(), before)
    # one of several views from unbind: native's message (the write, though, comes first)
    for fn in (native, manual):
        h = _x((3, 4)).requires_grad_() * 1
        with pytest.raises(RuntimeError, match="returns multiple views"):
            fn(h.unbind(0)[0], inplace=True)


# ---- PyTorch's own samples ---------------------------------------------------------------

OPINFO = {  # op_db entry name -> (manual functional, in-place variant covered?)
    "nn.functional.relu": (relu, True),
    "tanh": (tanh, False),
    "sigmoid": (sigmoid, False),
    "nn.functional.gelu": (gelu, False),
    "nn.functional.silu": (silu, True),
}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.testing._internal's imports
@pytest.mark.parametrize("name", list(OPINFO))
def test_opinfo_samples_match_native(name, device):
    """Every sample of every OpInfo entry of the op, in float64: outputs and gradients
    equal native's (the in-place form's too), the graph is hand-derived only; its error
    inputs raise what native raises."""
    from torch.testing._internal.common_methods_invocations import op_db

    manual, inplace = OPINFO[name]
    infos = [o for o in op_db if o.name == name]
    assert infos
    count = 0
    for info in infos:
        for sample in info.sample_inputs(device, torch.float64, requires_grad=True):
            args, kwargs = sample.args, sample.kwargs
            pairs = [
                (
                    lambda x, a=args, k=kwargs: manual(x, *a, **k),
                    lambda x, a=args, k=kwargs, f=info.op: f(x, *a, **k),
                )
            ]
            if inplace:
                pairs.append((_inplace(manual), _inplace(info.op)))
            for manual_fn, native_fn in pairs:
                out, _ = compare_with_native(manual_fn, native_fn, sample.input)
                assert_hand_derived_only(out)
                count += 1
        for error in info.error_inputs(device) if info.error_inputs_func else ():
            s = error.sample_input
            with pytest.raises(error.error_type, match=error.error_regex):
                info.op(s.input, *s.args, **s.kwargs)
            with pytest.raises(error.error_type, match=error.error_regex):
                manual(s.input, *s.args, **s.kwargs)
    assert count >= len(infos)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", list(MODULES))
def test_moduleinfo_samples_match_native(name, device):
    manual_cls, native_cls, _ = MODULES[name]
    for sample, native, manual in module_info_pairs(native_cls, manual_cls, device, at_least=3):
        assert repr(manual) == repr(native).replace(native_cls.__name__, manual_cls.__name__)
        (x,) = sample.forward_input.args
        out, _ = compare_with_native(manual, native, x)
        assert_hand_derived_only(out)


# ---- modules, conversion ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODULES))
def test_modules_are_drop_ins(name):
    manual_cls, native_cls, constructions = MODULES[name]
    for kwargs in constructions:
        manual, native = manual_cls(**kwargs), native_cls(**kwargs)
        assert isinstance(manual, native_cls)
        assert vars(manual).keys() == vars(native).keys()
        assert manual.extra_repr() == native.extra_repr()
        assert manual.state_dict() == native.state_dict() == {}
        for clone in (copy.deepcopy(manual), pickle.loads(pickle.dumps(manual))):
            assert type(clone) is manual_cls and clone.extra_repr() == manual.extra_repr()
        x = _x((3, 4)).requires_grad_()
        if kwargs.get("inplace"):
            compare_with_native(_inplace_module(manual), _inplace_module(native), x)
        else:
            out, _ = compare_with_native(manual, native, x)
            assert_hand_derived_only(out)


def _inplace_module(module):
    def run(x):
        h = x.clone()
        assert module(h) is h
        return h

    return run


def test_conversion_and_check_gradients():
    import manualgrad

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(3, 8),
        nn.ReLU(),
        nn.Linear(8, 8),
        nn.GELU(approximate="tanh"),
        nn.Linear(8, 8),
        nn.SiLU(inplace=True),
        nn.Tanh(),
        nn.Linear(8, 4),
        nn.GELU(),
        nn.Sigmoid(),
    )
    manualgrad.replace_modules(model)
    assert not manualgrad.conversion_report(model).skipped
    assert all(manualgrad.registry.is_manual(m) for m in model)
    x = _x((5, 3), torch.float32)
    assert_hand_derived_only(model(x.requires_grad_()))
    report = manualgrad.check_gradients(model, x)
    assert report.passed, str(report)
    manualgrad.restore_modules(model)
    assert type(model[1]) is nn.ReLU and type(model[9]) is nn.Sigmoid


# ---- bad input: the native exception type, a message that names the problem ------------


def test_bad_gelu_approximate_like_native():
    x = _x((3,))
    for bad, error in [("asdf", RuntimeError), ("Tanh", RuntimeError), (None, TypeError)]:
        with pytest.raises(error):
            F.gelu(x, approximate=bad)
        with pytest.raises(error, match="approximate"):
            gelu(x, approximate=bad)
    module = activations.ManualGELU(approximate="asdf")  # nn.GELU checks nothing at construction
    with pytest.raises(RuntimeError, match="approximate argument must be either"):
        module(x)
    with pytest.raises(RuntimeError):
        nn.GELU(approximate="asdf")(x)


@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid", "gelu", "silu"])
def test_bad_input_types_and_dtypes_like_native(name):
    manual, native = OPS[name][:2]
    for bad in (3.0, [1.0, 2.0]):
        with pytest.raises(TypeError) as expected:
            native(bad)
        with pytest.raises(TypeError, match=re.escape(str(expected.value))):
            manual(bad)
    for dtype in (torch.int64, torch.uint8, torch.bool):
        x = torch.arange(-2, 3).to(dtype)
        try:
            out_n = native(x)
        except Exception as error:
            with pytest.raises(type(error)):
                manual(x)
        else:
            out = manual(x)
            assert out.dtype == out_n.dtype and torch.equal(out, out_n)
    if name in INPLACE:
        for bad in (3.0, [1.0]):
            with pytest.raises(TypeError) as expected:
                INPLACE[name][1](bad, inplace=True)
            with pytest.raises(TypeError, match=re.escape(str(expected.value))):
                manual(bad, inplace=True)
