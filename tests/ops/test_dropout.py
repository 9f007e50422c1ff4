"""Dropout against native F.dropout / nn.Dropout: the same masks under the same seed (so
outputs and gradients equal native's to the bit on CPU), and the hand-derived rule
``dL/dX = G * M / (1 - p)`` is the one that runs, in eager, torch.func, forward AD,
checkpointing and torch.compile."""

from __future__ import annotations

import copy
import inspect
from functools import partial

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from conftest import assert_hand_derived_only, compare_with_native, tolerances, wrong_twin
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, jacfwd, jacrev, vmap
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

import manualgrad
import manualgrad.ops.dropout
from manualgrad import hand_derived_nodes, registry
from manualgrad.ops._apply import ManualOp
from manualgrad.ops.dropout import (
    ManualDropout,
    ManualDropoutFunction,
    ManualDropoutInplaceFunction,
    dropout,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

LAYOUTS = {  # a tensor of shape (4, 6, 5, 3) in a few memory layouts
    "contiguous": lambda t: t,
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
    "transposed": lambda t: t.transpose(1, 3),
    "strided": lambda t: t[:, ::2],
}


def _x(shape=(4, 6), dtype=torch.float64, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=dtype).to(device)


def _seeded(fn, seed=42):
    """``fn`` drawing from a fixed seed on every call (as OpInfo's wrapper_set_seed does)."""

    def run(*args, **kwargs):
        torch.manual_seed(seed)
        return fn(*args, **kwargs)

    return run


def _run(fn, x, p, inplace, upstream):
    """Output, input gradient and the next random draw of ``fn(x * 1, p)`` under seed 42."""
    leaf = x.detach().clone().requires_grad_()
    torch.manual_seed(42)
    out = fn(leaf * 1, p, True, inplace)  # ``* 1``: a non-leaf, as in-place needs
    (grad_input,) = torch.autograd.grad(out, leaf, upstream)
    return out, grad_input, torch.rand(3, device=x.device)


# ---- the same masks as native, to the bit ------------------------------------------------


def test_signature_is_native():
    assert inspect.signature(dropout, eval_str=True) == inspect.signature(F.dropout)


@pytest.mark.parametrize("inplace", [False, True], ids=["out-of-place", "inplace"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_outputs_gradients_and_rng_equal_native_bitwise(dtype, inplace, device):
    """Same seed: the same mask, output, gradient and random state afterwards. On CPU (and
    in place anywhere) bit for bit; out of place on CUDA both use the fused kernel, whose
    backward rounds differently from ours."""
    bitwise = device == "cpu" or inplace
    for p in [1e-6, 0.1, 0.5, 0.9, 1.0]:
        for layout, make in LAYOUTS.items():
            x = make(_x((4, 6, 5, 3), dtype, device))
            upstream = make(_x((4, 6, 5, 3), dtype, device, seed=1))
            out_m, grad_m, rng_m = _run(dropout, x, p, inplace, upstream)
            out_n, grad_n, rng_n = _run(F.dropout, x, p, inplace, upstream)
            msg = f"p={p} {layout}"
            assert out_m.stride() == out_n.stride() and grad_m.stride() == grad_n.stride(), msg
            assert torch.equal(out_m, out_n), msg
            assert torch.equal(rng_m, rng_n), msg
            if bitwise:
                assert torch.equal(grad_m, grad_n), msg
            else:
                torch.testing.assert_close(grad_m, grad_n, **tolerances(dtype), msg=msg)


def test_mask_statistics_and_scale():
    """About 1 - p of the elements are kept, each scaled by exactly 1 / (1 - p)."""
    x = torch.ones(200_000)
    for p in [0.1, 0.5, 0.8]:
        out = dropout(x, p)
        kept = out != 0
        assert abs(kept.double().mean().item() - (1 - p)) < 0.01
        assert torch.equal(out[kept], torch.full_like(out[kept], 1 / (1 - p)))


@pytest.mark.parametrize("inplace", [False, True], ids=["out-of-place", "inplace"])
def test_identity_cases_return_the_input_itself(inplace, device):
    """p = 0, training=False and an empty input: native returns its input (no node, no
    random draw), and so does ours."""
    for shape, p, training in [((4, 6), 0.0, True), ((4, 6), 0.5, False), ((0, 3), 0.5, True)]:
        for x in [_x(shape, device=device).requires_grad_(), _x(shape, device=device) * 1]:
            torch.manual_seed(0)
            assert F.dropout(x, p, training, inplace) is x
            before = torch.rand(3)
            torch.manual_seed(0)
            assert dropout(x, p, training, inplace) is x
            assert torch.equal(torch.rand(3), before)  # nothing drawn


def test_p_one_zeros_and_nonfinite_like_native(device):
    """p = 1: ``X * 0`` and ``G * 0``, no 1/0: NaN where native has NaN (inf, NaN inputs)."""
    x = torch.tensor([1.0, -2.0, float("inf"), float("nan"), 0.0], device=device)
    for inplace in [False, True]:
        upstream = torch.tensor([1.0, 2.0, 3.0, float("inf"), 5.0], device=device)
        (out_m, grad_m, _), (out_n, grad_n, _) = (
            _run(fn, x, 1.0, inplace, upstream) for fn in (dropout, F.dropout)
        )
        torch.testing.assert_close(out_m, out_n, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(grad_m, grad_n, rtol=0, atol=0, equal_nan=True)
        assert out_m.isnan().tolist() == [False, False, True, True, False]
    ints = torch.arange(5, device=device)
    assert torch.equal(dropout(ints, 1.0), F.dropout(ints, 1.0))  # integers: zeros, natively


# ---- gradcheck, double backward, saved bytes ----------------------------------------------


@pytest.mark.parametrize("inplace", [False, True], ids=["out-of-place", "inplace"])
@pytest.mark.parametrize("p", [0.3, 1.0])
def test_gradcheck_and_gradgradcheck(p, inplace, device):
    """float64, the mask fixed by the seed (gradcheck calls the function many times). No
    batched forward grad: it vmaps a random op with randomness='error', which native
    dropout fails alike (its OpInfo sets check_batched_forward_grad=False)."""

    @_seeded
    def fn(x):
        return dropout(x * 1 if inplace else x, p, True, inplace)

    x = _x(device=device).requires_grad_()
    assert gradcheck(fn, (x,), check_forward_ad=True, check_batched_grad=True)
    assert gradgradcheck(fn, (x,), check_fwd_over_rev=True, check_batched_grad=True)


def test_gradient_penalty_matches_native():
    """loss + |dloss/dx|^2 in one backward: double backward through our backward."""

    def penalized(fn):
        @_seeded
        def run(x, w):
            loss = (fn(x.tanh(), 0.4) * w).sum()
            (g,) = torch.autograd.grad(loss, x, create_graph=True)
            return loss + g.square().sum()

        return run

    compare_with_native(penalized(dropout), penalized(F.dropout), _x().requires_grad_(), _x(seed=1))


def _saved_bytes(fn, x) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x * 1)
    return total


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_keeps_no_more_bytes_than_native(dtype, device):
    """A bool mask (1 byte per element); native keeps M / (1 - p) in the input's dtype on
    CPU (a bool mask on CUDA), a 0-dim zero for p = 1."""
    x = _x((16, 8), dtype, device).requires_grad_()
    for p in [0.5, 1.0]:
        for inplace in [False, True]:
            ours = _saved_bytes(lambda t, p=p, i=inplace: dropout(t, p, inplace=i), x)
            native = _saved_bytes(lambda t, p=p, i=inplace: F.dropout(t, p, inplace=i), x)
            assert ours == (x.numel() if p < 1 else 1), (p, inplace)
            assert ours <= native, (p, inplace)


def test_backward_is_hand_derived():
    x = _x().requires_grad_()
    out = dropout(x, 0.3)
    assert hand_derived_nodes(out) == {"ManualDropoutFunction": 1}
    assert_hand_derived_only(out)
    out = dropout(x * 1, 0.3, inplace=True)
    assert hand_derived_nodes(out) == {"ManualDropoutInplaceFunction": 1}
    (grad_input,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert torch.equal(grad_input, (out != 0).double() / 0.7)


# ---- in place ------------------------------------------------------------------------------


def test_inplace_modifies_the_input_and_returns_it():
    x = _x() * 1
    data = x.detach().clone()
    out = dropout(x, 0.5, inplace=True)
    assert out is x
    assert torch.equal(x, data * (x != 0) / 0.5)
    with torch.no_grad():  # a leaf that requires grad is fine without grad mode, as natively
        leaf = _x().requires_grad_()
        assert dropout(leaf, 0.5, inplace=True) is leaf


def test_inplace_on_a_leaf_raises_like_native_before_modifying():
    for make in [lambda t: t, lambda t: t[:, :2]]:  # a leaf, and a view of one
        for p in [0.5, 1.0]:
            leaf = _x().requires_grad_()
            with pytest.raises(RuntimeError) as native:
                F.dropout(make(leaf), p, inplace=True)
            before, rng = leaf.detach().clone(), torch.get_rng_state()
            with pytest.raises(RuntimeError) as ours:
                dropout(make(leaf), p, inplace=True)
            assert str(ours.value) == str(native.value)
            assert torch.equal(leaf, before) and torch.equal(torch.get_rng_state(), rng)


def test_inplace_on_a_view_matches_native():
    """A view of a non-leaf, modified in place: autograd rebases the base's history."""

    def on_view(fn):
        @_seeded
        def run(x):
            y = x * 1
            fn(y[:, 1:3], 0.5, True, True)
            return y

        return run

    out, _ = compare_with_native(on_view(dropout), on_view(F.dropout), _x().requires_grad_())
    assert type(out.grad_fn).__name__ == "CopySlices"  # wrapping our node, as native's Mul


def test_forward_ad_matches_native(device):
    """Dual numbers: dY = dX * M / (1 - p), the tangent scaled in place when X is."""
    x, tangent = _x(device=device), _x(device=device, seed=1)
    for p in [0.3, 1.0]:
        for inplace in [False, True]:
            results = []
            for fn in (dropout, F.dropout):
                with fwAD.dual_level():
                    dual = fwAD.make_dual(x.clone(), tangent.clone())
                    torch.manual_seed(42)
                    out = fn(dual, p, True, inplace)
                    assert (out is dual) == inplace
                    results.append(fwAD.unpack_dual(out))
            (out_m, t_m), (out_n, t_n) = results
            assert torch.equal(out_m, out_n) and torch.equal(t_m, t_n), (p, inplace)


# ---- vmap and torch.func -------------------------------------------------------------------


@pytest.mark.parametrize("inplace", [False, True], ids=["out-of-place", "inplace"])
@pytest.mark.parametrize("randomness", ["error", "same", "different"])
def test_vmap_randomness_like_native(randomness, inplace):
    """randomness='error': native's RuntimeError; 'same'/'different': native's masks under
    the same seed, and per-sample gradients M / (1 - p) * G for the mask drawn."""
    xs, w = _x((5, 4, 3)), _x((4, 3), seed=1)

    def run(fn, transform=lambda f: f):
        torch.manual_seed(0)
        f = transform(lambda x: (fn(x * 1, 0.5, inplace=inplace) * w).sum())
        return vmap(f, randomness=randomness)(xs)

    if randomness == "error":
        with pytest.raises(RuntimeError) as native:
            run(F.dropout)
        with pytest.raises(RuntimeError) as ours:
            run(dropout)
        assert str(ours.value) == str(native.value)
        return
    torch.manual_seed(0)
    outs = vmap(lambda x: dropout(x * 1, 0.5, inplace=inplace), randomness=randomness)(xs)
    torch.manual_seed(0)
    native = vmap(lambda x: F.dropout(x * 1, 0.5, inplace=inplace), randomness=randomness)(xs)
    assert torch.equal(outs, native)
    masks = outs != 0
    assert torch.equal(masks[0], masks[1]) == (randomness == "same")
    per_sample = run(dropout, grad)
    assert torch.equal(per_sample, run(F.dropout, grad))
    assert torch.equal(per_sample, masks / 0.5 * w)


def test_vmap_inplace_on_the_vmapped_input_like_native():
    xs = [_x((5, 4)), _x((5, 4))]
    for x, fn in zip(xs, (dropout, F.dropout), strict=True):
        torch.manual_seed(0)
        vmap(lambda t, fn=fn: fn(t, 0.5, inplace=True), randomness="different")(x)
    assert torch.equal(*xs)


def test_jacrev_jacfwd_equal_native():
    x = _x((5,))
    for transform in (jacrev, lambda f: jacfwd(f, randomness="same")):
        got, expected = (
            _seeded(transform(lambda t, fn=fn: fn(t, 0.4)))(x) for fn in (dropout, F.dropout)
        )
        assert torch.equal(got, expected)
        assert torch.equal(got, torch.diag(got.diagonal()))  # elementwise: a diagonal Jacobian


# ---- autocast and checkpointing --------------------------------------------------------------

AUTOCAST = [
    pytest.param("cpu", torch.bfloat16, id="cpu-bfloat16"),
    pytest.param("cuda", torch.float16, id="cuda-float16", marks=cuda),
    pytest.param("cuda", torch.bfloat16, id="cuda-bfloat16", marks=cuda),
]


@pytest.mark.parametrize(("device", "dtype"), AUTOCAST)
@pytest.mark.parametrize("input_dtype", ["low", torch.float32])
def test_autocast_keeps_the_input_dtype_like_native(device, dtype, input_dtype):
    """Dropout is no autocast op: it runs in its input's dtype, natively and here; after an
    autocast linear that is the low dtype."""
    input_dtype = dtype if input_dtype == "low" else input_dtype
    x, w = _x((6, 5), input_dtype, device), _x((4, 5), torch.float32, device, seed=1)
    results = []
    for fn, lin in [(dropout, manualgrad.functional.linear), (F.dropout, F.linear)]:
        xr = x.clone().requires_grad_()
        with torch.autocast(device, dtype=dtype):
            torch.manual_seed(42)
            out = fn(xr, 0.3)
            after_linear = fn(lin(out, w), 0.3)
            after_linear.float().sum().backward()
        results.append((out, after_linear, xr.grad))
    (out_m, lin_m, grad_m), (out_n, lin_n, grad_n) = results
    assert out_m.dtype == out_n.dtype == input_dtype and lin_m.dtype == lin_n.dtype == dtype
    assert grad_m.dtype == grad_n.dtype == input_dtype
    assert torch.equal(out_m, out_n)
    torch.testing.assert_close(lin_m, lin_n, **tolerances(dtype))
    torch.testing.assert_close(grad_m, grad_n, **tolerances(dtype))


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpoint_recomputes_the_same_mask(use_reentrant, device):
    """checkpoint restores the random state before recomputing: the same mask twice, so
    the gradients are native's (reentrant checkpoint needs ``.backward()``)."""
    x, w, upstream = (_x(s, device=device, seed=i) for i, s in enumerate([(6, 5), (4, 5), (6, 4)]))

    def block(fn):
        return lambda x: fn(F.linear(x, w).tanh(), 0.5) * 2

    results = []
    for fn, wrap in [
        (dropout, lambda f, x: checkpoint(f, x, use_reentrant=use_reentrant)),
        (F.dropout, lambda f, x: f(x)),
    ]:
        leaf = x.clone().requires_grad_()
        torch.manual_seed(42)
        out = wrap(block(fn), leaf)
        out.backward(upstream)
        results.append((out, leaf.grad))
    (out_m, grad_m), (out_n, grad_n) = results
    assert torch.equal(out_m, out_n)
    torch.testing.assert_close(grad_m, grad_n, **tolerances(torch.float64))


# ---- torch.compile: one graph, and the hand-derived rule ---------------------------------


@pytest.fixture
def wrong(monkeypatch):
    """Route both Functions through twins whose gradients and tangents are 3x the true ones."""
    monkeypatch.setattr(
        manualgrad.ops.dropout, "_dropout", ManualOp(wrong_twin(ManualDropoutFunction))
    )
    monkeypatch.setattr(
        manualgrad.ops.dropout, "_dropout_", ManualOp(wrong_twin(ManualDropoutInplaceFunction))
    )
    torch._dynamo.reset()
    yield 3.0
    torch._dynamo.reset()


def _both(x):
    """Both Functions in one graph: ``dropout(dropout_(x * 1)) * 2``."""
    return dropout(dropout(x * 1, 0.5, True, True), 0.2) * 2


def _expected_grad(out, upstream):
    """d(sum out * G)/dx for the masks of this run, read off the output (x has no zeros):
    ``2 G M1 M2 / (0.5 * 0.8)`` where M1 M2 is where ``out`` is nonzero."""
    return (out != 0) * upstream * (2 / (0.5 * 0.8))


@pytest.mark.parametrize("rules", ["hand-derived", "wrong"])
def test_compiled_fullgraph_gradient_is_the_rule(rules, request, device):
    """No graph break; the compiled mask is the compiler's own, but the gradient is
    M / (1 - p) * G for that mask, and 3x (twice, 9x) with the wrong twins."""
    factor = request.getfixturevalue("wrong") ** 2 if rules == "wrong" else 1.0
    x = _x((64, 8), torch.float32, device).requires_grad_()
    upstream = _x((64, 8), torch.float32, device, seed=1)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(_both)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    out = torch.compile(_both, fullgraph=True)(x)
    (got,) = torch.autograd.grad(out, x, upstream)
    torch._dynamo.reset()
    assert 0.2 < (out != 0).float().mean().item() < 0.6  # kept with probability 0.4
    torch.testing.assert_close(got, factor * _expected_grad(out, upstream))


def test_wrong_twin_shows_in_eager_func_jvp_and_checkpoint(wrong):
    """The same known error through eager backward, torch.func (the vmap path of in-place
    too), forward AD (out of place) and checkpointing."""
    x, upstream = _x((6, 5)), _x((6, 5), seed=1)
    leaf = x.clone().requires_grad_()
    out = _both(leaf)
    (got,) = torch.autograd.grad(out, leaf, upstream)
    torch.testing.assert_close(got, wrong**2 * _expected_grad(out, upstream))
    torch.manual_seed(0)
    got = vmap(grad(lambda t: (_both(t) * upstream[0]).sum()), randomness="same")(x)
    torch.manual_seed(0)
    out = vmap(_both, randomness="same")(x)
    torch.testing.assert_close(got, wrong**2 * _expected_grad(out, upstream[0]))
    for reentrant in (False, True):
        leaf = x.clone().requires_grad_()
        out = _seeded(lambda t, r=reentrant: checkpoint(_both, t, use_reentrant=r))(leaf)
        out.backward(upstream)  # reentrant checkpoint refuses autograd.grad
        torch.testing.assert_close(leaf.grad, wrong**2 * _expected_grad(out, upstream))
    with fwAD.dual_level():
        out, out_t = fwAD.unpack_dual(dropout(fwAD.make_dual(x, upstream), 0.5))
    torch.testing.assert_close(out_t, wrong * (out != 0) * upstream / 0.5)


# ---- PyTorch's own samples, the module, bad input ------------------------------------------


def test_opinfo_samples_match_native(device):
    """op_db's nn.functional.dropout (seed 42 before each call) in float64, out of place
    and through its inplace_variant: outputs and gradients equal native's (a sample native
    rejected would have to raise the same exception type in ours: none does)."""
    from torch.testing._internal.common_methods_invocations import op_db

    (op,) = [o for o in op_db if o.name == "nn.functional.dropout" and not o.variant_test_name]
    for sample in op.sample_inputs(device, torch.float64, requires_grad=True):
        args, kwargs = sample.args, sample.kwargs
        for ours, native in [
            (partial(dropout, *args, **kwargs), partial(op, *args, **kwargs)),
            (
                partial(_on_copy, partial(dropout, *args, **kwargs, inplace=True)),
                partial(_on_copy, partial(op.inplace_variant, *args, **kwargs)),
            ),
        ]:
            try:
                _seeded(native)(sample.input.detach())
            except Exception as error:  # the outcome is what we compare
                with pytest.raises(type(error)):
                    _seeded(ours)(sample.input.detach())
                continue
            out, _ = compare_with_native(_seeded(ours), native, sample.input)
            if kwargs.get("training", True) and kwargs.get("p", 0.5) > 0:
                assert_hand_derived_only(out)


def _on_copy(fn, x):
    """``fn`` on a non-leaf copy of ``x`` (what an in-place op needs in grad mode); clone's
    backward is structural, so the graph stays hand-derived only."""
    return fn(x.clone())


MODULE_CASES = [  # (constructor kwargs, input shape): what a ModuleInfo would cover
    ({}, (4, 5)),
    ({"p": 0.2}, (2, 3, 4)),
    ({"p": 0.0}, (4, 5)),
    ({"p": 1.0}, (4, 5)),
    ({"p": 0.5, "inplace": True}, (4, 5)),
    ({"p": 0.3}, ()),
]


@pytest.mark.parametrize(("kwargs", "shape"), MODULE_CASES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_module_is_a_drop_in(kwargs, shape, training, device):
    torch.manual_seed(0)
    manual, native = ManualDropout(**kwargs), nn.Dropout(**kwargs)
    assert isinstance(manual, nn.Dropout)
    assert repr(manual).replace("Manual", "") == repr(native)
    assert manual.state_dict() == native.state_dict() == {}
    manual.train(training), native.train(training)
    inplace = kwargs.get("inplace", False)

    def wrap(module):
        return _seeded(lambda x: module(x * 1 if inplace else x))

    compare_with_native(wrap(manual), wrap(native), _x(shape, device=device).requires_grad_())
    copy.deepcopy(manual)(_x(shape, device=device))  # copies still work


def test_check_gradients_and_conversion_with_the_registry():
    """The table maps nn.Dropout to ManualDropout; a converted model's gradients pass."""
    assert registry.manual_class(nn.Dropout) is ManualDropout
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.3), nn.Linear(8, 2))
    manualgrad.replace_modules(model)
    assert type(model[1]) is ManualDropout
    report = manualgrad.check_gradients(model, _x((6, 5), torch.float32))
    assert report.passed, str(report)
    assert report.max_abs == 0.0  # the same masks: the very same numbers
    assert report.backward_calls["ManualDropoutFunction"] == 1


def test_bad_probability_raises_like_native():
    x = _x()
    for p in [-0.1, 1.5, float("inf")]:
        with pytest.raises(ValueError, match=f"between 0 and 1, but got {p}"):
            dropout(x, p)
        with pytest.raises(ValueError):
            F.dropout(x, p)
        with pytest.raises(ValueError, match="between 0 and 1"):
            ManualDropout(p)
    with pytest.raises(RuntimeError, match="between 0 and 1, but got nan"):
        dropout(x, float("nan"))
    with pytest.raises(RuntimeError, match="between 0 and 1, but got nan"):
        F.dropout(x, float("nan"))
    ints = torch.arange(5)
    with pytest.raises(RuntimeError) as native:
        F.dropout(ints, 0.5)
    with pytest.raises(RuntimeError) as ours:
        dropout(ints, 0.5)
    assert str(ours.value) == str(native.value)  # "result type Float can't be cast ..."
