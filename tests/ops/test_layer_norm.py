"""LayerNorm: the hand-derived Function against native autograd, in every setting the op is
used in (double backward, forward AD, torch.func, compile, autocast, checkpointing), and
PyTorch's own OpInfo / ModuleInfo samples."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from conftest import AUTOCAST, assert_hand_derived_only, compare_with_native, tolerances, wrong_twin
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.autograd.graph import saved_tensors_hooks
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vmap
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from manualgrad import hand_derived_nodes
from manualgrad.ops._apply import ManualOp
from manualgrad.ops.layer_norm import ManualLayerNorm, ManualLayerNormFunction, layer_norm

ln_module = importlib.import_module("manualgrad.ops.layer_norm")
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: a second thread only contends

# (input shape, normalized_shape): one or more normalised dims, no leading dims, D = 1,
# empty batch, empty rows
SHAPES = [
    ((4, 5), (5,)),
    ((2, 3, 4), (3, 4)),
    ((5,), (5,)),
    ((3, 1), (1,)),
    ((0, 3), (3,)),
    ((2, 0), (0,)),
]
AFFINE = ["none", "weight", "weight+bias", "bias"]
WRONG = 3.0  # wrong_twin's factor on every gradient and tangent


def _inputs(x_shape, shape, affine, dtype=torch.float64, device="cpu", param_dtype=None):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(x_shape, generator=gen, dtype=dtype).to(device).requires_grad_()
    params = []
    for name in ("weight", "bias"):
        t = None
        if name in affine.split("+"):
            t = torch.randn(shape, generator=gen, dtype=param_dtype or dtype).to(device)
            t.requires_grad_()
        params.append(t)
    return x, *params


def _wrong_rules(monkeypatch):
    """Route the op through a twin whose gradients and tangents are all 3x too large."""
    twin = ManualOp(wrong_twin(ManualLayerNormFunction, WRONG))
    monkeypatch.setattr(ln_module, "_layer_norm", twin)


@pytest.fixture(params=["hand-derived", "wrong"])
def factor(request) -> float:
    """Run a test with the real rule (factor 1), then with the 3x wrong twin."""
    if request.param == "wrong":
        _wrong_rules(request.getfixturevalue("monkeypatch"))
        return WRONG
    return 1.0


# ---- gradients: first and second order, forward mode ----------------------------------


@pytest.mark.parametrize(("x_shape", "shape"), SHAPES, ids=str)
@pytest.mark.parametrize("affine", AFFINE)
def test_gradcheck_and_gradgradcheck(x_shape, shape, affine, device):
    x, w, b = _inputs(x_shape, shape, affine, device=device)

    def fn(x, w, b):
        return layer_norm(x, shape, w, b)

    checks = dict(check_forward_ad=True, check_batched_grad=True, check_batched_forward_grad=True)
    assert gradcheck(fn, (x, w, b), **checks)
    assert gradgradcheck(fn, (x, w, b), check_batched_grad=True)


def test_forward_over_reverse_gradgradcheck():
    """Forward AD through the backward (as in a Hessian): the backward's ops, and the jvp of
    the mu and r outputs it reads."""
    x, w, b = _inputs((2, 3, 4), (3, 4), "weight+bias")
    fn = lambda x, w, b: layer_norm(x, (3, 4), w, b)  # noqa: E731
    assert gradgradcheck(fn, (x, w, b), check_fwd_over_rev=True)


@pytest.mark.parametrize(("x_shape", "shape"), SHAPES, ids=str)
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_native(x_shape, shape, affine, dtype, device):
    compare_with_native(
        lambda x, w, b: layer_norm(x, shape, w, b, 1e-3),
        lambda x, w, b: F.layer_norm(x, shape, w, b, 1e-3),
        *_inputs(x_shape, shape, affine, dtype, device),
    )


@pytest.mark.parametrize(
    ("dtype", "param_dtype"),
    [
        (torch.bfloat16, torch.bfloat16),
        (torch.float16, torch.float16),
        (torch.bfloat16, torch.float32),  # CPU's mixed dtype: low-precision input, fp32 params
        (torch.float16, torch.float32),
    ],
    ids=str,
)
def test_low_precision_and_mixed_dtypes_match_native(dtype, param_dtype):
    inputs = _inputs((6, 8), (8,), "weight+bias", dtype, param_dtype=param_dtype)
    compare_with_native(
        lambda x, w, b: layer_norm(x, (8,), w, b),
        lambda x, w, b: F.layer_norm(x, (8,), w, b),
        *inputs,
        tol=tolerances(dtype),
    )
    # The backward's own results, before the engine would silently cast them: each in the
    # dtype of its tensor (dw and db accumulated in float32, not in the input's dtype).
    x, w, b = inputs
    out = layer_norm(x, (8,), w, b)
    grads = out.grad_fn.apply(torch.ones_like(out), None, None)
    assert [None if g is None else g.dtype for g in grads] == [
        dtype,
        None,
        param_dtype,
        param_dtype,
        None,
    ]


def test_double_backward_through_mean_and_rstd_matches_native():
    """A gradient penalty: d/dx |dL/dx|^2 reaches the mu and r outputs of the Function, so
    its backward also receives G_mu and G_r (gradgradcheck proves it against finite
    differences, this against native)."""

    def penalized(fn):
        def loss(x, w, b):
            out = (fn(x, (3, 4), w, b) * torch.linspace(-1, 2, 12, dtype=x.dtype).view(3, 4)).sum()
            gx, gw = torch.autograd.grad(out, (x, w), create_graph=True)
            return out + gx.square().sum() + (gx * x).sum() + gw.square().sum()

        return loss

    compare_with_native(
        penalized(layer_norm), penalized(F.layer_norm), *_inputs((2, 3, 4), (3, 4), "weight+bias")
    )


@pytest.mark.parametrize("case", ["inf-nan", "negative-eps"])
def test_nonfinite_like_native(case):
    """An inf or NaN in a row, or var + eps < 0 (OpInfo's eps=-0.5): NaNs where native has
    them, in the output and every gradient."""
    x, w, b = _inputs((4, 5), (5,), "weight+bias")
    x, eps = x.detach().clone(), 1e-5
    if case == "inf-nan":
        x[1, 2], x[2, 0] = float("inf"), float("nan")
    else:
        x[1] *= 0.1  # var + eps < 0 in this row only
        eps = -0.5
    _, native = compare_with_native(
        lambda x, w, b: layer_norm(x, (5,), w, b, eps),
        lambda x, w, b: F.layer_norm(x, (5,), w, b, eps),
        x.requires_grad_(),
        w,
        b,
    )
    assert native.isnan().any() and native[0].isfinite().all()


# ---- what is saved, and which gradients are formed -------------------------------------


def _saved_bytes(fn) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


@pytest.mark.parametrize(
    "needs",
    [(True, True, True), (True, False, False), (False, True, False), (False, False, True)],
    ids=["all", "input", "weight", "bias"],
)
def test_saves_no_more_than_native_and_forms_only_requested_gradients(needs):
    x, w, b = (
        t.detach().requires_grad_(need)
        for t, need in zip(_inputs((16, 32), (32,), "weight+bias"), needs, strict=True)
    )
    manual = _saved_bytes(lambda: layer_norm(x, (32,), w, b))
    native = _saved_bytes(lambda: F.layer_norm(x, (32,), w, b))
    assert manual <= native
    # x, w, mu, r (of 8 bytes) as needed; native also keeps b, and everything always
    expected = {"all": 16 * 32 + 32 + 2 * 16, "input": 16 * 32 + 32 + 2 * 16}
    expected.update(weight=16 * 32 + 2 * 16, bias=0)
    key = {(1, 1, 1): "all", (1, 0, 0): "input", (0, 1, 0): "weight", (0, 0, 1): "bias"}
    assert manual == 8 * expected[key[tuple(map(int, needs))]]
    compare_with_native(
        lambda x, w, b: layer_norm(x, (32,), w, b),
        lambda x, w, b: F.layer_norm(x, (32,), w, b),
        x,
        w,
        b,
    )
    layer_norm(x, (32,), w, b).sum().backward()
    assert [t.grad is not None for t in (x, w, b)] == list(needs)


def test_backward_is_hand_derived():
    out = layer_norm(*_inputs((4, 5), (5,), "weight+bias", torch.float32)[:1], (5,))
    assert hand_derived_nodes(out) == {"ManualLayerNormFunction": 1}
    assert_hand_derived_only(out)


# ---- PyTorch's own samples ---------------------------------------------------------------


def test_opinfo_samples_match_native(device):
    from torch.testing._internal.common_methods_invocations import op_db

    (op,) = [o for o in op_db if o.name == "nn.functional.layer_norm"]
    ran = 0
    for sample in op.sample_inputs(device, torch.float64, requires_grad=True):
        args, kwargs = (sample.input, *sample.args), sample.kwargs
        out, native = compare_with_native(
            lambda *a, kw=kwargs: layer_norm(*a, **kw), lambda *a, kw=kwargs: op.op(*a, **kw), *args
        )
        assert_hand_derived_only(out)
        if native.isfinite().all():  # eps=-0.5 can give NaNs, which gradcheck cannot compare
            tensors = [a for a in args if isinstance(a, torch.Tensor)]

            def fn(*t, a=args, kw=kwargs):
                it = iter(t)
                return layer_norm(
                    *(next(it) if isinstance(x, torch.Tensor) else x for x in a), **kw
                )

            assert gradgradcheck(fn, tensors)
        ran += 1
    assert ran >= 5


def _module_grads(module, x):
    x = x.detach().clone().requires_grad_()
    out = module(x)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype)
    params = list(module.parameters())
    return out, torch.autograd.grad(out, [x, *params], upstream.to(out.device))


def test_moduleinfo_samples_match_native(device):
    from torch.testing._internal.common_modules import module_db

    (info,) = [m for m in module_db if m.module_cls is nn.LayerNorm]
    samples = info.module_inputs_func(
        info, device=device, dtype=torch.float64, requires_grad=True, training=True
    )
    for sample in samples:
        args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
        built = []
        for cls in (ManualLayerNorm, nn.LayerNorm):
            torch.manual_seed(0)
            built.append(cls(*args, **kwargs, device=device, dtype=torch.float64))
        manual, native = built
        assert isinstance(manual, nn.LayerNorm)
        assert manual.state_dict().keys() == native.state_dict().keys()
        for key, value in native.state_dict().items():  # same init
            assert torch.equal(manual.state_dict()[key], value)
        with torch.no_grad():  # away from ones and zeros, so that dw and db are tested
            for p in native.parameters():
                p.normal_()
        manual.load_state_dict(native.state_dict())
        (x,) = sample.forward_input.args
        out_m, grads_m = _module_grads(manual, x)
        out_n, grads_n = _module_grads(native, x)
        torch.testing.assert_close(out_m, out_n, **tolerances(torch.float64))
        assert len(grads_m) == len(grads_n)
        for gm, gn in zip(grads_m, grads_n, strict=True):
            assert gm.dtype == gn.dtype and gm.shape == gn.shape
            torch.testing.assert_close(gm, gn, **tolerances(torch.float64))
        if x.numel():
            assert_hand_derived_only(out_m)


# ---- the module -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"elementwise_affine": False}, {"bias": False}, {"eps": 1e-3}],
    ids=["affine", "no-affine", "no-bias", "eps"],
)
@pytest.mark.parametrize("normalized_shape", [6, (2, 6)], ids=["int", "tuple"])
def test_module_is_a_drop_in(normalized_shape, kwargs):
    manual = ManualLayerNorm(normalized_shape, **kwargs, dtype=torch.float64)
    native = nn.LayerNorm(normalized_shape, **kwargs, dtype=torch.float64)
    assert isinstance(manual, nn.LayerNorm)
    assert repr(manual) == repr(native).replace("LayerNorm", "ManualLayerNorm", 1)
    assert manual.normalized_shape == native.normalized_shape
    with torch.no_grad():
        for p in native.parameters():
            p.normal_()
    manual.load_state_dict(native.state_dict())
    x = torch.randn(3, 2, 6, dtype=torch.float64, requires_grad=True)
    out_m, grads_m = _module_grads(manual, x)
    out_n, grads_n = _module_grads(native, x)
    torch.testing.assert_close(out_m, out_n)
    for gm, gn in zip(grads_m, grads_n, strict=True):
        torch.testing.assert_close(gm, gn)
    assert hand_derived_nodes(out_m) == {"ManualLayerNormFunction": 1}


def test_module_on_meta_device_and_dtype():
    norm = ManualLayerNorm(4, device="meta", dtype=torch.float16)
    assert norm.weight.device.type == "meta" and norm.weight.dtype == torch.float16
    assert norm(torch.empty(3, 4, device="meta", dtype=torch.float16)).shape == (3, 4)


def test_public_api_and_registry():
    import manualgrad
    from manualgrad import functional, registry

    assert {"ManualLayerNorm", "ManualLayerNormFunction"} <= set(manualgrad.__all__)
    assert functional.layer_norm is layer_norm and "layer_norm" in functional.__all__
    assert registry.manual_class(nn.LayerNorm) is ManualLayerNorm


# ---- autocast ---------------------------------------------------------------------------


@pytest.mark.parametrize(("device", "dtype"), AUTOCAST)
@pytest.mark.parametrize(
    "input_dtype", [torch.float32, "low", torch.float64], ids=["fp32", "low", "fp64"]
)
@pytest.mark.parametrize("backward_inside", [False, True], ids=["backward-after", "inside"])
def test_autocast_dtypes_and_gradients_match_native(device, dtype, input_dtype, backward_inside):
    """Native: float32 on CUDA whatever the input (float64 stays); on CPU, on no autocast
    list, the input's own dtype (a low-precision input with fp32 parameters is CPU's
    mixed-dtype kernel). Gradients keep each tensor's dtype."""
    input_dtype = dtype if input_dtype == "low" else input_dtype
    param_dtype = torch.float64 if input_dtype == torch.float64 else torch.float32
    inputs = _inputs((6, 8), (8,), "weight+bias", input_dtype, device, param_dtype)
    results = []
    for fn in (layer_norm, F.layer_norm):
        x, w, b = (t.detach().clone().requires_grad_() for t in inputs)
        with torch.autocast(device, dtype=dtype):
            out = fn(x, (8,), w, b)
            if backward_inside:
                out.float().square().sum().backward()
        if not backward_inside:
            out.float().square().sum().backward()
        results.append((out, [x.grad, w.grad, b.grad]))
    (out_m, grads_m), (out_n, grads_n) = results
    assert out_m.dtype == out_n.dtype
    if device == "cuda":
        assert out_m.dtype == torch.promote_types(input_dtype, torch.float32)
    tol = tolerances(dtype)
    torch.testing.assert_close(out_m, out_n, **tol)
    for gm, gn in zip(grads_m, grads_n, strict=True):
        assert gm.dtype == gn.dtype
        torch.testing.assert_close(gm, gn, **tol)
    assert_hand_derived_only(out_m)


