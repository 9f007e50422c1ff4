"""scaled_dot_product_attention (ManualAttentionFunction) against native
F.scaled_dot_product_attention: outputs and every gradient, masks, causal, dropout (the same
draws under the same seed on CPU), grouped-query attention, what it keeps for backward, and
proof that the hand-derived rule is the one that runs (eager, forward AD, torch.func,
checkpointing, torch.compile)."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from conftest import (
    AUTOCAST,
    assert_hand_derived_only,
    compare_sample_with_native,
    compare_with_native,
    tolerances,
    wrong_twin,
)
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, hessian, jacfwd, jacrev, vmap
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

import manualgrad
import manualgrad.ops.attention
from manualgrad import ManualAttentionFunction, hand_derived_nodes
from manualgrad.functional import scaled_dot_product_attention as sdpa
from manualgrad.ops._apply import ManualOp
from manualgrad.ops.attention import _attend

F64 = torch.float64


def _t(shape, dtype=F64, device="cpu", seed=0, grad=False):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=gen, dtype=F64).to(device, dtype)
    return t.requires_grad_(grad)


def _qkv(q=(2, 2, 3, 4), k=(2, 2, 5, 4), v=(2, 2, 5, 3), **kw):
    return _t(q, seed=1, **kw), _t(k, seed=2, **kw), _t(v, seed=3, **kw)


def _seeded(fn, seed=42):
    """``fn`` drawing from a fixed seed on every call (as OpInfo's wrapper_set_seed)."""

    def run(*args, **kwargs):
        torch.manual_seed(seed)
        return fn(*args, **kwargs)

    return run


def _bool_mask(shape, device="cpu", seed=4, full_row=True):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=gen) > 0.4
    if full_row:
        mask[..., 1, :] = False  # one fully masked row
    return mask.to(device)


# ---- gradients: numerical checks -----------------------------------------------------------

GRADCHECK_CASES = {
    "plain": ((1, 2, 3, 4), (1, 2, 4, 4), (1, 2, 4, 3), {}),
    "gqa-float-mask": ((1, 4, 2, 3), (1, 2, 3, 3), (1, 2, 3, 2), {"enable_gqa": True, "mask": 1}),
    "bool-mask-full-row": ((2, 3, 3), (2, 4, 3), (2, 4, 2), {"mask": "bool"}),
    "causal-scale": ((1, 2, 4, 3), (1, 2, 3, 3), (1, 2, 3, 2), {"is_causal": True, "scale": -0.7}),
    "dropout": ((1, 2, 3, 3), (1, 2, 4, 3), (1, 2, 4, 2), {"dropout_p": 0.4}),
}


@pytest.mark.parametrize("case", list(GRADCHECK_CASES))
def test_gradcheck_gradgradcheck_forward_ad(case, device):
    """Every input (a float mask too), double backward and forward AD, by finite
    differences in float64; dropout under a fixed seed (the same mask each call)."""
    q, k, v, kw = GRADCHECK_CASES[case]
    kw = dict(kw)
    inputs = list(_qkv(q, k, v, device=device, grad=True))
    mask = kw.pop("mask", None)
    if mask == 1:
        inputs.append(_t((2, 3), device=device, seed=5, grad=True))
    elif mask == "bool":
        kw["attn_mask"] = _bool_mask((2, 3, 4), device)

    def fn(q, k, v, m=None):
        return sdpa(q, k, v, **kw) if m is None else sdpa(q, k, v, attn_mask=m, **kw)

    fn = _seeded(fn)
    batched = case == "plain"  # vmap-batched checks: slow, and refused with random draws
    assert gradcheck(
        fn,
        inputs,
        check_forward_ad=True,
        check_batched_grad=batched,
        check_batched_forward_grad=batched,
    )
    assert gradgradcheck(fn, inputs)


