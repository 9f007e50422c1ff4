"""ManualEmbedding / functional.embedding against native nn.Embedding / F.embedding."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from conftest import DEVICES, assert_hand_derived_only, compare_with_native, tolerances, wrong_twin
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, hessian, jacfwd, jacrev, vmap
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

import manualgrad.ops.embedding
from manualgrad import hand_derived_nodes
from manualgrad.ops._apply import ManualOp
from manualgrad.ops.embedding import ManualEmbedding, ManualEmbeddingFunction, embedding

V, D = 6, 3
# plain lookups, padding (a negative one too), counts, and padding with counts
OPTIONS = [
    {},
    {"padding_idx": 1},
    {"padding_idx": -1},
    {"scale_grad_by_freq": True},
    {"padding_idx": 0, "scale_grad_by_freq": True},
]
INDEX_SHAPES = [(), (5,), (2, 4), (2, 1, 3), (0,), (3, 0)]


def _inputs(shape, dtype=torch.float64, device="cpu", index_dtype=torch.int64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(V, D, generator=gen, dtype=dtype).to(device).requires_grad_()
    idx = torch.randint(0, V, shape, generator=gen).to(device, index_dtype)
    if idx.numel() > 2:
        idx.view(-1)[:3] = torch.tensor([1, 1, 0])  # repeats and the padding rows, always
    return idx, weight


def _pair(**options):
    """(manual, native) as functions of (weight, indices), with the options bound."""
    return (
        lambda w, i: embedding(i, w, **options),
        lambda w, i: F.embedding(i, w, **options),
    )


# ---- gradients: numerical checks and native parity --------------------------------------


@pytest.mark.parametrize("shape", INDEX_SHAPES, ids=str)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32], ids=str)
def test_gradcheck_and_gradgradcheck(shape, index_dtype, device):
    idx, weight = _inputs(shape, device=device, index_dtype=index_dtype)
    checks = dict(check_forward_ad=True, check_batched_grad=True, check_batched_forward_grad=True)
    assert gradcheck(lambda w: embedding(idx, w), (weight,), **checks)
    assert gradgradcheck(lambda w: embedding(idx, w), (weight,), check_batched_grad=True)


@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_options_gradgradcheck(options, device):
    """padding_idx and scale_grad_by_freq are not derivatives (the numerical gradient
    differs by design, natively too), but backward stays linear in G: gradgradcheck holds."""
    idx, weight = _inputs((2, 4), device=device)
    assert gradgradcheck(lambda w: embedding(idx, w, **options), (weight,), check_batched_grad=True)


@pytest.mark.parametrize("shape", INDEX_SHAPES, ids=str)
@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_matches_native(shape, options, dtype, device):
    idx, weight = _inputs(shape, dtype, device)
    out, _ = compare_with_native(*_pair(**options), weight, idx)
    assert out.shape == (*shape, D) and out.dtype == dtype


@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_double_backward_and_jvp_match_native(options, device):
    idx, weight = _inputs((2, 4), device=device)
    upstream = torch.randn(2, 4, D, dtype=torch.float64, device=device, requires_grad=True)
    probe, tangent = torch.randn_like(weight), torch.randn_like(weight)
    results = []
    for fn in _pair(**options):
        (gw,) = torch.autograd.grad(fn(weight, idx), weight, upstream, create_graph=True)
        (ggo,) = torch.autograd.grad((gw * probe).sum(), upstream)  # d(dL/dW . v)/dG
        with fwAD.dual_level():
            out_t = fwAD.unpack_dual(fn(fwAD.make_dual(weight, tangent), idx)).tangent
        results.append((gw, ggo, out_t))
    (gw, ggo, out_t), (gw_n, ggo_n, out_t_n) = results
    torch.testing.assert_close(gw, gw_n, **tolerances(torch.float64))
    torch.testing.assert_close(out_t, out_t_n, **tolerances(torch.float64))
    # Double backward is the adjoint of the (linear) backward: probe[idx[n]] / count, 0 at
    # the pad. Native's ignores scale_grad_by_freq (it fails gradgradcheck there), so with
    # counts the reference is this formula; without, native.
    flat = idx.reshape(-1)
    counts = torch.bincount(flat, minlength=V)[flat] if options.get("scale_grad_by_freq") else 1
    pad = options["padding_idx"] % V if "padding_idx" in options else -1
    exact = (probe[flat] / torch.as_tensor(counts).unsqueeze(-1)) * (flat != pad).unsqueeze(1)
    torch.testing.assert_close(ggo, exact.reshape(ggo.shape), **tolerances(torch.float64))
    if not options.get("scale_grad_by_freq"):
        torch.testing.assert_close(ggo, ggo_n, **tolerances(torch.float64))


def test_nan_at_padding_positions_does_not_leak():
    idx, weight = _inputs((2, 4))
    upstream = torch.randn(2, 4, D, dtype=torch.float64)
    upstream[idx == 1] = float("nan")
    grads = [
        torch.autograd.grad(fn(weight, idx), weight, upstream)[0] for fn in _pair(padding_idx=1)
    ]
    torch.testing.assert_close(*grads, equal_nan=True)
    assert torch.equal(grads[0][1], torch.zeros(D, dtype=torch.float64))


def test_empty_indices_give_zero_weight_gradient():
    idx, weight = _inputs((0, 2))
    embedding(idx, weight, scale_grad_by_freq=True).sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_backward_is_hand_derived():
    idx, weight = _inputs((2, 4))
    out = embedding(idx, weight, padding_idx=0, scale_grad_by_freq=True)
    assert hand_derived_nodes(out) == {"ManualEmbeddingFunction": 1}
    assert_hand_derived_only(out)


def test_no_gradient_to_a_frozen_weight():
    idx, weight = _inputs((2, 4))
    out = embedding(idx, weight.detach())
    assert not out.requires_grad and out.grad_fn is None


# ---- what it keeps for backward ---------------------------------------------------------


def _saved_bytes(fn, weight, idx) -> int:
    """Bytes of the distinct storages autograd keeps for backward of ``fn(weight, idx)``."""
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(weight.detach().clone().requires_grad_(), idx)
    return sum(storages.values())


@pytest.mark.parametrize(
    "options",
    [{}, {"padding_idx": 0, "scale_grad_by_freq": True}, {"max_norm": 1.0}, {"sparse": True}],
    ids=str,
)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32], ids=str)
def test_saves_only_the_indices(options, index_dtype):
    idx, weight = _inputs((4, 8), index_dtype=index_dtype)
    expanded = idx[:1].expand(5, 8)  # saved as is (one row of storage), or made contiguous
    manual, native = _pair(**options)
    for i in (idx, expanded):
        got, expected = _saved_bytes(manual, weight, i), _saved_bytes(native, weight, i)
        assert got == expected <= i.numel() * i.element_size()  # the weight: never


# ---- max_norm: the looked-up rows renormalised in place, as natively ---------------------


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.5])
def test_max_norm_renormalises_rows_in_place_like_native(norm_type, device):
    idx, weight = _inputs((2, 4), device=device)
    w_m, w_n = (3 * weight.detach()).requires_grad_(), (3 * weight.detach()).requires_grad_()
    expanded = idx[:1].expand(3, 4)
    out_m = embedding(expanded, w_m, max_norm=1.0, norm_type=norm_type)
    out_n = F.embedding(expanded, w_n, max_norm=1.0, norm_type=norm_type)
    assert w_m._version == w_n._version > 0
    torch.testing.assert_close(w_m, w_n, rtol=0, atol=0)  # the same kernel, bit for bit
    torch.testing.assert_close(out_m, out_n, rtol=0, atol=0)
    untouched = [v for v in range(V) if v not in expanded]
    assert torch.equal(w_m[untouched], 3 * weight.detach()[untouched])  # only looked-up rows
    upstream = torch.randn_like(out_n)
    (g_m,), (g_n,) = (torch.autograd.grad(o, w, upstream) for o, w in [(out_m, w_m), (out_n, w_n)])
    torch.testing.assert_close(g_m, g_n, **tolerances(torch.float64))


def test_max_norm_on_a_weight_saved_elsewhere_fails_like_native():
    results = []
    for fn in _pair(max_norm=1.0):
        idx, weight = _inputs((2, 4))
        w = weight * 3  # a non-leaf that `sin` saves for its backward
        loss = w.sin().sum() + fn(w, idx).sum()
        with pytest.raises(RuntimeError, match="modified by an inplace operation") as error:
            loss.backward()
        results.append(type(error.value))
    assert results[0] is results[1]


# ---- sparse=True: native's sparse COO gradient --------------------------------------------


@pytest.mark.parametrize("padding_idx", [None, 1, -1])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32], ids=str)
def test_sparse_gradient_equals_native(padding_idx, index_dtype, device):
    idx, weight = _inputs((2, 4), device=device, index_dtype=index_dtype)
    upstream = torch.randn(2, 4, D, dtype=torch.float64, device=device)
    grads = []
    for fn in _pair(padding_idx=padding_idx, sparse=True):
        (g,) = torch.autograd.grad(fn(weight, idx), weight, upstream)
        grads.append(g)
    got, expected = grads
    assert got.layout == expected.layout == torch.sparse_coo
    assert got.is_coalesced() == expected.is_coalesced()
    assert torch.equal(got._indices(), expected._indices())  # the same entries, same order
    assert torch.equal(got._values(), expected._values())
    torch.testing.assert_close(got.coalesce().to_dense(), expected.coalesce().to_dense())
    dense = torch.autograd.grad(F.embedding(idx, weight, padding_idx), weight, upstream)[0]
    torch.testing.assert_close(got.to_dense(), dense, **tolerances(torch.float64))


def test_sparse_gradient_accumulates_and_handles_all_padding():
    idx, weight = _inputs((2, 4))
    for _ in range(2):  # .grad accumulates sparse + sparse
        embedding(idx, weight, sparse=True).sum().backward()
    native = weight.detach().clone().requires_grad_()
    for _ in range(2):
        F.embedding(idx, native, sparse=True).sum().backward()
    assert weight.grad.layout == native.grad.layout == torch.sparse_coo
    torch.testing.assert_close(weight.grad.to_dense(), native.grad.to_dense())
    pads = torch.zeros(3, dtype=torch.long)
    for fn in _pair(padding_idx=0, sparse=True):
        (g,) = torch.autograd.grad(fn(weight, pads).sum(), weight)
        assert g.layout == torch.sparse_coo and g._nnz() == 0 and g.shape == weight.shape


def test_sparse_with_scale_grad_by_freq_fails_in_backward_like_native():
    idx, weight = _inputs((2, 4))
    for fn in _pair(sparse=True, scale_grad_by_freq=True):
        out = fn(weight, idx)  # forward is fine
        with pytest.raises(RuntimeError, match="scale_grad_by_freq not supported with sparse"):
            out.sum().backward()


# ---- the module is a drop-in for nn.Embedding -----------------------------------------


@pytest.mark.parametrize(
    "options",
    [{}, {"padding_idx": -2, "max_norm": 1.5, "norm_type": 1.0}, {"scale_grad_by_freq": True}],
    ids=str,
)
def test_module_is_a_drop_in(options):
    torch.manual_seed(0)
    manual = ManualEmbedding(V, D, dtype=torch.float64, **options)
    torch.manual_seed(0)
    native = nn.Embedding(V, D, dtype=torch.float64, **options)
    assert isinstance(manual, nn.Embedding)
    assert repr(manual) == repr(native).replace("Embedding", "ManualEmbedding", 1)
    assert manual.padding_idx == native.padding_idx
    assert manual.state_dict().keys() == native.state_dict().keys()
    for key, value in native.state_dict().items():  # same init (the pad row zeroed)
        assert torch.equal(manual.state_dict()[key], value)
    idx, _ = _inputs((3, 5))
    out_m, out_n = manual(idx), native(input=idx)
    torch.testing.assert_close(out_m, out_n)
    torch.testing.assert_close(manual.weight, native.weight)  # max_norm renormalised both
    upstream = torch.randn_like(out_n)
    (g_m,), (g_n,) = (
        torch.autograd.grad(o, m.weight, upstream) for o, m in [(out_m, manual), (out_n, native)]
    )
    torch.testing.assert_close(g_m, g_n)
    assert hand_derived_nodes(out_m) == {"ManualEmbeddingFunction": 1}


def test_from_pretrained_and_sparse_module():
    pretrained = torch.randn(V, D, dtype=torch.float64)
    frozen = ManualEmbedding.from_pretrained(pretrained)
    assert type(frozen) is ManualEmbedding and not frozen.weight.requires_grad
    assert torch.equal(frozen.weight, pretrained)
    table = ManualEmbedding.from_pretrained(pretrained, freeze=False, padding_idx=0, sparse=True)
    native = nn.Embedding.from_pretrained(pretrained, freeze=False, padding_idx=0, sparse=True)
    assert type(table) is ManualEmbedding and table.sparse and table.padding_idx == 0
    idx, _ = _inputs((3, 5))
    table(idx).sum().backward()
    native(idx).sum().backward()
    assert table.weight.grad.layout == native.weight.grad.layout == torch.sparse_coo
    torch.testing.assert_close(table.weight.grad.to_dense(), native.weight.grad.to_dense())
    torch.optim.SGD(table.parameters(), lr=0.1).step()  # an optimizer that takes sparse grads
    torch.optim.SGD(native.parameters(), lr=0.1).step()
    torch.testing.assert_close(table.weight, native.weight)


def test_module_on_meta_device_and_dtype():
    table = ManualEmbedding(V, D, device="meta", dtype=torch.float16)
    assert table.weight.device.type == "meta" and table.weight.dtype == torch.float16
    out = table(torch.zeros(2, 4, dtype=torch.long, device="meta"))
    assert out.shape == (2, 4, D) and out.dtype == torch.float16


# ---- PyTorch's own samples: OpInfo and ModuleInfo ----------------------------------------


def _opinfo():
    from torch.testing._internal.common_methods_invocations import op_db

    return next(op for op in op_db if op.name == "nn.functional.embedding")


def test_opinfo_samples_match_native(device):
    """Every sample (the gradcheck-friendly ones and those PyTorch keeps out of gradcheck:
    padding_idx, max_norm, scale_grad_by_freq, sparse), in float64. op_db calls
    ``op(weight, indices, **kwargs)``: its lambda swaps F.embedding's arguments."""
    op = _opinfo()
    samples = [
        *op.sample_inputs(device, torch.float64, requires_grad=True),
        *op.sample_inputs(device, torch.float64, requires_grad=False),
    ]
    covered = {key for sample in samples for key in sample.kwargs}
    assert covered >= {"padding_idx", "max_norm", "norm_type", "scale_grad_by_freq", "sparse"}
    for sample in samples:
        weight, (idx,), kwargs = sample.input.detach().requires_grad_(), sample.args, sample.kwargs

        def manual(w, i, kwargs=kwargs):
            return embedding(i, w, **kwargs)

        def native(w, i, kwargs=kwargs):
            return op.op(w, i, **kwargs)

        w_m, w_n = (weight.detach().clone().requires_grad_() for _ in range(2))
        out, out_n = manual(w_m, idx), native(w_n, idx)
        assert_hand_derived_only(out)
        torch.testing.assert_close(w_m, w_n, rtol=0, atol=0)  # max_norm renormalised alike
        try:  # samples the native op rejects must fail the same way in ours
            (g_n,) = torch.autograd.grad(out_n.sum(), w_n)
        except Exception as error:
            with pytest.raises(type(error)):
                torch.autograd.grad(out.sum(), w_m)
            continue
        if kwargs.get("sparse"):  # compare_with_native's assert_close wants dense tensors
            (g_m,) = torch.autograd.grad(out.sum(), w_m)
            assert g_m.layout == g_n.layout == torch.sparse_coo
            assert torch.equal(g_m._indices(), g_n._indices())
            torch.testing.assert_close(g_m._values(), g_n._values())
            continue
        compare_with_native(manual, native, weight, idx)