@pytest.mark.parametrize(("device", "dtype"), AUTOCAST)
def test_autocast_after_a_linear_matches_native(device, dtype):
    """The usual place of a LayerNorm under autocast: after a Linear, which autocast runs
    in low precision; fp32 parameters."""
    torch.manual_seed(0)
    lin, norm = nn.Linear(5, 8).to(device), nn.LayerNorm(8).to(device)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    manual = ManualLayerNorm(8).to(device)
    manual.load_state_dict(norm.state_dict())
    x = torch.randn(6, 5, device=device)
    results = []
    for module in (manual, norm):
        with torch.autocast(device, dtype=dtype):
            out = module(lin(x))
        grads = torch.autograd.grad(
            out.float().square().sum(), [*lin.parameters(), *module.parameters()]
        )
        results.append((out, grads))
    (out_m, grads_m), (out_n, grads_n) = results
    assert out_m.dtype == out_n.dtype == (torch.float32 if device == "cuda" else dtype)
    torch.testing.assert_close(out_m, out_n, **tolerances(dtype))
    for gm, gn in zip(grads_m, grads_n, strict=True):
        assert gm.dtype == gn.dtype == torch.float32
        torch.testing.assert_close(gm, gn, **tolerances(dtype))


# ---- torch.compile ------------------------------------------------------------------------


