"""The hand-derived ops under autocast: the dtypes native autocast picks, native's values and
gradients, and (with ``rules``) the hand-derived backward really ran."""

from __future__ import annotations

import pytest
import torch
from conftest import AUTOCAST, compare_with_native, native_mse_loss, tolerances
from helpers_compose import assert_grads, batch, grads, mlp, native_grads
from torch import nn
from torch.nn import functional as F

from manualgrad import ManualMSELoss
from manualgrad.functional import linear, mse_loss


@pytest.mark.parametrize(("device", "dtype"), AUTOCAST)
@pytest.mark.parametrize("backward_inside", [False, True], ids=["backward-after", "inside"])
def test_autocast_mlp_dtypes_and_gradients_match_native(device, dtype, backward_inside, rules):
    """fp32 parameters and inputs: Linear runs in low precision, the loss in float32, and
    every gradient is float32, as natively; backward inside the autocast region must not
    hit the ``expected m1 and m2 to have the same dtype`` trap."""
    x, y = batch(device)
    results = []
    for model, loss_fn in [
        (mlp(device), ManualMSELoss()),
        (mlp(device, manual=False), nn.MSELoss()),
    ]:
        xr = x.clone().requires_grad_()
        with torch.autocast(device, dtype=dtype):
            out = model(xr)
            loss = loss_fn(out, y)
            if backward_inside:
                loss.backward()
        if not backward_inside:
            loss.backward()
        found = {"input": xr.grad, **{name: p.grad for name, p in model.named_parameters()}}
        results.append((out, loss, found))
    (out_m, loss_m, grads_m), (out_n, loss_n, grads_n) = results
    assert out_m.dtype == out_n.dtype == dtype
    assert loss_m.dtype == loss_n.dtype == torch.float32
    torch.testing.assert_close(out_m, out_n, **tolerances(dtype))
    torch.testing.assert_close(loss_m, loss_n, **tolerances(dtype))
    assert all(g.dtype == torch.float32 for g in grads_m.values())
    assert_grads(grads_m, grads_n, rules, tol=tolerances(dtype))


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
        under_autocast(mse_loss), under_autocast(native_mse_loss), a, b, tol=tolerances(dtype)
    )
    assert out_m.dtype == out_n.dtype in (torch.float32, torch.float64)


def test_autocast_disabled_inside_autocast_runs_full_precision(device):
    x, y = batch(device)
    model = mlp(device)
    with torch.autocast(device, dtype=torch.bfloat16), torch.autocast(device, enabled=False):
        assert model(x).dtype == torch.float32
        got, loss = grads(model, lambda x: ManualMSELoss()(model(x), y), x)
    native, loss_n = native_grads(device, x, y)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, loss_n)
    assert_grads(got, native)
