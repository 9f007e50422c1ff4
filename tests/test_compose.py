"""The hand-derived Functions inside the rest of PyTorch: autocast, torch.compile,
torch.func and forward-mode AD, activation checkpointing, DDP.

Each section checks two things: results equal native autograd's, and the hand-derived rule
is the one that ran. For the second, the ``wrong_rules`` fixture swaps in a deliberately
wrong twin of each Function (through the same ``ManualOp`` the real ops use), whose error
is known: Linear's ``dW`` and its jvp are scaled by 3, MSE's ``dL/dy_hat`` and its loss
tangent by 2. A result that moves by exactly that factor came from the hand-derived code;
a transform that fell back to native autograd would not move at all.
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.distributed as dist
from conftest import DEVICES, compare_with_native, tolerances
from torch import nn
from torch.autograd import gradcheck
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vmap
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

import manualgrad.linear
import manualgrad.mse
from manualgrad import ManualLinear, ManualLinearFunction, ManualMSEFunction, ManualMSELoss
from manualgrad._apply import ManualOp
from manualgrad.functional import linear, mse_loss

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

# ---- the deliberately wrong twins ------------------------------------------------------

LINEAR_W, MSE_IN = 3.0, 2.0  # the known errors: dW * 3 (and jvp * 3), dL/dy_hat * 2
# For the MLP below (Linear, Tanh, Linear, MSE), the wrong rules scale every gradient by:
MLP_SCALE = {"weight": LINEAR_W * MSE_IN, "bias": MSE_IN, "input": MSE_IN}

# Plain function objects: Dynamo cannot trace ``SomeFunction.backward(...)`` called on a
# Function class from inside another Function's backward.
_linear_backward, _linear_jvp = ManualLinearFunction.backward, ManualLinearFunction.jvp
_mse_backward, _mse_jvp = ManualMSEFunction.backward, ManualMSEFunction.jvp


class _WrongLinear(ManualLinearFunction):
    @staticmethod
    def backward(ctx, grad_output):
        grad_input, grad_weight, grad_bias = _linear_backward(ctx, grad_output)
        return grad_input, None if grad_weight is None else LINEAR_W * grad_weight, grad_bias

    @staticmethod
    def jvp(ctx, *tangents):
        return LINEAR_W * _linear_jvp(ctx, *tangents)


class _WrongMSE(ManualMSEFunction):
    @staticmethod
    def backward(ctx, *grads):
        grad_input, grad_target, grad_reduction = _mse_backward(ctx, *grads)
        grad_input = None if grad_input is None else MSE_IN * grad_input
        return grad_input, grad_target, grad_reduction

    @staticmethod
    def jvp(ctx, *tangents):
        loss_t, diff_t = _mse_jvp(ctx, *tangents)
        return MSE_IN * loss_t, diff_t


@pytest.fixture
def wrong_rules(monkeypatch):
    """Route ManualLinear / ManualMSELoss / the functional forms through the wrong twins."""
    monkeypatch.setattr(manualgrad.linear, "_linear", ManualOp(_WrongLinear))
    monkeypatch.setattr(manualgrad.mse, "_mse", ManualOp(_WrongMSE))
    torch._dynamo.reset()  # nothing compiled against the real ops may be reused
    yield
    torch._dynamo.reset()


@pytest.fixture(params=["hand-derived", "wrong"])
def rules(request) -> str:
    """Run a test with the real rules, then with the wrong twins (expecting MLP_SCALE)."""
    if request.param == "wrong":
        request.getfixturevalue("wrong_rules")
    return request.param


def _scale(rules: str, name: str) -> float:
    return MLP_SCALE[name.rsplit(".", 1)[-1]] if rules == "wrong" else 1.0


# ---- a small MLP, its native twin, and its gradients ------------------------------------


def _mlp(device, dtype=torch.float32, manual=True):
    torch.manual_seed(0)
    layer = ManualLinear if manual else nn.Linear
    model = nn.Sequential(layer(4, 8), nn.Tanh(), layer(8, 3))
    return model.to(device=device, dtype=dtype)


def _batch(device, dtype=torch.float32, n=6):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=gen, dtype=dtype).to(device)
    return x, torch.randn(n, 3, generator=gen, dtype=dtype).to(device)


def _grads(model, loss_of, x):
    """Gradients of ``loss_of(x)``, by ``backward()``, for the input (as "input") and every
    parameter of ``model``; returns ``(grads, loss)``."""
    x = x.detach().clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    loss = loss_of(x)
    loss.backward()
    grads = {"input": x.grad, **{name: p.grad for name, p in model.named_parameters()}}
    model.zero_grad(set_to_none=True)
    return grads, loss.detach()


def _native_grads(device, x, y):
    model = _mlp(device, manual=False)
    return _grads(model, lambda x: F.mse_loss(model(x), y), x)


def _assert_grads(got: dict, native: dict, rules="hand-derived", tol=None):
    """Each gradient equals native's (times the known error of the wrong twins)."""
    assert got.keys() == native.keys()
    for name, g in got.items():
        assert g.dtype == native[name].dtype and g.shape == native[name].shape, name
        expected = _scale(rules, name) * native[name]
        torch.testing.assert_close(g, expected, **(tol or tolerances(g.dtype)), msg=name)