def _compiled_grads(device):
    torch._dynamo.reset()
    x, w, b = _inputs((4, 3, 8), (3, 8), "weight+bias", torch.float32, device)
    step = torch.compile(lambda x, w, b: layer_norm(x, (3, 8), w, b).square().sum(), fullgraph=True)
    loss = step(x, w, b)
    got = torch.autograd.grad(loss, (x, w, b))
    native = torch.autograd.grad(F.layer_norm(x, (3, 8), w, b).square().sum(), (x, w, b))
    torch._dynamo.reset()
    return got, native


def test_compiled_fullgraph_matches_native(device):
    got, native = _compiled_grads(device)
    for g, n in zip(got, native, strict=True):
        torch.testing.assert_close(g, n)


def test_compiled_backward_is_hand_derived(device, monkeypatch):
    """With the op routed through the 3x wrong twin, the compiled gradients are 3x native:
    compile kept the hand-derived backward rather than tracing native rules."""
    _wrong_rules(monkeypatch)
    got, native = _compiled_grads(device)
    for g, n in zip(got, native, strict=True):
        torch.testing.assert_close(g, WRONG * n)


# ---- torch.func and forward-mode AD ----------------------------------------------------


def test_per_sample_gradients_with_vmap_grad(factor, device):
    torch.manual_seed(0)
    norm = ManualLayerNorm(6, device=device, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    params = {name: p.detach() for name, p in norm.named_parameters()}
    xs = torch.randn(5, 3, 6, device=device, dtype=torch.float64)
    target = torch.randn(3, 6, device=device, dtype=torch.float64)

    def loss(params, x):
        return (functional_call(norm, params, (x,)) * target).sum()

    got = vmap(grad(loss), in_dims=(None, 0))(params, xs)
    native = nn.LayerNorm(6, device=device, dtype=torch.float64)
    native.load_state_dict(norm.state_dict())
    for name, p in native.named_parameters():
        rows = [torch.autograd.grad((native(x) * target).sum(), p)[0] for x in xs]
        torch.testing.assert_close(got[name], factor * torch.stack(rows))


@pytest.mark.parametrize("transform", ["grad", "jacrev", "jacfwd", "hessian"])
def test_func_transforms_match_native(transform, factor, device):
    x, w, b = (t.detach() for t in _inputs((3, 4), (4,), "weight+bias", device=device))
    t = torch.randn(3, 4, dtype=torch.float64, device=device)
    make = {"grad": grad, "jacrev": jacrev, "jacfwd": jacfwd, "hessian": hessian}[transform]
    scalar = transform in ("grad", "hessian")

    def manual(x, w, b):
        y = layer_norm(x, (4,), w, b)
        return (y * t).sum() if scalar else y

    def native(x, w, b):
        y = F.layer_norm(x, (4,), w, b)
        return (y * t).sum() if scalar else y

    for argnum in range(3):
        got = make(manual, argnums=argnum)(x, w, b)
        expected = make(native, argnums=argnum)(x, w, b)
        assert got.shape == expected.shape
        if transform != "hessian":
            torch.testing.assert_close(got, factor * expected)  # the twin: every rule 3x
        elif factor == 1.0 or argnum > 0:  # d2L/dw2 = d2L/db2 = 0 with either rule
            torch.testing.assert_close(got, expected)
        else:  # jvp of the backward: 3x through x, 9x through the mu and r outputs
            assert not torch.allclose(got, expected)
            assert not torch.allclose(got, WRONG * expected)


def test_forward_ad_dual_numbers_match_native(factor, device):
    x, w, b = (t.detach() for t in _inputs((4, 2, 3), (2, 3), "weight+bias", device=device))
    tangents = [torch.randn_like(t) for t in (x, w, b)]
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, t) for p, t in zip((x, w, b), tangents, strict=True)]
        out_t = fwAD.unpack_dual(layer_norm(duals[0], (2, 3), *duals[1:])).tangent
    _, native_t = jvp(lambda x, w, b: F.layer_norm(x, (2, 3), w, b), (x, w, b), tuple(tangents))
    torch.testing.assert_close(out_t, factor * native_t)