@pytest.mark.parametrize(("safe", "dropout_p"), [(True, 0.3), (False, 0.0)])
def test_probabilities_output_gradcheck(safe, dropout_p):
    """The optional probabilities output (MultiheadAttention's weights): its gradient flows
    through the same hand-derived backward, first and second order, and forward AD."""
    q, k, v = _qkv((2, 3, 3), (2, 4, 3), (2, 4, 2), grad=True)
    mask = _bool_mask((2, 3, 4), full_row=safe)  # safe=False: a full row would be NaN
    fn = _seeded(lambda q, k, v: _attend(q, k, v, mask, dropout_p, 0.6, safe, True))
    assert gradcheck(fn, (q, k, v), check_forward_ad=True)
    assert gradgradcheck(fn, (q, k, v))


# ---- native parity ---------------------------------------------------------------------------


def test_opinfo_samples_match_native(device):
    """PyTorch's own samples (3-D, 4-D, broadcast batch, causal, dropout 0.5 drawn as native
    draws it, enable_gqa, a float mask) in float64: outputs and gradients equal native's,
    and the graph is hand-derived only."""
    from torch.testing._internal.common_methods_invocations import op_db, wrapper_set_seed

    (info,) = [o for o in op_db if o.name == "nn.functional.scaled_dot_product_attention"]
    manual = lambda *a, **kw: wrapper_set_seed(sdpa, *a, **kw)  # noqa: E731
    count = 0
    for sample in info.sample_inputs(device, F64, requires_grad=True):
        if device != "cpu" and sample.kwargs.get("dropout_p"):
            continue  # native CUDA draws inside fused kernels: no plain-torch twin
        count += compare_sample_with_native(manual, info.op, sample)
    assert count >= (25 if device == "cpu" else 13)


def _mask(kind, shape, dtype, device):
    if kind == "bool":
        return _bool_mask(shape, device)
    if kind == "float32":
        return _t(shape, torch.float32, device, seed=6)  # native accepts float32 always
    return _t(shape, dtype, device, seed=6, grad=True)  # the query's dtype, requires grad


PARITY = {
    # name: (q, k, v shapes, kwargs); "mask": (kind, shape)
    "2d": ((3, 4), (5, 4), (5, 2), {}),
    "5d": ((2, 1, 2, 3, 4), (2, 1, 2, 5, 4), (2, 1, 2, 5, 3), {}),
    "broadcast-batch": ((2, 2, 3, 4), (2, 5, 4), (1, 2, 5, 3), {}),
    "bool-mask-broadcast": ((2, 2, 3, 4), None, None, {"mask": ("bool", (2, 1, 3, 5))}),
    "float32-mask": ((2, 2, 3, 4), None, None, {"mask": ("float32", (3, 5))}),
    "float-mask-grad": ((2, 2, 3, 4), None, None, {"mask": ("grad", (2, 1, 3, 5))}),
    "causal-L<S": ((2, 2, 3, 4), None, None, {"is_causal": True}),
    "causal-L>S": ((2, 2, 7, 4), None, None, {"is_causal": True}),
    "scale": ((2, 2, 3, 4), None, None, {"scale": 0.3}),
    "scale-0": ((2, 2, 3, 4), None, None, {"scale": 0.0}),
    "gqa": ((2, 6, 3, 4), (2, 2, 5, 4), (2, 2, 5, 3), {"enable_gqa": True}),
    "gqa-mask-per-head": (
        (2, 6, 3, 4),
        (2, 3, 5, 4),
        (2, 3, 5, 3),
        {"enable_gqa": True, "mask": ("bool", (6, 3, 5))},
    ),
    "gqa-equal-heads": ((2, 2, 3, 4), None, None, {"enable_gqa": True, "is_causal": True}),
    "dropout": ((2, 2, 3, 4), None, None, {"dropout_p": 0.3}),
    "dropout-gqa-mask": (
        (2, 4, 3, 4),
        (2, 2, 5, 4),
        (2, 2, 5, 3),
        {"dropout_p": 0.5, "enable_gqa": True, "mask": ("bool", (3, 5))},
    ),
    "dropout-1": ((2, 2, 3, 4), None, None, {"dropout_p": 1.0}),
    "dropout-negative": ((2, 2, 3, 4), None, None, {"dropout_p": -0.2}),
    "empty-L": ((2, 2, 0, 4), None, None, {}),
    "empty-S": ((2, 2, 3, 4), (2, 2, 0, 4), (2, 2, 0, 3), {}),
}


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=str)
@pytest.mark.parametrize("case", list(PARITY))
def test_matches_native(case, dtype, device):
    """Every argument against native (whatever backend it picks), in float64 and float32:
    outputs, the gradients of query, key, value and of a float mask that requires grad;
    gradient dtypes and shapes exactly. A fully masked row gives 0 and a 0 gradient, as
    native's ``_safe_softmax``."""
    q, k, v, kw = PARITY[case]
    if "dropout_p" in kw and kw["dropout_p"] > 0 and device != "cpu":
        pytest.skip("native CUDA dropout draws inside fused kernels")
    kw = dict(kw)
    k = k or (*q[:-2], 5, q[-1])
    v = v or (*k[:-1], 3)
    inputs = [t.to(dtype) for t in _qkv(q, k, v, device=device)]
    inputs = [t.requires_grad_() for t in inputs]
    mask = kw.pop("mask", None)
    if mask is not None:
        inputs.append(_mask(*mask, dtype, device))
    tol = tolerances(dtype)

    def call(fn):
        return _seeded(lambda *t: fn(*t[:3], attn_mask=t[3] if len(t) > 3 else None, **kw))

    out, _ = compare_with_native(call(sdpa), call(F.scaled_dot_product_attention), *inputs, tol=tol)
    if out.requires_grad:
        assert_hand_derived_only(out)