def _native_mse(a, b, reduction="mean"):
    """F.mse_loss, with the promotion F.mse_loss itself picks done as explicit casts first:
    torch 2.11's native backward crashes on mixed dtypes ("Found dtype Double but expected
    Float"); the gradients through the casts are the ones 2.13's native backward returns."""
    dtype = F.mse_loss(a.detach(), b.detach(), reduction=reduction).dtype
    return F.mse_loss(a.to(dtype), b.to(dtype), reduction=reduction)


# ---- autocast ---------------------------------------------------------------------------

AUTOCAST = [
    pytest.param("cpu", torch.bfloat16, id="cpu-bfloat16"),
    pytest.param("cpu", torch.float16, id="cpu-float16"),
    pytest.param("cuda", torch.float16, id="cuda-float16", marks=cuda),
    pytest.param("cuda", torch.bfloat16, id="cuda-bfloat16", marks=cuda),
]


@pytest.mark.parametrize(("device", "dtype"), AUTOCAST)
@pytest.mark.parametrize("backward_inside", [False, True], ids=["backward-after", "inside"])
def test_autocast_mlp_dtypes_and_gradients_match_native(device, dtype, backward_inside, rules):
    """fp32 parameters and inputs: Linear runs in low precision, the loss in float32, and
    every gradient is float32, as natively; backward inside the autocast region must not
    hit the ``expected m1 and m2 to have the same dtype`` trap."""
    x, y = _batch(device)
    results = []
    for model, loss_fn in [
        (_mlp(device), ManualMSELoss()),
        (_mlp(device, manual=False), nn.MSELoss()),
    ]:
        xr = x.clone().requires_grad_()
        with torch.autocast(device, dtype=dtype):
            out = model(xr)
            loss = loss_fn(out, y)
            if backward_inside:
                loss.backward()
        if not backward_inside:
            loss.backward()
        grads = {"input": xr.grad, **{name: p.grad for name, p in model.named_parameters()}}
        results.append((out, loss, grads))
    (out_m, loss_m, grads_m), (out_n, loss_n, grads_n) = results
    assert out_m.dtype == out_n.dtype == dtype
    assert loss_m.dtype == loss_n.dtype == torch.float32
    torch.testing.assert_close(out_m, out_n, **tolerances(dtype))
    torch.testing.assert_close(loss_m, loss_n, **tolerances(dtype))
    assert all(g.dtype == torch.float32 for g in grads_m.values())
    _assert_grads(grads_m, grads_n, rules, tol=tolerances(dtype))


