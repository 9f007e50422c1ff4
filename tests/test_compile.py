"""The hand-derived ops under torch.compile: one graph, no break; eager's and native's
gradients; the hand-derived backward kept (the wrong twins show through); compiled
torch.func transforms, autocast and forward AD; mixed-dtype MSE without a graph break.

Compiling is slow on two cores: one compiled step per device is shared by several tests,
and each other test compiles once.
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from conftest import DEVICES, LINEAR_FACTOR, compare_with_native, native_mse_loss, tolerances
from helpers_compose import (
    assert_grads,
    batch,
    grads,
    mlp,
    native_grads,
    native_per_sample_grads,
    per_sample_loss,
    scale,
)
from torch import nn
from torch.func import grad, jvp, vmap
from torch.nn import functional as F

from manualgrad import ManualMSELoss
from manualgrad.functional import linear, mse_loss


def _train_loss(model, loss_fn, x, y):
    return loss_fn(model(x), y)


@pytest.fixture(scope="module", params=DEVICES)
def compiled(request):
    """The MLP's loss, compiled with fullgraph=True: (device, model, compiled loss)."""
    torch._dynamo.reset()
    model = mlp(request.param)
    step = torch.compile(_train_loss, fullgraph=True)
    yield request.param, model, lambda x, y: step(model, ManualMSELoss(), x, y)
    torch._dynamo.reset()


def test_compile_has_no_graph_break(device):
    x, y = batch(device)
    explanation = torch._dynamo.explain(_train_loss)(mlp(device), ManualMSELoss(), x, y)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_gradients_equal_eager_and_native(compiled):
    device, model, compiled_loss = compiled
    x, y = batch(device)
    got, loss = grads(model, lambda x: compiled_loss(x, y), x)
    eager, loss_e = grads(model, lambda x: ManualMSELoss()(model(x), y), x)
    native, loss_n = native_grads(device, x, y)
    torch.testing.assert_close(loss, loss_e)
    torch.testing.assert_close(loss, loss_n)
    assert_grads(got, eager)
    assert_grads(got, native)


def test_compiled_model_and_forward_ad_in_one_process(compiled):
    """Compiling uses the jvp-free twin; eager forward AD still finds the custom jvp."""
    device, model, compiled_loss = compiled
    x, y = batch(device)
    tangent = torch.randn_like(x)
    before = compiled_loss(x, y)
    with fwAD.dual_level():
        out = model(fwAD.make_dual(x, tangent))
        loss_t = fwAD.unpack_dual(ManualMSELoss()(out, y)).tangent
    native = mlp(device, manual=False)
    _, loss_t_n = jvp(lambda x: F.mse_loss(native(x), y), (x,), (tangent,))
    torch.testing.assert_close(loss_t, loss_t_n)
    torch.testing.assert_close(compiled_loss(x, y), before)  # compiled code still runs


def test_compiled_backward_is_hand_derived(device, wrong_rules):
    """Wrong hand-written gradients show up in the compiled ones: compile kept our backward."""
    x, y = batch(device)
    model = mlp(device)
    step = torch.compile(_train_loss, fullgraph=True)
    got, _ = grads(model, lambda x: step(model, ManualMSELoss(), x, y), x)
    eager, _ = grads(model, lambda x: ManualMSELoss()(model(x), y), x)
    assert_grads(got, eager)
    assert_grads(got, native_grads(device, x, y)[0], rules="wrong")


def _autocast_loss(model, loss_fn, x, y):
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        out = model(x)
        return out, loss_fn(out, y)


def test_compiled_autocast_matches_eager(device):
    x, y = batch(device)
    model = mlp(device)
    torch._dynamo.reset()
    step = torch.compile(_autocast_loss, fullgraph=True)  # no graph break under autocast
    out, loss = step(model, ManualMSELoss(), x, y)
    assert out.dtype == torch.bfloat16 and loss.dtype == torch.float32
    got = torch.autograd.grad(loss, list(model.parameters()))
    out_e, loss_e = _autocast_loss(model, ManualMSELoss(), x, y)
    eager = torch.autograd.grad(loss_e, list(model.parameters()))
    native_model = mlp(device, manual=False)
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


def test_compiled_functorch_transforms_run_the_hand_derived_rule(wrong_rules):
    """torch.compile would silently trace a transform through native rules (pytorch issues
    193279, 192985); ManualOp runs the op outside the graph there, so the (wrong) hand-derived
    rule shows up, and fullgraph=True reports the break instead of a wrong result."""
    x, y = batch("cpu")
    model = mlp("cpu")
    params = {name: p.detach() for name, p in model.named_parameters()}
    per_sample = vmap(grad(per_sample_loss(model, ManualMSELoss())), in_dims=(None, 0, 0))
    got = torch.compile(per_sample)(params, x, y)
    native = native_per_sample_grads("cpu", x, y)
    for name, g in got.items():
        torch.testing.assert_close(g, scale("wrong", name) * native[name])

    w, b = params["0.weight"], params["0.bias"]
    tangent = torch.randn_like(x)
    _, out_t = torch.compile(lambda x, t: jvp(lambda x: linear(x, w, b), (x,), (t,)))(x, tangent)
    torch.testing.assert_close(out_t, LINEAR_FACTOR * tangent @ w.T)

    # vmap over a model whose parameters require grad: compiling the twin would crash
    # ("You tried to vmap over ApplyTemplate"); the eager op keeps the hand-derived backward.
    xs, ys = torch.stack([x, 2 * x]), torch.stack([y, y])  # (2, N, 4), (2, N, 3)
    got, _ = grads(model, lambda xs: ManualMSELoss()(torch.compile(vmap(model))(xs), ys), xs)
    native_model = mlp("cpu", manual=False)
    native, _ = grads(native_model, lambda xs: F.mse_loss(native_model(xs), ys), xs)
    assert_grads(got, native, rules="wrong")

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
    compare_with_native(wrap(mse_loss), wrap(native_mse_loss), a, b, tol=tol)
    explanation = torch._dynamo.explain(wrap(mse_loss))(a, b)
    assert explanation.graph_break_count == 0, explanation.break_reasons