# ---- activation checkpointing ------------------------------------------------------------


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpoint_gives_native_gradients(use_reentrant, factor, device):
    torch.manual_seed(0)
    lin = nn.Linear(5, 8, dtype=torch.float64).to(device)
    norm = nn.LayerNorm(8, dtype=torch.float64).to(device)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    manual = ManualLayerNorm(8, dtype=torch.float64).to(device)
    manual.load_state_dict(norm.state_dict())
    x = torch.randn(6, 5, dtype=torch.float64, device=device)

    def grads(fn, norm):  # by .backward(): reentrant checkpointing refuses autograd.grad
        xr = x.clone().requires_grad_()
        fn(xr).square().sum().backward()
        tensors = [xr, *lin.parameters(), *norm.parameters()]
        result = [t.grad.clone() for t in tensors]
        lin.zero_grad(set_to_none=True)
        return result

    got = grads(
        lambda x: checkpoint(lambda x: manual(lin(x)), x, use_reentrant=use_reentrant), manual
    )
    native = grads(lambda x: norm(lin(x)), norm)
    for g, n in zip(got, native, strict=True):
        torch.testing.assert_close(g, factor * n)


# ---- bad input: the native exception type, a message that names the problem -------------


def _t(*shape, **kw):
    return torch.randn(*shape, **kw)