@pytest.mark.parametrize(("device", "dtype"), AUTOCAST)
@pytest.mark.parametrize("param_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_autocast_linear_matches_native(device, dtype, param_dtype, bias):
    """Autocast lowers float32 (never float64) inputs of linear, natively and here."""
    gen = torch.Generator().manual_seed(3)
    x, w, b = (torch.randn(*s, generator=gen, dtype=param_dtype) for s in [(5, 4), (3, 4), (3,)])
    inputs = [t.to(device).requires_grad_() for t in (x, w, b if bias else None) if t is not None]

    def under_autocast(fn):
        def run(*args):
            with torch.autocast(device, dtype=dtype):
                return fn(*args)

        return run

    low = param_dtype != torch.float64
    tol = tolerances(dtype) if low else None
    out, _ = compare_with_native(under_autocast(linear), under_autocast(F.linear), *inputs, tol=tol)
    assert out.dtype == (dtype if low else torch.float64)


@pytest.mark.filterwarnings("ignore:Using a target size")
@pytest.mark.parametrize(("device", "dtype"), AUTOCAST)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    ("target_dtype", "target_shape"),
    [("low", (5, 3)), (torch.float32, (5, 3)), (torch.float64, (5, 3)), (torch.float64, ())],
    ids=["low", "float32", "float64", "float64-0dim"],
)
def test_autocast_mse_matches_native(device, dtype, reduction, target_dtype, target_shape):
    """Native autocast computes mse_loss in float32 (float64 stays float64)."""
    gen = torch.Generator().manual_seed(4)
    target_dtype = dtype if target_dtype == "low" else target_dtype
    a = torch.randn(5, 3, generator=gen).to(device, dtype).requires_grad_()
    b = torch.randn(target_shape, generator=gen).to(device, target_dtype).requires_grad_()

    def under_autocast(fn):
        def run(a, b):
            with torch.autocast(device, dtype=dtype):
                return fn(a, b, reduction=reduction)

        return run

    out_m, out_n = compare_with_native(
        under_autocast(mse_loss), under_autocast(_native_mse), a, b, tol=tolerances(dtype)
    )
    assert out_m.dtype == out_n.dtype in (torch.float32, torch.float64)


def test_autocast_disabled_inside_autocast_runs_full_precision(device):
    x, y = _batch(device)
    model = _mlp(device)
    with torch.autocast(device, dtype=torch.bfloat16), torch.autocast(device, enabled=False):
        assert model(x).dtype == torch.float32
        got, loss = _grads(model, lambda x: ManualMSELoss()(model(x), y), x)
    native, loss_n = _native_grads(device, x, y)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, loss_n)
    _assert_grads(got, native)


@pytest.mark.filterwarnings("ignore:Using a target size")
@pytest.mark.parametrize("autocast", [False, True], ids=["plain", "autocast-bf16"])
@pytest.mark.parametrize(
    ("input_dtype", "target_dtype", "target_shape"),
    [
        (torch.bfloat16, torch.float32, (5, 3)),
        (torch.float32, torch.float64, ()),  # F.mse_loss broadcasts first: float64 wins
        (torch.float64, torch.float16, ()),
        (torch.float32, torch.int64, (5, 3)),
    ],
    ids=str,
)
def test_mse_dtype_promotion_matches_native_and_compiles(
    input_dtype, target_dtype, target_shape, autocast
):
    """Mixed dtypes promote as in F.mse_loss, with no graph break (torch.result_type is one)."""
    gen = torch.Generator().manual_seed(7)
    a = torch.randn(5, 3, generator=gen).to(input_dtype).requires_grad_()
    b = (3 * torch.randn(target_shape, generator=gen)).to(target_dtype)
    b.requires_grad_(b.is_floating_point())

    def wrap(fn):
        def run(a, b):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                return fn(a, b)

        return run

    low = torch.float64 not in (input_dtype, target_dtype)
    tol = tolerances(torch.bfloat16) if low else None
    compare_with_native(wrap(mse_loss), wrap(_native_mse), a, b, tol=tol)
    explanation = torch._dynamo.explain(wrap(mse_loss))(a, b)
    assert explanation.graph_break_count == 0, explanation.break_reasons


# ---- torch.compile ----------------------------------------------------------------------
# Compiling is slow on two cores: one compiled step per device is shared by several tests,
# and each other test compiles once.


def _train_loss(model, loss_fn, x, y):
    return loss_fn(model(x), y)


@pytest.fixture(scope="module", params=DEVICES)
def compiled(request):
    """The MLP's loss, compiled with fullgraph=True: (device, model, compiled loss)."""
    torch._dynamo.reset()
    model = _mlp(request.param)
    step = torch.compile(_train_loss, fullgraph=True)
    yield request.param, model, lambda x, y: step(model, ManualMSELoss(), x, y)
    torch._dynamo.reset()


