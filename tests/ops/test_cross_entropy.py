"""nll_loss / cross_entropy (functional and ManualNLLLoss / ManualCrossEntropyLoss) against
native: class-index targets of any rank, class-probability targets, weights, ignore_index,
label smoothing, every reduction; PyTorch's own samples; what they keep for backward;
torch.func, forward AD, torch.compile (with the wrong-twin proof), checkpointing, autocast;
the legacy arguments and bad input."""

from __future__ import annotations

import inspect
import math
import pickle

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from conftest import (
    AUTOCAST,
    assert_hand_derived_only,
    compare_sample_with_native,
    compare_with_native,
    module_info_pairs,
    tolerances,
    wrong_twin,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, hessian, jacfwd, jacrev, vmap
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

import manualgrad.ops.cross_entropy
from manualgrad import hand_derived_nodes
from manualgrad.ops._apply import ManualOp
from manualgrad.ops.cross_entropy import (
    ManualCrossEntropyFunction,
    ManualCrossEntropyLoss,
    ManualNLLLoss,
    ManualNLLLossFunction,
    cross_entropy,
    nll_loss,
)

REDUCTIONS = ["mean", "sum", "none"]
F64 = tolerances(torch.float64)


def _inputs(shape, kind="index", weighted=False, ignore_index=-100, ignored=0.3,
            dtype=torch.float64, device="cpu", seed=0):  # fmt: skip
    """Logits ``x`` (requires grad), a target and a class weight (or None).

    ``kind``: "index" (a fraction ``ignored`` of the rows set to ``ignore_index``) or
    "probs" (unnormalised probabilities of the input's shape, which, like the weight, then
    require grad: both are differentiable there).
    """
    gen = torch.Generator().manual_seed(seed)
    x = (2 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(device, dtype)
    n_classes = shape[0] if len(shape) == 1 else shape[1]
    if kind == "probs":
        target = torch.rand(shape, generator=gen, dtype=torch.float64).to(device, dtype)
        target.requires_grad_()
    else:
        rows = () if len(shape) == 1 else (shape[0], *shape[2:])
        target = torch.randint(n_classes, rows, generator=gen)
        target[torch.rand(rows, generator=gen) < ignored] = ignore_index
        target = target.to(device)
    weight = None
    if weighted:
        weight = (torch.rand(n_classes, generator=gen, dtype=torch.float64) + 0.5).to(device, dtype)
        weight.requires_grad_(kind == "probs")
    return x.requires_grad_(), target, weight


def _ce(**kwargs):
    """(manual, native) cross_entropy with these keyword arguments."""
    return (
        lambda x, t, w: cross_entropy(x, t, w, **kwargs),
        lambda x, t, w: F.cross_entropy(x, t, w, **kwargs),
    )


def _nll(**kwargs):
    return (
        lambda x, t, w: nll_loss(x, t, w, **kwargs),
        lambda x, t, w: F.nll_loss(x, t, w, **kwargs),
    )


def assert_bitwise(got, expected):
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)


# (input shape, target kind, weighted, ignore_index, label_smoothing)
CE_CASES = [
    ((4, 5), "index", False, -100, 0.0),
    ((4, 5), "index", True, -100, 0.0),
    ((4, 5), "index", True, 2, 0.25),  # weights + ignore_index + smoothing together
    ((5,), "index", True, -100, 0.1),  # unbatched: target ()
    ((3, 4, 2), "index", True, -100, 0.3),  # K = 1
    ((2, 3, 2, 2), "index", False, 1, 0.2),  # K = 2: native's nll_loss2d path
    ((2, 3, 1, 2, 2), "index", True, -100, 0.0),  # K = 3
    ((4, 5), "probs", False, -100, 0.0),
    ((4, 5), "probs", True, -100, 0.4),
    ((5,), "probs", True, -100, 0.0),
    ((2, 3, 2, 2), "probs", True, -100, 0.15),
]
NLL_CASES = [((4, 5), False, -100), ((4, 5), True, 2), ((5,), True, -100), ((2, 3, 2), True, 1),
             ((2, 3, 2, 2), True, -100), ((2, 3, 1, 2, 2), False, 0)]  # fmt: skip


# ---- native parity -----------------------------------------------------------------------


@pytest.mark.parametrize("case", CE_CASES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_matches_native(case, reduction, device):
    shape, kind, weighted, ignore_index, smoothing = case
    x, t, w = _inputs(shape, kind, weighted, ignore_index, device=device)
    kwargs = dict(reduction=reduction, ignore_index=ignore_index, label_smoothing=smoothing)
    out, out_n = compare_with_native(*_ce(**kwargs), x, t, w)
    if smoothing == 0.0 or kind == "probs":
        assert_bitwise(out, out_n)  # native's own kernels and formula, to the bit
    assert hand_derived_nodes(out) == {"ManualCrossEntropyFunction": 1}
    assert_hand_derived_only(out)


@pytest.mark.parametrize("case", NLL_CASES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss_matches_native(case, reduction, device):
    shape, weighted, ignore_index = case
    x, t, w = _inputs(shape, "index", weighted, ignore_index, device=device)
    logp = torch.log_softmax(x.detach(), 0 if len(shape) == 1 else 1).requires_grad_()
    out, out_n = compare_with_native(
        *_nll(reduction=reduction, ignore_index=ignore_index), logp, t, w
    )
    assert_bitwise(out, out_n)
    assert hand_derived_nodes(out) == {"ManualNLLLossFunction": 1}
    assert_hand_derived_only(out)


@settings(max_examples=60, derandomize=True, database=None, deadline=None)
@given(
    batch=st.integers(0, 3),
    classes=st.integers(1, 4),
    spatial=st.lists(st.integers(0, 2), max_size=3),
    unbatched=st.booleans(),
    kind=st.sampled_from(["index", "probs"]),
    weighted=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
    ignore=st.sampled_from(["default", "a class", "unused"]),
    smoothing=st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_random_cases_match_native(
    batch, classes, spatial, unbatched, kind, weighted, reduction, ignore, smoothing, seed
):
    """float64, every combination hypothesis finds: empty batches and spatial sizes, one
    class, all rows ignored, smoothing 0 to 1, unnormalised probability targets."""
    shape = (classes,) if unbatched else (batch, classes, *spatial)
    ignore_index = seed % classes if kind == "index" and ignore == "a class" else -100
    ignored = 0.0 if ignore == "unused" else 0.4
    x, t, w = _inputs(shape, kind, weighted, ignore_index, ignored, seed=seed)
    kwargs = dict(reduction=reduction, ignore_index=ignore_index)
    compare_with_native(*_ce(label_smoothing=smoothing, **kwargs), x, t, w)
    if kind == "index":
        compare_with_native(*_nll(**kwargs), x, t, w)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_smoothing_is_natives_formula(weighted, smoothing):
    """``(1 - e) nll + (e / C) smooth``, each 'mean' divided by the same total weight of the
    rows kept (native's convention), checked against the formula spelled out here."""
    x, t, w = _inputs((6, 4), "index", weighted, ignored=0.0, seed=3)
    t[:2] = 1  # ignore_index=1: two rows out
    logp = torch.log_softmax(x.detach(), 1)
    ww = torch.ones(4, dtype=torch.float64) if w is None else w
    keep = t != 1
    smooth = -(logp * ww)[keep].sum()
    nll = -(ww[t] * logp.gather(1, t[:, None])[:, 0])[keep].sum()
    expected = ((1 - smoothing) * nll + smoothing / 4 * smooth) / ww[t][keep].sum()
    got = cross_entropy(x, t, w, ignore_index=1, label_smoothing=smoothing)
    torch.testing.assert_close(got, expected, **F64)


@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_probability_targets_and_their_gradients(kind, smoothing):
    """One-hot probabilities equal class indices (unweighted: the weighted means differ by
    design, native's too), and dL/dq = -(1 - e) w log p / R for 'mean'."""
    x, t, w = _inputs((5, 4), "index", ignored=0.0, seed=4)
    onehot = F.one_hot(t, 4).double().requires_grad_()
    got = cross_entropy(x, onehot, label_smoothing=smoothing)
    torch.testing.assert_close(got, cross_entropy(x, t, label_smoothing=smoothing), **F64)
    _, _, w = _inputs((5, 4), "probs", weighted=True, seed=4)
    (gq,) = torch.autograd.grad(cross_entropy(x, onehot, w, label_smoothing=smoothing), onehot)
    expected = -(1 - smoothing) * w.detach() * torch.log_softmax(x.detach(), 1) / 5
    torch.testing.assert_close(gq, expected, **F64)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize(
    ("fn", "smoothing"), [("cross_entropy", 0.0), ("cross_entropy", 0.2), ("nll_loss", 0.0)]
)
def test_mean_with_every_row_ignored_is_nan_with_zero_gradient(weighted, smoothing, fn):
    x, _, w = _inputs((3, 4), weighted=weighted)
    t = torch.full((3,), -100)
    kwargs = {} if fn == "nll_loss" else {"label_smoothing": smoothing}
    pair = _nll(**kwargs) if fn == "nll_loss" else _ce(**kwargs)
    out, _ = compare_with_native(*pair, x, t, w)
    assert out.isnan()
    (g,) = torch.autograd.grad(pair[0](x, t, w), x)
    assert torch.equal(g, torch.zeros_like(x))


def test_empty_batch_like_native():
    for kind in ("index", "probs"):
        for reduction in REDUCTIONS:
            x, t, w = _inputs((0, 3), kind, weighted=True)
            out, _ = compare_with_native(*_ce(reduction=reduction), x, t, w)
            assert out.isnan() if reduction == "mean" else out.numel() == 0 or out == 0


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [("index", dict(label_smoothing=0.2, ignore_index=1)), ("probs", dict(label_smoothing=0.1))],
)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_double_backward_matches_native(kind, kwargs, reduction):
    """Gradient penalty ``L + |dL/dX|^2`` in one backward: the Function's backward receives
    a gradient for its log p output too, and must add the log-softmax backward."""

    def penalized(fn):
        def loss(x, t, w):
            out = fn(x, t, w, reduction=reduction, **kwargs).sum()
            (gx,) = torch.autograd.grad(out, x, create_graph=True)
            return out + gx.square().sum()

        return loss

    x, t, w = _inputs((4, 3, 2), kind, weighted=True, ignore_index=1, seed=5)
    compare_with_native(penalized(cross_entropy), penalized(F.cross_entropy), x, t, w)


GRADCHECK_CASES = [
    ("ce", (3, 4), "index", True, 1, 0.2, "mean"),
    ("ce", (2, 3, 2), "index", True, -100, 0.0, "none"),
    ("ce", (4,), "index", False, -100, 0.3, "sum"),
    ("ce", (3, 4), "probs", True, -100, 0.2, "mean"),
    ("ce", (2, 3, 2), "probs", False, -100, 0.0, "none"),
    ("nll", (3, 4), "index", True, 1, 0.0, "mean"),
    ("nll", (2, 3, 2), "index", False, -100, 0.0, "none"),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=str)
def test_gradcheck_gradgradcheck_forward_ad(case, device):
    op, shape, kind, weighted, ignore_index, smoothing, reduction = case
    x, t, w = _inputs(shape, kind, weighted, ignore_index, ignored=0.0, device=device, seed=6)
    kwargs = dict(reduction=reduction, ignore_index=ignore_index)
    if op == "ce":
        fn = _ce(label_smoothing=smoothing, **kwargs)[0]
    else:
        fn = _nll(**kwargs)[0]
    checks = dict(check_forward_ad=True, check_batched_grad=True, check_batched_forward_grad=True)
    assert gradcheck(fn, (x, t, w), **checks)
    assert gradgradcheck(fn, (x, t, w))


def test_uint8_targets_and_ignore_index_255():
    x, t, w = _inputs((5, 4), weighted=True, ignored=0.0)
    t8 = t.to(torch.uint8)
    t8[1] = 255
    compare_with_native(*_ce(ignore_index=255), x, t8, w)
    compare_with_native(*_nll(ignore_index=255), x, t8, w)
    # Weighted 'mean' with smoothing: native crashes on uint8 targets ("gather(): Expected
    # dtype int32/int64 for index", its weight.gather); ours equals native on int64 targets.
    manual, native = _ce(ignore_index=255, label_smoothing=0.2)
    with pytest.raises(RuntimeError, match="gather"):
        native(x, t8, w)
    compare_with_native(lambda x, t, w: manual(x, t8, w), native, x, t8.long(), w)
    with pytest.raises(IndexError):
        F.cross_entropy(x, t8, ignore_index=-1)  # 255 is a class then, out of range
    with pytest.raises(IndexError, match="out of bounds"):
        cross_entropy(x, t8, ignore_index=-1)


def test_strided_inputs_like_native():
    """Channels-last logits (the class dim strided), a transposed target, an expanded weight."""
    base = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    x = base.permute(0, 3, 1, 2).detach().requires_grad_()  # (2, 5, 3, 4), classes strided
    t = torch.randint(5, (2, 4, 3)).transpose(1, 2)  # (2, 3, 4)
    w = torch.rand(1, dtype=torch.float64).expand(5)
    for kwargs in (dict(label_smoothing=0.1), dict(reduction="none")):
        compare_with_native(*_ce(**kwargs), x, t, w)
    q = torch.rand(2, 4, 3, 5, dtype=torch.float64).permute(0, 3, 2, 1).requires_grad_()
    compare_with_native(*_ce(), x, q, None)


@pytest.mark.parametrize(
    ("input_dtype", "target_dtype", "weight_dtype"),
    [
        (torch.float32, torch.float64, None),
        (torch.bfloat16, torch.float32, torch.float32),
        (torch.float32, torch.float32, torch.float64),
        (torch.float64, torch.float16, torch.float32),
    ],
    ids=str,
)
def test_probability_targets_promote_like_native(input_dtype, target_dtype, weight_dtype):
    """Native computes log p in the input's dtype and promotes in ``log p * q * w``; each
    gradient comes back in its own tensor's dtype."""
    x, t, w = _inputs((4, 3), "probs", weighted=True)
    x = x.detach().to(input_dtype).requires_grad_()
    t = t.detach().to(target_dtype).requires_grad_()
    w = None if weight_dtype is None else w.detach().to(weight_dtype).requires_grad_()
    low = {input_dtype, target_dtype} & {torch.bfloat16, torch.float16}
    tol = tolerances(torch.bfloat16) if low else tolerances(torch.float32)
    for smoothing in (0.0, 0.2):
        out, out_n = compare_with_native(*_ce(label_smoothing=smoothing), x, t, w, tol=tol)
        assert out.dtype == out_n.dtype


def test_weight_is_not_differentiable_with_class_indices_like_native():
    x, t, _ = _inputs((4, 3))
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    for manual, native in (_ce(), _ce(label_smoothing=0.1), _nll()):
        with pytest.raises(RuntimeError):
            native(x, t, w)
        with pytest.raises(RuntimeError, match="weight is not differentiable"):
            manual(x, t, w)
        with torch.no_grad():  # without a graph, native takes it, and so do we
            torch.testing.assert_close(manual(x, t, w), native(x, t, w), **F64)


def test_no_graph_without_grad():
    x, t, w = _inputs((4, 3), weighted=True)
    for out in (cross_entropy(x.detach(), t, w), nll_loss(x.detach(), t, w)):
        assert not out.requires_grad and out.grad_fn is None


# ---- PyTorch's own samples ---------------------------------------------------------------

OPINFO = {"nn.functional.nll_loss": nll_loss, "nn.functional.cross_entropy": cross_entropy}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.testing._internal's imports
@pytest.mark.parametrize("name", OPINFO)
def test_opinfo_samples_match_native(name, device):
    from torch.testing._internal.common_methods_invocations import op_db

    (info,) = [o for o in op_db if o.name == name]
    count = 0
    for sample in info.sample_inputs(device, torch.float64, requires_grad=True):
        count += compare_sample_with_native(OPINFO[name], info.op, sample)
    assert count >= 20


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(
    ("manual_cls", "native_cls"),
    [(ManualCrossEntropyLoss, nn.CrossEntropyLoss), (ManualNLLLoss, nn.NLLLoss)],
    ids=["CrossEntropyLoss", "NLLLoss"],
)
def test_moduleinfo_samples_match_native(manual_cls, native_cls, device):
    for sample, native, manual in module_info_pairs(native_cls, manual_cls, device, at_least=20):
        out, _ = compare_with_native(manual, native, *sample.forward_input.args)
        assert_hand_derived_only(out)


# ---- what they keep for backward ---------------------------------------------------------


def _saved_bytes(fn, *inputs) -> int:
    """Bytes of the distinct storages the graph keeps (a tensor saved twice counts once)."""
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs)
    return sum(storages.values())


SAVE_CASES = [
    ("ce", "index", False, dict()),
    ("ce", "index", True, dict()),
    ("ce", "index", True, dict(label_smoothing=0.1, reduction="sum")),
    ("ce", "index", False, dict(reduction="none")),
    ("ce", "probs", False, dict()),
    ("ce", "probs", True, dict(label_smoothing=0.1)),
    ("nll", "index", True, dict()),
    ("nll", "index", False, dict(reduction="none")),
]


@pytest.mark.parametrize(
    ("case", "needs"),
    [
        (case, needs)
        for case in SAVE_CASES
        for needs in ("input", "target", "weight", "all")
        if needs in ("input", "all") or (case[1] == "probs" and (needs == "target" or case[2]))
    ],
    ids=str,
)
def test_saves_no_more_than_native(case, needs):
    op, kind, weighted, kwargs = case
    x, t, w = _inputs((16, 8, 3), kind, weighted)
    x.requires_grad_(needs in ("input", "all"))
    if kind == "probs":
        t.requires_grad_(needs in ("target", "all"))
        if w is not None:
            w.requires_grad_(needs in ("weight", "all"))
    manual, native = _nll(**kwargs) if op == "nll" else _ce(**kwargs)
    got, expected = _saved_bytes(manual, x, t, w), _saved_bytes(native, x, t, w)
    if kind == "probs" and needs == "weight" and w is not None:
        # The one exception: dL/dw alone needs q' log p. Native keeps that product; we keep
        # log p and q (an input) rather than save a forward intermediate (issue 104040).
        assert got == expected + t.numel() * t.element_size()
        return
    assert got <= expected
    if op == "nll":  # native keeps the input too, of which the backward needs the shape only
        assert got < expected - x.numel() * x.element_size() // 2


# ---- torch.func, forward-mode AD, vmap ---------------------------------------------------


@pytest.mark.parametrize("kind", ["index", "probs"])
def test_forward_ad_and_func_transforms_match_native(kind, device):
    x, t, w = _inputs((3, 4), kind, weighted=True, ignore_index=1, device=device, seed=7)
    x, t = x.detach(), t.detach()
    w = w.detach()
    kwargs = dict(label_smoothing=0.2, **({"ignore_index": 1} if kind == "index" else {}))
    manual, native = (
        lambda x, t, f=f: f(x, t, w, **kwargs) for f in (cross_entropy, F.cross_entropy)
    )
    tangents = [torch.randn_like(x), torch.randn_like(t) if kind == "probs" else None]
    results = []
    for fn in (manual, native):
        with fwAD.dual_level():
            duals = [
                fwAD.make_dual(a, d) if d is not None else a
                for a, d in zip((x, t), tangents, strict=True)
            ]
            results.append(fwAD.unpack_dual(fn(*duals)).tangent)
    torch.testing.assert_close(*results, **F64)
    argnums = (0, 1) if kind == "probs" else 0
    for transform in (grad, hessian):
        got, expected = (transform(f, argnums=argnums)(x, t) for f in (manual, native))
        torch.testing.assert_close(got, expected, **F64)
    for transform in (jacrev, jacfwd):
        got, expected = (
            transform(f, argnums=argnums)(x, t)
            for f in (
                lambda x, t: cross_entropy(x, t, w, reduction="none", **kwargs),
                lambda x, t: F.cross_entropy(x, t, w, reduction="none", **kwargs),
            )
        )
        torch.testing.assert_close(got, expected, **F64)
    # nll_loss is linear in its input: hessian zero, jacobian a scatter of -w
    logp = torch.log_softmax(x, 1)
    if kind == "index":
        for transform in (jacrev, jacfwd, hessian):
            got, expected = (
                transform(lambda z, f=f: f(z, t, w, ignore_index=1))(logp)
                for f in (nll_loss, F.nll_loss)
            )
            torch.testing.assert_close(got, expected, **F64)


def test_per_sample_gradients_with_vmap_grad(device):
    """Per-sample gradients of a linear classifier: vmap(grad) over samples, against a
    plain loop of native autograd."""
    gen = torch.Generator().manual_seed(8)
    xs = torch.randn(6, 5, generator=gen, dtype=torch.float64).to(device)
    layer = torch.randn(4, 5, generator=gen, dtype=torch.float64).to(device)
    ys = torch.tensor([0, 3, 1, 1, 2, 0], device=device)
    qs = torch.rand(6, 4, generator=gen, dtype=torch.float64).to(device)
    w = torch.rand(4, dtype=torch.float64, device=device) + 0.5
    native_layer = layer.clone().requires_grad_()
    for targets, kwargs in [(ys, dict(label_smoothing=0.1)), (qs, dict(label_smoothing=0.2))]:

        def loss(layer, x, y, f, k=kwargs):
            return f((x @ layer.T)[None], y[None], w, **k)

        got = vmap(grad(loss), in_dims=(None, 0, 0, None))(layer, xs, targets, cross_entropy)
        expected = torch.stack(
            [
                torch.autograd.grad(loss(native_layer, x, y, F.cross_entropy), native_layer)[0]
                for x, y in zip(xs, targets, strict=True)
            ]
        )
        torch.testing.assert_close(got, expected, **F64)
        got = vmap(lambda x, y: nll_loss(x, y, w, reduction="none"))(xs[:, :4], ys)
        torch.testing.assert_close(got, F.nll_loss(xs[:, :4], ys, w, reduction="none"), **F64)


# ---- the hand-derived rule is the one that ran: a deliberately wrong twin ----------------


@pytest.fixture
def wrong(monkeypatch):
    """Route both ops through twins whose gradients and tangents are 3x the true ones."""
    ops = manualgrad.ops.cross_entropy
    monkeypatch.setattr(ops, "_nll", ManualOp(wrong_twin(ManualNLLLossFunction)))
    monkeypatch.setattr(ops, "_cross_entropy", ManualOp(wrong_twin(ManualCrossEntropyFunction)))
    torch._dynamo.reset()
    yield 3.0
    torch._dynamo.reset()


def _all(x, t, q, w, ce=cross_entropy, nll=nll_loss):
    """Every kind in one graph: class indices (weights, ignore_index, smoothing), class
    probabilities, nll. With the wrong twins, every gradient is exactly 3x native's."""
    return (
        ce(x, t, w, ignore_index=1, label_smoothing=0.1)
        + ce(x, q, w, label_smoothing=0.2, reduction="sum")
        + nll(x, t, w, reduction="none").sum()
    )


def _all_native(x, t, q, w):
    return _all(x, t, q, w, F.cross_entropy, F.nll_loss)


def _grads_of(fn, x, t, q, w):
    x, q = (a.detach().clone().requires_grad_() for a in (x, q))
    fn(x, t, q, w).backward()  # not autograd.grad: reentrant checkpointing refuses that
    return x.grad, q.grad


def _compile_inputs(device):
    x, t, w = _inputs((4, 3), weighted=True, ignored=0.0, dtype=torch.float32, device=device)
    return x, t, torch.rand(4, 3, device=device), w.detach()


def test_compiled_fullgraph_matches_native(device):
    inputs = _compile_inputs(device)
    torch._dynamo.reset()
    got = _grads_of(torch.compile(_all, fullgraph=True), *inputs)
    torch._dynamo.reset()
    for g, expected in zip(got, _grads_of(_all_native, *inputs), strict=True):
        torch.testing.assert_close(g, expected, **tolerances(torch.float32))


def test_compiled_gradient_is_hand_derived(wrong, device):
    inputs = _compile_inputs(device)
    got = _grads_of(torch.compile(_all, fullgraph=True), *inputs)
    for g, expected in zip(got, _grads_of(_all_native, *inputs), strict=True):
        torch.testing.assert_close(g, wrong * expected, **tolerances(torch.float32))


def test_wrong_twin_shows_in_eager_jvp_func_and_checkpoint(wrong):
    """The same known error through every path: eager backward, forward AD, torch.func and
    activation checkpointing (both flavours) all run the hand-derived rules."""
    x, t, q, w = (a.double() if a.is_floating_point() else a for a in _compile_inputs("cpu"))
    expected = _grads_of(_all_native, x, t, q, w)
    for fn in [_all] + [
        lambda *a, r=r: checkpoint(_all, *a, use_reentrant=r) for r in (False, True)
    ]:
        for g, e in zip(_grads_of(fn, x, t, q, w), expected, strict=True):
            torch.testing.assert_close(g, wrong * e)
    got = grad(_all, argnums=(0, 2))(x.detach(), t, q, w)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, wrong * e)
    tangent = torch.randn_like(x)
    results = []
    for fn in (_all, _all_native):
        with fwAD.dual_level():
            out = fn(fwAD.make_dual(x.detach(), tangent), t, q, w)
            results.append(fwAD.unpack_dual(out).tangent)
    torch.testing.assert_close(results[0], wrong * results[1])


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpoint_gives_native_gradients(use_reentrant, device):
    x, t, q, w = _compile_inputs(device)
    got = _grads_of(lambda *a: checkpoint(_all, *a, use_reentrant=use_reentrant), x, t, q, w)
    for g, expected in zip(got, _grads_of(_all_native, x, t, q, w), strict=True):
        torch.testing.assert_close(g, expected, **tolerances(torch.float32))


# ---- autocast: the losses run in float32, as native --------------------------------------


@pytest.mark.parametrize(("device", "autocast"), AUTOCAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("op", ["ce-index", "ce-probs", "nll"])
@pytest.mark.parametrize("backward_inside", [False, True], ids=["backward-after", "inside"])
def test_autocast_matches_native(device, autocast, dtype, op, backward_inside):
    kind = "probs" if op == "ce-probs" else "index"
    x, t, w = _inputs((4, 3, 2), kind, True, ignore_index=1, dtype=dtype, device=device)
    fn = {"ce-index": _ce(label_smoothing=0.1, ignore_index=1), "ce-probs": _ce(),
          "nll": _nll(ignore_index=1)}[op]  # fmt: skip
    results = []
    for f in fn:
        inputs = [a.detach().requires_grad_(a.requires_grad) for a in (x, t, w)]
        with torch.autocast(device, dtype=autocast):
            out = f(*inputs)
            if backward_inside:
                out.backward()
        if not backward_inside:
            out.backward()
        results.append((out, [a.grad for a in inputs if a.requires_grad]))
    (out, grads), (out_n, grads_n) = results
    assert out.dtype == out_n.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = tolerances(torch.bfloat16 if dtype == torch.bfloat16 else torch.float32)
    torch.testing.assert_close(out, out_n, **tol)
    for g, g_n in zip(grads, grads_n, strict=True):
        assert g.dtype == g_n.dtype == dtype
        torch.testing.assert_close(g, g_n, **tol)


# ---- API: signatures, modules, legacy arguments, label smoothing ------------------------


def test_signatures_are_natives():
    for manual, native in [(cross_entropy, F.cross_entropy), (nll_loss, F.nll_loss)]:
        assert inspect.signature(manual, eval_str=True) == inspect.signature(native)


FUNCTION_OF = {
    ManualCrossEntropyLoss: ManualCrossEntropyFunction,
    ManualNLLLoss: ManualNLLLossFunction,
}


def test_modules_are_drop_ins():
    w = torch.rand(5)
    for manual_cls, native_cls, kwargs in [
        (ManualCrossEntropyLoss, nn.CrossEntropyLoss, dict(label_smoothing=0.1, ignore_index=2)),
        (ManualNLLLoss, nn.NLLLoss, dict(ignore_index=2)),
    ]:
        manual, native = (
            manual_cls(w, reduction="sum", **kwargs),
            native_cls(w, reduction="sum", **kwargs),
        )
        assert isinstance(manual, native_cls)
        assert manual.state_dict().keys() == native.state_dict().keys() == {"weight"}
        assert vars(manual).keys() == vars(native).keys()
        assert {k: getattr(manual, k) for k in kwargs} == {k: getattr(native, k) for k in kwargs}
        assert pickle.loads(pickle.dumps(manual)).reduction == "sum"
        x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
        t = torch.tensor([0, 2, 4, 1])
        compare_with_native(manual.double(), native.double(), x, t)
        assert hand_derived_nodes(manual(x, t)).keys() == {FUNCTION_OF[manual_cls].__name__}
        with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated"):
            legacy = manual_cls(size_average=False)
        assert legacy.reduction == "sum"


@pytest.mark.parametrize(
    ("size_average", "reduce", "reduction"),
    [(False, None, "sum"), (None, False, "none"), (True, True, "mean"), (True, None, "mean")],
)
@pytest.mark.parametrize("fn", ["cross_entropy", "nll_loss"])
def test_legacy_size_average_and_reduce_like_native(size_average, reduce, reduction, fn):
    manual, native = {"cross_entropy": (cross_entropy, F.cross_entropy),
                      "nll_loss": (nll_loss, F.nll_loss)}[fn]  # fmt: skip
    x, t, _ = _inputs((4, 3))
    legacy = dict(size_average=size_average, reduce=reduce, reduction="ignored")
    with pytest.warns(UserWarning) as caught_n:
        expected = native(x, t, **legacy)
    with pytest.warns(UserWarning) as caught:
        got = manual(x, t, **legacy)
    assert str(caught[0].message) == str(caught_n[0].message)
    assert f"reduction='{reduction}'" in str(caught[0].message)
    assert caught[0].filename == __file__  # points at the caller's line
    torch.testing.assert_close(got, expected, **F64)
    with pytest.warns(UserWarning, match="elementwise_mean") as caught:
        got = manual(x, t, reduction="elementwise_mean")
    torch.testing.assert_close(got, manual(x, t), **F64)


def test_label_smoothing_values_like_native():
    """Native smooths only for a value above 0 (negative and nan mean none) and refuses
    one above 1; a 0-dim tensor or a numpy float is taken as a float."""
    x, t, _ = _inputs((4, 3), ignored=0.0)
    q = torch.rand(4, 3, dtype=torch.float64)
    for target in (t, q):
        for value in (-0.5, float("nan"), 1.0, 1, torch.tensor(0.3), np.float64(0.3)):
            expected = F.cross_entropy(x, target, label_smoothing=value)
            torch.testing.assert_close(cross_entropy(x, target, label_smoothing=value), expected)
        for value in (1.5, math.inf):
            with pytest.raises(RuntimeError):
                F.cross_entropy(x, target, label_smoothing=value)
            with pytest.raises(RuntimeError, match="label_smoothing must be between 0.0 and 1.0"):
                cross_entropy(x, target, label_smoothing=value)


# ---- bad input: the native exception type, a message that names the problem -------------

X, T = torch.randn(3, 5), torch.tensor([1, 0, 4])
BAD = [
    # (which ops, args, kwargs, match)
    ("both", (X, torch.tensor([1, 0, 5])), {}, "Target 5 is out of bounds"),
    ("both", (X, torch.tensor([1, 0, -1])), {}, "Target -1 is out of bounds"),
    ("both", (X, T.int()), {}, "target dtype to be Long or Byte.*torch.int32"),
    ("both", (X, T.float()), {}, "target dtype to be Long or Byte.*torch.float32"),
    ("both", (X, T[:2]), {}, r"input batch_size \(3\) to match target batch_size \(2\)"),
    ("both", (X, torch.zeros(3, 2, dtype=torch.long)), {}, "multi-target not supported"),
    ("both", (torch.randn(2, 3, 4), torch.zeros(2, 5, dtype=torch.long)), {}, "target size"),
    ("both", (torch.randn(2, 3, 4, 5), torch.zeros(2, 4, 6, dtype=torch.long)), {}, "size"),
    ("both", (torch.randn(5), torch.tensor([1, 2])), {}, "1D target must have size 1"),
    ("both", (X, T), dict(weight=torch.ones(4)), "weight.*all 5 classes.*shape: \\[4\\]"),
    ("both", (X, T), dict(weight=torch.ones(5, dtype=torch.float64)), "weight.*float64"),
    ("both", (X, T), dict(reduction="avg"), "avg is not a valid value for reduction"),
    ("both", (X, T), dict(reduction=None), "None is not a valid value for reduction"),
    ("both", (X.long(), T), {}, "floating-point input.*int64"),
    ("both", (X, T.to("meta")), {}, "device"),
    ("both", (X, T), dict(weight=torch.ones(5, device="meta")), "device"),
    ("both", (X, T), dict(ignore_index=1.0), "'ignore_index' must be int, not float"),
    ("both", (X, T), dict(ignore_index=True), "'ignore_index' must be int, not bool"),
    ("both", (X, [1, 0, 4]), {}, "'target' must be Tensor, not list"),
    ("both", (X, T), dict(weight=[1.0] * 5), "'weight' must be Tensor, not list"),
    ("nll", (torch.tensor(1.0), torch.tensor(0)), {}, "1 or more dimensions"),
    ("ce", (torch.tensor(1.0), torch.tensor([0])), {}, "class dimension"),
    ("ce", (torch.tensor(1.0), torch.tensor(0.5)), {}, "class dimension"),
    ("ce", (X, torch.zeros(3, 5, dtype=torch.long)), {}, "floating point type.*int64"),
    ("ce", (X, torch.rand(3, 5)), dict(ignore_index=0), "ignore_index is not supported"),
    ("ce", (X, torch.rand(3, 5)), dict(weight=torch.ones(4)), "weight.*all 5 classes"),
    ("ce", (X, T), dict(label_smoothing=1.5), "label_smoothing must be between"),
    ("ce", (X, torch.rand(3, 5)), dict(label_smoothing=2.0), "label_smoothing must be between"),
    ("ce", (X, T), dict(label_smoothing="0.1"), "'label_smoothing' must be float, not str"),
]


@pytest.mark.parametrize(("which", "args", "kwargs", "match"), BAD, ids=lambda v: str(v)[:40])
def test_bad_input_raises_natives_exception_type(which, args, kwargs, match):
    pairs = {"ce": [(cross_entropy, F.cross_entropy)], "nll": [(nll_loss, F.nll_loss)]}
    pairs["both"] = pairs["ce"] + pairs["nll"]
    for manual, native in pairs[which]:
        with pytest.raises(Exception) as native_error:
            native(*args, **kwargs)
        with pytest.raises(native_error.type, match=match):
            manual(*args, **kwargs)
