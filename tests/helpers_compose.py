"""Shared by the tests of the hand-derived ops inside the rest of PyTorch (test_autocast,
test_compile, test_func, test_checkpoint, test_ddp_core): a small MLP, its native twin, its
batch, and its gradients next to native autograd's.

Each of those tests checks two things: results equal native autograd's, and the
hand-derived rule is the one that ran. For the second, the ``wrong_rules`` / ``rules``
fixtures (conftest.py) route the ops through deliberately wrong twins whose error is known;
a result that moves by exactly the factor in :data:`WRONG_SCALE` came from the hand-derived
code, and a transform that fell back to native autograd would not move at all.
"""

from __future__ import annotations

import torch
from conftest import LINEAR_FACTOR, MSE_FACTOR, tolerances
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from manualgrad import ManualLinear

# Under the wrong rules, each of the MLP's gradients is MSE's factor times Linear's for
# every Linear backward it passes through: one for layer 2, two for layer 0 and the input.
WRONG_SCALE = {
    "2.weight": MSE_FACTOR * LINEAR_FACTOR,
    "2.bias": MSE_FACTOR * LINEAR_FACTOR,
    "0.weight": MSE_FACTOR * LINEAR_FACTOR**2,
    "0.bias": MSE_FACTOR * LINEAR_FACTOR**2,
    "input": MSE_FACTOR * LINEAR_FACTOR**2,
}


def scale(rules: str, name: str) -> float:
    """How much the gradient ``name`` (a key of :data:`WRONG_SCALE`) differs from native's."""
    return WRONG_SCALE[name] if rules == "wrong" else 1.0


def mlp(device, dtype=torch.float32, manual=True) -> nn.Sequential:
    """Linear(4, 8), Tanh, Linear(8, 3); the same initial weights for either kind of layer."""
    torch.manual_seed(0)
    layer = ManualLinear if manual else nn.Linear
    model = nn.Sequential(layer(4, 8), nn.Tanh(), layer(8, 3))
    return model.to(device=device, dtype=dtype)


def batch(device, dtype=torch.float32, n=6):
    """``(x, y)``: ``(n, 4)`` inputs and ``(n, 3)`` targets for :func:`mlp`."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=gen, dtype=dtype).to(device)
    return x, torch.randn(n, 3, generator=gen, dtype=dtype).to(device)


def grads(model, loss_of, x):
    """Gradients of ``loss_of(x)``, by ``backward()``, for the input (as "input") and every
    parameter of ``model``; returns ``(grads, loss)``."""
    x = x.detach().clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    loss = loss_of(x)
    loss.backward()
    found = {"input": x.grad, **{name: p.grad for name, p in model.named_parameters()}}
    model.zero_grad(set_to_none=True)
    return found, loss.detach()


def native_grads(device, x, y):
    """:func:`grads` of the native MLP under ``F.mse_loss``."""
    model = mlp(device, manual=False)
    return grads(model, lambda x: F.mse_loss(model(x), y), x)


def assert_grads(got: dict, native: dict, rules="hand-derived", tol=None):
    """Each gradient has native's dtype and shape and equals it (times the known error of
    the wrong twins, :func:`scale`)."""
    assert got.keys() == native.keys()
    for name, g in got.items():
        assert g.dtype == native[name].dtype and g.shape == native[name].shape, name
        expected = scale(rules, name) * native[name]
        torch.testing.assert_close(g, expected, **(tol or tolerances(g.dtype)), msg=name)


def per_sample_loss(model, loss_fn):
    """``loss(params, x, y)`` of one sample, for ``vmap(grad(...))``."""

    def loss(params, x, y):
        return loss_fn(functional_call(model, params, (x[None],)), y[None])

    return loss


def native_per_sample_grads(device, x, y):
    """A plain loop of native per-sample gradients: {name: (N, *param.shape)}."""
    native = mlp(device, manual=False)
    rows = [
        torch.autograd.grad(F.mse_loss(native(x[i : i + 1]), y[i : i + 1]), native.parameters())
        for i in range(len(x))
    ]
    names = [name for name, _ in native.named_parameters()]
    return {
        name: torch.stack(col) for name, col in zip(names, zip(*rows, strict=True), strict=True)
    }