def test_compile_has_no_graph_break(device):
    x, y = _batch(device)
    explanation = torch._dynamo.explain(_train_loss)(_mlp(device), ManualMSELoss(), x, y)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_gradients_equal_eager_and_native(compiled):
    device, model, compiled_loss = compiled
    x, y = _batch(device)
    got, loss = _grads(model, lambda x: compiled_loss(x, y), x)
    eager, loss_e = _grads(model, lambda x: ManualMSELoss()(model(x), y), x)
    native, loss_n = _native_grads(device, x, y)
    torch.testing.assert_close(loss, loss_e)
    torch.testing.assert_close(loss, loss_n)
    _assert_grads(got, eager)
    _assert_grads(got, native)


def test_compiled_model_and_forward_ad_in_one_process(compiled):
    """Compiling uses the jvp-free twin; eager forward AD still finds the custom jvp."""
    device, model, compiled_loss = compiled
    x, y = _batch(device)
    tangent = torch.randn_like(x)
    before = compiled_loss(x, y)
    with fwAD.dual_level():
        out = model(fwAD.make_dual(x, tangent))
        loss_t = fwAD.unpack_dual(ManualMSELoss()(out, y)).tangent
    native = _mlp(device, manual=False)
    _, loss_t_n = jvp(lambda x: F.mse_loss(native(x), y), (x,), (tangent,))
    torch.testing.assert_close(loss_t, loss_t_n)
    torch.testing.assert_close(compiled_loss(x, y), before)  # compiled code still runs


def test_compiled_backward_is_hand_derived(device, wrong_rules):
    """A wrong hand-written dW shows up in the compiled gradients: compile kept our backward."""
    x, y = _batch(device)
    model = _mlp(device)
    step = torch.compile(_train_loss, fullgraph=True)
    got, _ = _grads(model, lambda x: step(model, ManualMSELoss(), x, y), x)
    eager, _ = _grads(model, lambda x: ManualMSELoss()(model(x), y), x)
    _assert_grads(got, eager)
    _assert_grads(got, _native_grads(device, x, y)[0], rules="wrong")


def _autocast_loss(model, loss_fn, x, y):
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        out = model(x)
        return out, loss_fn(out, y)


def test_compiled_autocast_matches_eager(device):
    x, y = _batch(device)
    model = _mlp(device)
    torch._dynamo.reset()
    step = torch.compile(_autocast_loss, fullgraph=True)  # no graph break under autocast
    out, loss = step(model, ManualMSELoss(), x, y)
    assert out.dtype == torch.bfloat16 and loss.dtype == torch.float32
    got = torch.autograd.grad(loss, list(model.parameters()))
    out_e, loss_e = _autocast_loss(model, ManualMSELoss(), x, y)
    eager = torch.autograd.grad(loss_e, list(model.parameters()))
    native_model = _mlp(device, manual=False)
    out_n, loss_n = _autocast_loss(native_model, nn.MSELoss(), x, y)
    native = torch.autograd.grad(loss_n, list(native_model.parameters()))
    tol = tolerances(torch.bfloat16)
    torch.testing.assert_close(out, out_e, **tol)
    torch.testing.assert_close(out, out_n, **tol)
    torch.testing.assert_close(loss, loss_e, **tol)
    torch.testing.assert_close(loss, loss_n, **tol)
    for g, ge, gn in zip(got, eager, native, strict=True):
        assert g.dtype == ge.dtype == gn.dtype == torch.float32
        torch.testing.assert_close(g, ge, **tol)
        torch.testing.assert_close(g, gn, **tol)
    torch._dynamo.reset()


def _per_sample_loss(model, loss_fn):
    def loss(params, x, y):
        return loss_fn(functional_call(model, params, (x[None],)), y[None])

    return loss


def _native_per_sample_grads(device, x, y):
    """A plain loop of native per-sample gradients: {name: (N, *param.shape)}."""
    native = _mlp(device, manual=False)
    rows = [
        torch.autograd.grad(F.mse_loss(native(x[i : i + 1]), y[i : i + 1]), native.parameters())
        for i in range(len(x))
    ]
    names = [name for name, _ in native.named_parameters()]
    return {
        name: torch.stack(col) for name, col in zip(names, zip(*rows, strict=True), strict=True)
    }