def test_fully_masked_rows_give_zero_like_native(device):
    q, k, v = _qkv(device=device, grad=True)
    mask = _bool_mask((3, 5), device)
    out = sdpa(q, k, v, attn_mask=mask)
    assert torch.equal(out[..., 1, :], torch.zeros_like(out[..., 1, :]))
    (gq,) = torch.autograd.grad(out.sum(), q)
    assert torch.equal(gq[..., 1, :], torch.zeros_like(gq[..., 1, :]))
    float_mask = torch.zeros(3, 5, dtype=F64, device=device).masked_fill(~mask, float("-inf"))
    compare_with_native(
        lambda q: sdpa(q, k, v, attn_mask=float_mask),
        lambda q: F.scaled_dot_product_attention(q, k, v, attn_mask=float_mask),
        q,
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_causal_attention_with_a_nonfinite_key_is_as_native_math_backends(bad):
    """The causal mask enters as in native's math backend (added to the scores), so a
    non-finite key gives what it gives there, row by row: with NaN or +inf, NaN also in the
    rows before it, which see it above the diagonal; a row whose every attended score is
    -inf gives 0, as native's safe softmax."""
    q, k, v = _qkv(q=(1, 2, 5, 4), k=(1, 2, 5, 4), v=(1, 2, 5, 3))
    q, k = q.clone(), k.clone()
    k[:, 0, 3, 0] = bad  # head 0, key 3: attended by rows 3 and 4, above the diagonal
    q[:, 1, 0, :], k[:, 1, 0, :] = 1.0, float("-inf")  # head 1, row 0 attends key 0: -inf
    out = sdpa(q, k, v, is_causal=True)
    with sdpa_kernel(SDPBackend.MATH):
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, expected, equal_nan=True, **tolerances(F64))
    if bad != bad:  # NaN: in the rows before key 3 too (native's fused kernels skip it)
        assert out[:, 0].isnan().all()
    assert torch.equal(out[:, 1, 0], torch.zeros_like(out[:, 1, 0]))


def test_dropout_draws_native_mask_and_advances_rng_alike():
    q, k, v = _qkv()
    torch.manual_seed(7)
    out = sdpa(q, k, v, dropout_p=0.5)
    after = torch.rand(3)
    torch.manual_seed(7)
    out_n = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    torch.testing.assert_close(out, out_n, **tolerances(F64))
    assert torch.equal(after, torch.rand(3))  # the same number of draws