def test_opinfo_error_inputs(device):
    op = _opinfo()
    for error in op.error_inputs(device):
        sample = error.sample_input
        with pytest.raises(error.error_type, match=error.error_regex):
            embedding(sample.args[0], sample.input, **sample.kwargs)


def _moduleinfo():
    from torch.testing._internal.common_modules import module_db

    return next(m for m in module_db if m.module_cls is nn.Embedding)


def test_moduleinfo_samples_match_native(device):
    info = _moduleinfo()
    inputs = info.module_inputs_func(
        info, device=device, dtype=torch.float64, requires_grad=True, training=True
    )
    assert inputs
    for module_input in inputs:
        args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        torch.manual_seed(0)
        native = nn.Embedding(*args, **kwargs, device=device, dtype=torch.float64)
        torch.manual_seed(0)
        manual = ManualEmbedding(*args, **kwargs, device=device, dtype=torch.float64)
        assert torch.equal(manual.weight, native.weight)
        fwd = module_input.forward_input
        out_m, out_n = manual(*fwd.args, **fwd.kwargs), native(*fwd.args, **fwd.kwargs)
        assert out_m.dtype == out_n.dtype
        torch.testing.assert_close(out_m, out_n)
        upstream = torch.randn_like(out_n)
        (g_m,), (g_n,) = (
            torch.autograd.grad(o, [m.weight], upstream)
            for o, m in [(out_m, manual), (out_n, native)]
        )
        torch.testing.assert_close(g_m, g_n, **tolerances(torch.float64))
        assert_hand_derived_only(out_m)