def test_compiled_functorch_transforms_run_the_hand_derived_rule(wrong_rules):
    """torch.compile would silently trace a transform through native rules (pytorch issues
    193279, 192985); ManualOp runs the op outside the graph there, so the (wrong) hand-derived
    rule shows up, and fullgraph=True reports the break instead of a wrong result."""
    x, y = _batch("cpu")
    model = _mlp("cpu")
    params = {name: p.detach() for name, p in model.named_parameters()}
    per_sample = vmap(grad(_per_sample_loss(model, ManualMSELoss())), in_dims=(None, 0, 0))
    got = torch.compile(per_sample)(params, x, y)
    native = _native_per_sample_grads("cpu", x, y)
    for name, g in got.items():
        torch.testing.assert_close(g, _scale("wrong", name) * native[name])

    w, b = params["0.weight"], params["0.bias"]
    tangent = torch.randn_like(x)
    _, out_t = torch.compile(lambda x, t: jvp(lambda x: linear(x, w, b), (x,), (t,)))(x, tangent)
    torch.testing.assert_close(out_t, LINEAR_W * tangent @ w.T)

    # vmap over a model whose parameters require grad: compiling the twin would crash
    # ("You tried to vmap over ApplyTemplate"); the eager op keeps the hand-derived backward.
    xs, ys = torch.stack([x, 2 * x]), torch.stack([y, y])  # (2, N, 4), (2, N, 3)
    got, _ = _grads(model, lambda xs: ManualMSELoss()(torch.compile(vmap(model))(xs), ys), xs)
    native_model = _mlp("cpu", manual=False)
    native, _ = _grads(native_model, lambda xs: F.mse_loss(native_model(xs), ys), xs)
    _assert_grads(got, native, rules="wrong")

    torch._dynamo.reset()  # else the cached, graph-broken code above would be reused
    with pytest.raises(torch._dynamo.exc.Unsupported, match="hand-derived backward/jvp"):
        torch.compile(per_sample, fullgraph=True)(params, x, y)


def test_forward_ad_through_compiled_code_behaves_like_native():
    """Dual tensors into compiled code: whatever torch does for F.linear (torch 2.13: an
    error, no forward AD for the compiled out= kernels), it does the same for ours."""
    gen = torch.Generator().manual_seed(5)
    x, tangent, w = (torch.randn(*s, generator=gen) for s in [(5, 4), (5, 4), (3, 4)])
    outcomes = []
    for fn in (F.linear, linear):
        torch._dynamo.reset()
        compiled_fn = torch.compile(lambda x, fn=fn: fn(x, w), fullgraph=True)
        try:
            with fwAD.dual_level():
                out_t = fwAD.unpack_dual(compiled_fn(fwAD.make_dual(x, tangent))).tangent
            outcomes.append(out_t)
        except Exception as error:  # the outcome is what we compare
            outcomes.append((type(error), str(error).splitlines()[0]))
    torch._dynamo.reset()
    native, ours = outcomes
    if isinstance(native, torch.Tensor):
        torch.testing.assert_close(ours, native)
    else:
        assert ours == native


# ---- torch.func and forward-mode AD -----------------------------------------------------


def test_per_sample_gradients_with_vmap_grad(rules, device):
    x, y = _batch(device)
    model = _mlp(device)
    params = {name: p.detach() for name, p in model.named_parameters()}
    per_sample = vmap(grad(_per_sample_loss(model, ManualMSELoss())), in_dims=(None, 0, 0))
    got = per_sample(params, x, y)
    native = _native_per_sample_grads(device, x, y)
    assert got.keys() == native.keys()
    for name, g in got.items():
        assert g.shape == native[name].shape
        torch.testing.assert_close(g, _scale(rules, name) * native[name])


def _layer_inputs(device):
    gen = torch.Generator().manual_seed(6)
    shapes = [(5, 4), (3, 4), (3,), (5, 3)]
    return [torch.randn(*s, generator=gen, dtype=torch.float64).to(device) for s in shapes]