def test_double_backward_matches_native(device):
    """Gradient penalty ``L + |dL/dQ|^2 + |dL/dK|^2``: the backward's own graph (through
    the saved output and log-sum-exp) against native's double backward."""
    weight = _t((2, 2, 3, 3), device=device, seed=9)

    def penalized(fn):
        def loss(q, k, v):
            out = (fn(q, k, v, is_causal=True) * weight).sum()
            gq, gk = torch.autograd.grad(out, (q, k), create_graph=True)
            return out + gq.square().sum() + gk.square().sum()

        return loss

    compare_with_native(
        penalized(sdpa), penalized(F.scaled_dot_product_attention), *_qkv(device=device, grad=True)
    )


def test_backward_is_hand_derived():
    q, k, v = _qkv(grad=True)
    for kw in ({}, {"is_causal": True}, {"dropout_p": 0.2}, {"attn_mask": _bool_mask((3, 5))}):
        out = sdpa(q, k, v, **kw)
        assert hand_derived_nodes(out) == {"ManualAttentionFunction": 1}
        assert_hand_derived_only(out)
    gqa = sdpa(_t((2, 4, 3, 4), grad=True), k, v, enable_gqa=True)  # views around the node
    assert_hand_derived_only(gqa)
    assert not sdpa(*_qkv()).requires_grad


# ---- what it keeps for backward -------------------------------------------------------------


def _saved_bytes(fn) -> int:
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize(
    "kw",
    [{}, {"is_causal": True}, {"dropout_p": 0.1}, {"attn_mask": "bool"}, {"enable_gqa": True}],
    ids=["plain", "causal", "dropout", "bool-mask", "gqa"],
)
def test_saves_qkv_output_lse_not_probabilities(kw):
    """Q, K, V, O and one log-sum-exp per row (plus a bool mask, 1 byte per entry, when one
    is given or dropout draws one): never P. Never more than native keeps, whichever
    backend (the CPU flash kernel by default, the math backend)."""
    batch, heads, length, dim = 2, 4, 16, 8
    kv_heads = 2 if kw.get("enable_gqa") else heads
    q = _t((batch, heads, length, dim), torch.float32, grad=True)
    k, v = (_t((batch, kv_heads, length, dim), torch.float32, seed=s, grad=True) for s in (1, 2))
    kw = dict(kw)
    if kw.get("attn_mask") == "bool":
        kw["attn_mask"] = _bool_mask((length, length))
    got = _saved_bytes(lambda: sdpa(q, k, v, **kw))
    native = _saved_bytes(lambda: F.scaled_dot_product_attention(q, k, v, **kw))
    with sdpa_kernel(SDPBackend.MATH):
        math = _saved_bytes(lambda: F.scaled_dot_product_attention(q, k, v, **kw))
    expected = 4 * (q.numel() + k.numel() + v.numel() + q.numel() + batch * heads * length)
    probs = batch * heads * length * length
    if "attn_mask" in kw:
        expected += length * length  # the bool mask itself
    if "dropout_p" in kw:
        expected += probs  # the dropout mask, bool
    assert got == expected
    assert got <= native and got <= math
    assert got < expected + 4 * probs  # a float P would not fit


# ---- torch.func, forward AD, vmap ---------------------------------------------------------


def test_forward_ad_and_func_transforms_match_native(device):
    q, k, v = _qkv((2, 3, 4), (2, 5, 4), (2, 5, 3), device=device)
    tq, tk, tv = _qkv((2, 3, 4), (2, 5, 4), (2, 5, 3), device=device)
    mask = _bool_mask((3, 5), device)
    results = []
    for fn in (sdpa, F.scaled_dot_product_attention):
        with fwAD.dual_level():
            duals = [fwAD.make_dual(x, t) for x, t in ((q, tq), (k, tk), (v, tv))]
            tangent = fwAD.unpack_dual(fn(*duals, attn_mask=mask)).tangent
        f = lambda q, k, fn=fn: fn(q, k, v, is_causal=True)  # noqa: E731
        jac = [transform(f, argnums=(0, 1))(q, k) for transform in (jacrev, jacfwd)]
        s = lambda q, fn=fn: fn(q, k, v).square().sum()  # noqa: E731
        results.append((tangent, jac, grad(s)(q), hessian(s)(q[0])))
    torch.testing.assert_close(results[0], results[1], **tolerances(F64))


