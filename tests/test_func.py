"""The hand-derived ops under torch.func (vmap, grad, jacrev, jacfwd, hessian) and
forward-mode AD: native's results, and (with ``rules``) the hand-derived backward and jvp
really ran."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from conftest import LINEAR_FACTOR, MSE_FACTOR
from helpers_compose import batch, mlp, native_per_sample_grads, per_sample_loss, scale
from torch.autograd import gradcheck
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vmap
from torch.nn import functional as F

from manualgrad import ManualMSELoss
from manualgrad.functional import linear, mse_loss


def test_per_sample_gradients_with_vmap_grad(rules, device):
    x, y = batch(device)
    model = mlp(device)
    params = {name: p.detach() for name, p in model.named_parameters()}
    per_sample = vmap(grad(per_sample_loss(model, ManualMSELoss())), in_dims=(None, 0, 0))
    got = per_sample(params, x, y)
    native = native_per_sample_grads(device, x, y)
    assert got.keys() == native.keys()
    for name, g in got.items():
        assert g.shape == native[name].shape
        torch.testing.assert_close(g, scale(rules, name) * native[name])


def _layer_inputs(device):
    gen = torch.Generator().manual_seed(6)
    shapes = [(5, 4), (3, 4), (3,), (5, 3)]
    return [torch.randn(*s, generator=gen, dtype=torch.float64).to(device) for s in shapes]


# Known factors of the wrong twins for one Linear (x, W, b), alone ("layer") or followed by
# MSE ("loss"), the same for each of x, W and b: grad runs MSE's backward, then Linear's;
# jacrev runs Linear's backward, jacfwd its jvp; hessian = jacfwd(jacrev) scales the
# gradient's factor by that of its tangent, which passes Linear's jvp and MSE's jvp of D.
TRANSFORMS = {
    "grad": (lambda f, a: grad(f, argnums=a), "loss", MSE_FACTOR * LINEAR_FACTOR),
    "jacrev": (lambda f, a: jacrev(f, argnums=a), "layer", LINEAR_FACTOR),
    "jacfwd": (lambda f, a: jacfwd(f, argnums=a), "layer", LINEAR_FACTOR),
    "hessian": (lambda f, a: hessian(f, argnums=a), "loss", (MSE_FACTOR * LINEAR_FACTOR) ** 2),
}


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_func_transforms_match_native(transform, rules, device):
    x, w, b, t = _layer_inputs(device)
    make, of, factor = TRANSFORMS[transform]
    fns = {
        "loss": (
            lambda x, w, b: mse_loss(linear(x, w, b), t),
            lambda x, w, b: F.mse_loss(F.linear(x, w, b), t),
        ),
        "layer": (linear, F.linear),
    }
    manual_fn, native_fn = fns[of]
    for argnum in range(3):
        got = make(manual_fn, argnum)(x, w, b)
        expected = make(native_fn, argnum)(x, w, b)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, (factor if rules == "wrong" else 1.0) * expected)


def test_forward_ad_dual_numbers_match_native(rules, device):
    x, y = batch(device)
    tangent = torch.randn_like(x)
    model = mlp(device)
    with fwAD.dual_level():
        out = model(fwAD.make_dual(x, tangent))
        loss = ManualMSELoss()(out, y)
        out_t, loss_t = fwAD.unpack_dual(out).tangent, fwAD.unpack_dual(loss).tangent
    native = mlp(device, manual=False)
    (_, out_t_n), (_, loss_t_n) = (
        jvp(fn, (x,), (tangent,)) for fn in (native, lambda x: F.mse_loss(native(x), y))
    )
    wrong = rules == "wrong"  # each Linear's jvp scales the tangent, then MSE's
    torch.testing.assert_close(out_t, (LINEAR_FACTOR**2 if wrong else 1.0) * out_t_n)
    torch.testing.assert_close(loss_t, (LINEAR_FACTOR**2 * MSE_FACTOR if wrong else 1.0) * loss_t_n)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_forward_ad_and_batched(reduction, device):
    x, w, b, t = (a.requires_grad_() for a in _layer_inputs(device))
    checks = dict(check_forward_ad=True, check_batched_grad=True, check_batched_forward_grad=True)
    assert gradcheck(linear, (x, w, b), **checks)
    assert gradcheck(lambda a, t: mse_loss(a, t, reduction), (linear(x, w, b), t), **checks)