BAD = {
    "shape-mismatch": ((_t(4, 5), (6,)), RuntimeError, r"normalized_shape=\(6,\).*\(4, 5\)"),
    "too-few-dims": ((_t(5), (2, 5)), RuntimeError, r"last 2 dimension.*\(\*, 2, 5\)"),
    "empty-shape": ((_t(4, 5), ()), RuntimeError, "at least one element"),
    "weight-shape": ((_t(4, 5), (5,), _t(4)), RuntimeError, r"weight must have shape.*\(4,\)"),
    "bias-shape": ((_t(4, 5), (5,), None, _t(1, 5)), RuntimeError, r"bias of shape \(1, 5\)"),
    "int-shape": ((_t(4, 5), 5), TypeError, "normalized_shape.*tuple of ints, not int"),
    "float-in-shape": ((_t(4, 5), [5.0]), TypeError, "element of type float at pos 0"),
    "bool-in-shape": ((_t(4, 5), (True,)), TypeError, "element of type bool"),
    "tensor-shape": ((_t(4, 5), torch.tensor([5])), TypeError, "not Tensor"),
    "eps-str": ((_t(4, 5), (5,), None, None, "a"), TypeError, "'eps' must be float, not str"),
    "integer-input": ((torch.ones(4, 5, dtype=torch.long), (5,)), NotImplementedError, "int64"),
    "weight-dtype": (
        (_t(4, 5), (5,), _t(5, dtype=torch.float64)),
        RuntimeError,
        r"input's dtype \(torch.float32\).*weight torch.float64",
    ),
    "mixed-params": (
        (_t(4, 5, dtype=torch.bfloat16), (5,), _t(5, dtype=torch.bfloat16), _t(5)),
        RuntimeError,
        "weight torch.bfloat16, bias torch.float32",
    ),
    "device": ((_t(4, 5), (5,), _t(5, device="meta")), RuntimeError, "same device.*cpu.*meta"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input(case):
    args, error, pattern = BAD[case]
    with pytest.raises(error):
        F.layer_norm(*args)  # the native type is the same
    with pytest.raises(error, match=pattern):
        layer_norm(*args)


def test_odd_but_legal_arguments_like_native():
    x, w, b = _inputs((3, 4), (4,), "weight+bias")
    for shape in ([4], torch.Size([4]), (torch.tensor(4),)):
        compare_with_native(
            lambda x, w, b, s=shape: layer_norm(x, s, w, b),
            lambda x, w, b, s=shape: F.layer_norm(x, s, w, b),
            x,
            w,
            b,
        )
    for eps in (1, torch.tensor(0.5), True):
        torch.testing.assert_close(layer_norm(x, (4,), w, b, eps), F.layer_norm(x, (4,), w, b, eps))
    x_t = torch.randn(4, 3, dtype=torch.float64).t().requires_grad_()  # non-contiguous
    compare_with_native(
        lambda x, w, b: layer_norm(x, (4,), w, b),
        lambda x, w, b: F.layer_norm(x, (4,), w, b),
        x_t,
        w,
        b,
    )