def test_moduleinfo_error_inputs(device):
    from torch.testing._internal.common_modules import ModuleErrorEnum

    info = _moduleinfo()
    errors = info.module_error_inputs_func(
        info, device=device, dtype=torch.float64, requires_grad=True, training=True
    )
    for error in errors:
        ctor, fwd = (
            error.module_error_input.constructor_input,
            error.module_error_input.forward_input,
        )
        with pytest.raises(error.error_type, match=error.error_regex):
            module = ManualEmbedding(*ctor.args, **ctor.kwargs, device=device)
            assert error.error_on == ModuleErrorEnum.FORWARD_ERROR
            module(*fwd.args, **fwd.kwargs)


# ---- bad input: the native exception type, a message that names the problem ----------


BAD_INPUTS = {  # name: (indices, weight shape, the native exception type, message pattern)
    "float": (torch.tensor([1.0]), (V, D), RuntimeError, "'indices' .input.*float32"),
    "int16": (torch.tensor([1], dtype=torch.int16), (V, D), RuntimeError, "Long, Int.*int16"),
    "bool": (torch.tensor([True]), (V, D), RuntimeError, "'indices' .input.*bool"),
    "1-D weight": (torch.tensor([1]), (V,), RuntimeError, r"'weight' must be 2-D.*\(6,\)"),
    "3-D weight": (torch.tensor([1]), (2, V, D), RuntimeError, "'weight' must be 2-D"),
    "too large": (torch.tensor([0, V]), (V, D), IndexError, "index out of range"),
    "negative": (torch.tensor([-1]), (V, D), IndexError, "index out of range"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_like_native(case):
    idx, shape, error, pattern = BAD_INPUTS[case]
    weight = torch.randn(shape, requires_grad=True)
    with pytest.raises(error, match=pattern):
        embedding(idx, weight)
    with pytest.raises(error):
        F.embedding(idx, weight)  # the native type is the same


@pytest.mark.parametrize("padding_idx", [V, -V - 1])
def test_padding_idx_out_of_range(padding_idx):
    for fn in (embedding, F.embedding):
        with pytest.raises(AssertionError, match="Padding_idx must be within num_embeddings"):
            fn(torch.tensor([0]), torch.randn(V, D), padding_idx)
    for cls in (ManualEmbedding, nn.Embedding):
        with pytest.raises(AssertionError, match="Padding_idx must be within num_embeddings"):
            cls(V, D, padding_idx)


def test_integer_weight_looks_up_like_native():
    weight = torch.arange(V * D).reshape(V, D)
    idx = torch.tensor([[1, 5], [0, 1]])
    assert torch.equal(embedding(idx, weight), F.embedding(idx, weight))


# ---- torch.func: vmap over weights and over indices, jacobians ----------------------------


@pytest.mark.parametrize("options", [{}, {"padding_idx": 1, "scale_grad_by_freq": True}], ids=str)
@pytest.mark.parametrize("in_dims", [(0, None), (None, 0), (0, 0)], ids=str)
def test_vmap_and_per_sample_gradients_match_native(options, in_dims, device):
    gen = torch.Generator().manual_seed(3)
    weights = torch.randn(4, V, D, generator=gen, dtype=torch.float64).to(device)
    indices = torch.randint(0, V, (4, 2, 3), generator=gen).to(device)
    indices[:, 0, :2] = 1  # repeats and the padding row in every batch
    args = (
        weights if in_dims[0] == 0 else weights[0],
        indices if in_dims[1] == 0 else indices[0],
    )
    manual, native = _pair(**options)
    torch.testing.assert_close(vmap(manual, in_dims)(*args), vmap(native, in_dims)(*args))
    got = vmap(grad(lambda w, i: manual(w, i).square().sum()), in_dims)(*args)
    expected = vmap(grad(lambda w, i: native(w, i).square().sum()), in_dims)(*args)
    torch.testing.assert_close(got, expected, **tolerances(torch.float64))


@pytest.mark.parametrize("options", [{}, {"padding_idx": 1, "scale_grad_by_freq": True}], ids=str)
def test_jacobians_and_hessian_match_native(options, device):
    idx, weight = _inputs((2, 4), device=device)
    weight = weight.detach()
    manual, native = _pair(**options)
    for transform in (jacrev, jacfwd):
        torch.testing.assert_close(
            transform(lambda w: manual(w, idx))(weight), transform(lambda w: native(w, idx))(weight)
        )
    torch.testing.assert_close(
        hessian(lambda w: manual(w, idx).pow(3).sum())(weight),
        hessian(lambda w: native(w, idx).pow(3).sum())(weight),
    )


def test_transforms_run_the_hand_derived_rule(monkeypatch):
    """Routed through a wrong twin (every gradient and tangent x 3), vmap(grad), jacrev,
    jacfwd, forward AD and checkpointing all move by exactly 3: none fell back to autograd."""
    twin = ManualOp(wrong_twin(ManualEmbeddingFunction))
    monkeypatch.setattr(manualgrad.ops.embedding, "_embedding", twin)
    idx, weight = _inputs((2, 4))
    weight, weights = weight.detach(), torch.randn(3, V, D, dtype=torch.float64)
    indices = torch.randint(0, V, (3, 2, 4))
    manual, native = _pair(padding_idx=1, scale_grad_by_freq=True)

    def run(fn):
        loss = lambda w, i: fn(w, i).square().sum()  # noqa: E731
        tangent = torch.ones_like(weight)
        with fwAD.dual_level():
            dual = fwAD.unpack_dual(fn(fwAD.make_dual(weight, tangent), idx)).tangent
        w = weight.clone().requires_grad_()
        checkpoint(lambda w: loss(w, idx), w, use_reentrant=False).backward()
        return [
            vmap(grad(loss), (0, None))(weights, idx),
            vmap(grad(loss), (None, 0))(weight, indices),
            jacrev(lambda w: fn(w, idx))(weight),
            jacfwd(lambda w: fn(w, idx))(weight),
            dual,
            w.grad,
        ]

    for got, expected in zip(run(manual), run(native), strict=True):
        torch.testing.assert_close(got, 3.0 * expected)


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_vmap_of_sparse_fails_like_native():
    weights = torch.randn(2, V, D)
    idx = torch.tensor([0, 1, 1])
    errors = []
    for fn in _pair(sparse=True):
        with pytest.raises(Exception) as error:
            vmap(grad(lambda w, fn=fn: fn(w, idx).sum()))(weights)
        errors.append(type(error.value))
    assert errors[0] is errors[1]


# ---- autocast, checkpointing, torch.compile ----------------------------------------------

AUTOCAST = [
    pytest.param("cpu", torch.bfloat16, id="cpu-bfloat16"),
    pytest.param("cuda", torch.float16, id="cuda-float16", marks=DEVICES[1].marks),
    pytest.param("cuda", torch.bfloat16, id="cuda-bfloat16", marks=DEVICES[1].marks),
]


@pytest.mark.parametrize(("device", "dtype"), AUTOCAST)
@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("backward_inside", [False, True], ids=["backward-after", "inside"])
def test_autocast_keeps_the_weight_dtype_like_native(device, dtype, weight_dtype, backward_inside):
    """Embedding is on no autocast list: the lookup keeps the weight's dtype, then a
    following linear runs in low precision; gradients equal native's."""
    idx, weight = _inputs((3, 4), weight_dtype, device)
    proj = torch.randn(5, D, dtype=weight_dtype, device=device, requires_grad=True)
    results = []
    for fn in (embedding, F.embedding):
        w = weight.detach().clone().requires_grad_()
        with torch.autocast(device, dtype=dtype):
            out = fn(idx, w, padding_idx=0, scale_grad_by_freq=True)
            loss = F.linear(out, proj).float().square().sum()
            if backward_inside:
                loss.backward()
        if not backward_inside:
            loss.backward()
        results.append((out, w.grad))
    (out_m, grad_m), (out_n, grad_n) = results
    assert out_m.dtype == out_n.dtype == weight_dtype
    assert grad_m.dtype == grad_n.dtype == weight_dtype
    torch.testing.assert_close(out_m, out_n, rtol=0, atol=0)
    torch.testing.assert_close(grad_m, grad_n, **tolerances(dtype))


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpoint_gives_the_same_gradients(use_reentrant, device):
    idx, weight = _inputs((3, 4), device=device)
    grads = []
    for fn in (embedding, F.embedding):
        w = weight.detach().clone().requires_grad_()
        out = checkpoint(
            lambda w, fn=fn: fn(idx, w, padding_idx=1).tanh(), w, use_reentrant=use_reentrant
        )
        out.sum().backward()
        grads.append(w.grad)
    torch.testing.assert_close(*grads, **tolerances(torch.float64))


def _lookup_loss(table, idx):
    return table(idx).square().sum()


@pytest.mark.parametrize("rules", ["hand-derived", "wrong"])
def test_compiled_gradients_match_native_and_are_hand_derived(rules, device, monkeypatch):
    """fullgraph=True with no graph break; routed through a wrong twin (dW x 3) the
    compiled gradient is 3x native's: compile kept the hand-derived backward."""
    if rules == "wrong":
        twin = ManualOp(wrong_twin(ManualEmbeddingFunction))
        monkeypatch.setattr(manualgrad.ops.embedding, "_embedding", twin)
    idx, _ = _inputs((3, 4), torch.float32, device)
    options = {"padding_idx": 0, "scale_grad_by_freq": True, "max_norm": 2.0}
    torch.manual_seed(0)
    native = nn.Embedding(V, D, device=device, **options)
    torch.manual_seed(0)
    manual = ManualEmbedding(V, D, device=device, **options)
    torch._dynamo.reset()
    try:
        explanation = torch._dynamo.explain(_lookup_loss)(manual, idx)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        torch.compile(_lookup_loss, fullgraph=True)(manual, idx).backward()
    finally:
        torch._dynamo.reset()
    _lookup_loss(native, idx).backward()
    torch.testing.assert_close(manual.weight, native.weight)  # renormalised alike
    factor = 3.0 if rules == "wrong" else 1.0
    torch.testing.assert_close(manual.weight.grad, factor * native.weight.grad)


def test_compiled_sparse_gradient_equals_native():
    """Dynamo cannot hold a sparse tensor (fullgraph=True refuses a sparse backward, ours as
    any custom Function's); without fullgraph our op runs eagerly, with native's result."""
    idx, weight = _inputs((2, 4))
    w = weight.detach().clone().requires_grad_()
    torch._dynamo.reset()
    try:
        torch.compile(lambda i, w: embedding(i, w, 1, sparse=True).sum())(idx, w).backward()
    finally:
        torch._dynamo.reset()
    (expected,) = torch.autograd.grad(F.embedding(idx, weight, 1, sparse=True).sum(), weight)
    assert w.grad.layout == expected.layout == torch.sparse_coo
    assert torch.equal(w.grad._indices(), expected._indices())
    torch.testing.assert_close(w.grad._values(), expected._values())