# Known factors of the wrong twins for one Linear (x, W, b) followed by MSE:
# grad: MSE's 2, times 3 on W; jacrev of Linear: 3 on W; jacfwd of Linear: its jvp's 3 on all;
# hessian = jacfwd(jacrev): the grad factor times the jvp's 3.
TRANSFORMS = {
    "grad": (lambda f, a: grad(f, argnums=a), "loss", (2.0, 6.0, 2.0)),
    "jacrev": (lambda f, a: jacrev(f, argnums=a), "layer", (1.0, 3.0, 1.0)),
    "jacfwd": (lambda f, a: jacfwd(f, argnums=a), "layer", (3.0, 3.0, 3.0)),
    "hessian": (lambda f, a: hessian(f, argnums=a), "loss", (6.0, 18.0, 6.0)),
}


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_func_transforms_match_native(transform, rules, device):
    x, w, b, t = _layer_inputs(device)
    make, of, factors = TRANSFORMS[transform]
    fns = {
        "loss": (
            lambda x, w, b: mse_loss(linear(x, w, b), t),
            lambda x, w, b: F.mse_loss(F.linear(x, w, b), t),
        ),
        "layer": (linear, F.linear),
    }
    manual_fn, native_fn = fns[of]
    for argnum, factor in enumerate(factors):
        got = make(manual_fn, argnum)(x, w, b)
        expected = make(native_fn, argnum)(x, w, b)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, (factor if rules == "wrong" else 1.0) * expected)


def test_forward_ad_dual_numbers_match_native(rules, device):
    x, y = _batch(device)
    tangent = torch.randn_like(x)
    model = _mlp(device)
    with fwAD.dual_level():
        out = model(fwAD.make_dual(x, tangent))
        loss = ManualMSELoss()(out, y)
        out_t, loss_t = fwAD.unpack_dual(out).tangent, fwAD.unpack_dual(loss).tangent
    native = _mlp(device, manual=False)
    (_, out_t_n), (_, loss_t_n) = (
        jvp(fn, (x,), (tangent,)) for fn in (native, lambda x: F.mse_loss(native(x), y))
    )
    scale = rules == "wrong"  # each Linear's jvp scales by 3, the loss tangent by 2 more
    torch.testing.assert_close(out_t, (LINEAR_W**2 if scale else 1.0) * out_t_n)
    torch.testing.assert_close(loss_t, (LINEAR_W**2 * MSE_IN if scale else 1.0) * loss_t_n)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_forward_ad_and_batched(reduction, device):
    x, w, b, t = (a.requires_grad_() for a in _layer_inputs(device))
    checks = dict(check_forward_ad=True, check_batched_grad=True, check_batched_forward_grad=True)
    assert gradcheck(linear, (x, w, b), **checks)
    assert gradcheck(lambda a, t: mse_loss(a, t, reduction), (linear(x, w, b), t), **checks)


# ---- activation checkpointing and DDP --------------------------------------------------


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "autocast-bf16"])
def test_checkpoint_gives_the_same_gradients(use_reentrant, autocast, rules, device):
    x, y = _batch(device)
    model = _mlp(device)

    def loss_of(model, loss_fn, wrap):
        def run(x):
            with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
                return loss_fn(wrap(model, x), y)

        return run

    def checkpointed(model, x):
        return checkpoint(model, x, use_reentrant=use_reentrant)

    got, loss = _grads(model, loss_of(model, ManualMSELoss(), checkpointed), x)
    plain, loss_p = _grads(model, loss_of(model, ManualMSELoss(), lambda m, x: m(x)), x)
    native_model = _mlp(device, manual=False)
    native, _ = _grads(native_model, loss_of(native_model, nn.MSELoss(), lambda m, x: m(x)), x)
    tol = tolerances(torch.bfloat16) if autocast else None
    torch.testing.assert_close(loss, loss_p)
    _assert_grads(got, plain, tol=tol)
    _assert_grads(got, native, rules, tol=tol)


@pytest.fixture
def process_group(tmp_path):
    """A one-process gloo group (gloo also reduces CUDA tensors), destroyed afterwards."""
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    store = f"file://{tmp_path / 'store'}"
    dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_gradients_land_on_parameters(rules, device, process_group):
    x, y = _batch(device)
    model = _mlp(device)
    ddp = DistributedDataParallel(model)
    got, _ = _grads(model, lambda x: ManualMSELoss()(ddp(x), y), x)  # read from p.grad
    _assert_grads(got, _native_grads(device, x, y)[0], rules)