def test_vmap_and_per_sample_gradients(device):
    qs, ks = _t((5, 2, 3, 4), device=device), _t((5, 2, 5, 4), device=device)  # 5 samples
    k, v = _t((2, 5, 4), device=device, seed=2), _t((2, 5, 3), device=device, seed=3)
    mask = _bool_mask((3, 5), device)
    got, expected = (
        vmap(lambda q, fn=fn: fn(q, k, v, attn_mask=mask))(qs)
        for fn in (sdpa, F.scaled_dot_product_attention)
    )
    torch.testing.assert_close(got, expected, **tolerances(F64))
    per_sample = [
        vmap(grad(lambda q, k, fn=fn: fn(q, k, v, is_causal=True).sum(), argnums=(0, 1)))(qs, ks)
        for fn in (sdpa, F.scaled_dot_product_attention)
    ]
    torch.testing.assert_close(*per_sample, **tolerances(F64))


# ---- the hand-derived rule is the one that ran: a deliberately wrong twin -----------------


@pytest.fixture
def wrong(monkeypatch):
    """Route attention through a twin whose gradients and tangents are 3x the true ones."""
    wrong_op = ManualOp(wrong_twin(ManualAttentionFunction))
    monkeypatch.setattr(manualgrad.ops.attention, "_attention", wrong_op)
    torch._dynamo.reset()
    yield 3.0
    torch._dynamo.reset()


def _loss(fn):
    return lambda q, k, v: (fn(q, k, v, is_causal=True) * torch.arange(3.0)).sum()


def _grads(loss, q, k, v):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    loss(q, k, v).backward()  # not autograd.grad: reentrant checkpointing refuses that
    return q.grad, k.grad, v.grad


@pytest.mark.parametrize("rules", ["hand-derived", "wrong"])
def test_compiled_fullgraph_gradient_is_the_rule(rules, request, device):
    """Compiled with fullgraph (no graph break) the gradient is native's; routed through the
    wrong twin it is 3x native's, so the compiled backward is the hand-derived one."""
    factor = request.getfixturevalue("wrong") if rules == "wrong" else 1.0
    q, k, v = _qkv(dtype=torch.float32, device=device)
    torch._dynamo.reset()
    compiled = torch.compile(_loss(sdpa), fullgraph=True, backend="aot_eager")
    got = _grads(compiled, q, k, v)
    torch._dynamo.reset()
    expected = _grads(_loss(F.scaled_dot_product_attention), q, k, v)
    torch.testing.assert_close(got, tuple(factor * g for g in expected))


def test_compiled_inductor_matches_native():
    q, k, v = _qkv(dtype=torch.float32)
    torch._dynamo.reset()
    got = _grads(torch.compile(_loss(sdpa), fullgraph=True), q, k, v)
    torch._dynamo.reset()
    expected = _grads(_loss(F.scaled_dot_product_attention), q, k, v)
    torch.testing.assert_close(got, expected, **tolerances(torch.float32))


def test_wrong_twin_shows_in_eager_jvp_func_and_checkpoint(wrong):
    q, k, v = _qkv()
    expected = _grads(_loss(F.scaled_dot_product_attention), q, k, v)
    scaled = tuple(wrong * g for g in expected)
    torch.testing.assert_close(_grads(_loss(sdpa), q, k, v), scaled)
    torch.testing.assert_close(grad(_loss(sdpa), argnums=(0, 1, 2))(q, k, v), scaled)
    for reentrant in (False, True):
        ckpt = lambda q, k, v, r=reentrant: checkpoint(_loss(sdpa), q, k, v, use_reentrant=r)  # noqa: E731
        torch.testing.assert_close(_grads(ckpt, q, k, v), scaled)
    tangents = []
    for fn in (sdpa, F.scaled_dot_product_attention):
        with fwAD.dual_level():
            out = fn(fwAD.make_dual(q, k[..., :3, :]), k, v)
            tangents.append(fwAD.unpack_dual(out).tangent)
    torch.testing.assert_close(tangents[0], wrong * tangents[1])


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpoint_gives_native_gradients(use_reentrant, device):
    q, k, v = _qkv(device=device)
    ckpt = lambda q, k, v: checkpoint(_loss(sdpa), q, k, v, use_reentrant=use_reentrant)  # noqa: E731
    expected = _grads(_loss(F.scaled_dot_product_attention), q, k, v)
    torch.testing.assert_close(_grads(ckpt, q, k, v), expected, **tolerances(F64))


# ---- autocast: native's output dtypes --------------------------------------------------------


@pytest.mark.parametrize(("device", "autocast"), AUTOCAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("mask", [None, "float"])
def test_autocast_matches_native(device, autocast, dtype, mask):
    """Autocast runs attention in low precision (a float32 mask cast too; float64 left
    alone): output and gradient dtypes as native's, values within low-precision rounding."""
    q, k, v = (t.to(dtype) for t in _qkv(device=device))
    attn_mask = None if mask is None else _t((3, 5), torch.float32, device, seed=6)
    if dtype == F64 and mask is not None:  # autocast casts the mask only: native refuses
        for fn in (sdpa, F.scaled_dot_product_attention):
            with torch.autocast(device, dtype=autocast), pytest.raises(RuntimeError):
                fn(q, k, v, attn_mask=attn_mask)
        return
    results = []
    for fn in (sdpa, F.scaled_dot_product_attention):
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        with torch.autocast(device, dtype=autocast):
            out = fn(*inputs, attn_mask=attn_mask)
        grads = torch.autograd.grad(out, inputs, torch.ones_like(out))
        results.append((out, grads))
    (out, grads), (out_n, grads_n) = results
    assert out.dtype == out_n.dtype
    assert [g.dtype for g in grads] == [g.dtype for g in grads_n] == [dtype] * 3
    low = out_n.dtype in (torch.bfloat16, torch.float16)
    tol = dict(rtol=3e-2, atol=3e-2) if low else tolerances(dtype)
    torch.testing.assert_close(out, out_n, **tol)
    torch.testing.assert_close(grads, grads_n, **tol)


# ---- bad input: the native exception type, a message that names the problem --------------


def _bad_cases():
    q, k, v = _qkv()
    return {
        "1-D": ((q[0, 0, 0], k[0, 0, 0], v[0, 0, 0]), {}, "at least 2 dimensional"),
        "dtypes": ((q, k.float(), v), {}, "same dtype"),
        "E": ((q, k[..., :3], v), {}, "last dimension"),
        "S": ((q, k, v[..., :4, :]), {}, "positions"),
        "causal-and-mask": (
            (q, k, v),
            {"attn_mask": _bool_mask((3, 5)), "is_causal": True},
            "is_causal",
        ),
        "float64-mask-float32-query": (
            (q.float(), k.float(), v.float()),
            {"attn_mask": _t((3, 5))},
            "attn_mask dtype",
        ),
        "int-mask": (
            (q, k, v),
            {"attn_mask": torch.ones(3, 5, dtype=torch.long)},
            "attn_mask dtype",
        ),
        "mask-shape": ((q, k, v), {"attn_mask": _bool_mask((4, 5), full_row=False)}, None),
        "dropout": ((q, k, v), {"dropout_p": 1.5}, "dropout probability"),
        "gqa": ((_t((2, 3, 3, 4)), k, v), {"enable_gqa": True}, "number of heads"),
        "heads-without-gqa": ((_t((2, 3, 3, 4)), k, v), {}, None),
        "integer": ((q.long(), k.long(), v.long()), {}, "floating-point"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_input_raises_like_native(case):
    args, kw, match = _bad_cases()[case]
    with pytest.raises(RuntimeError):
        F.scaled_dot_product_attention(*args, **kw)
    with pytest.raises(RuntimeError, match=match):
        sdpa(*args, **kw)


def test_functional_is_exported():
    assert manualgrad.functional.scaled_dot_product_attention is sdpa
    assert "scaled_dot_product_attention" in manualgrad.functional.__all__
    assert "ManualAttentionFunction" in manualgrad.__all__
