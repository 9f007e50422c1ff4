"""The hand-derived ops under activation checkpointing (reentrant or not, with or without
autocast): the gradients of the plain run and of native autograd, and (with ``rules``) the
hand-derived backward really ran when the checkpointed forward was recomputed."""

from __future__ import annotations

import pytest
import torch
from conftest import tolerances
from helpers_compose import assert_grads, batch, grads, mlp
from torch import nn
from torch.utils.checkpoint import checkpoint

from manualgrad import ManualMSELoss


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "autocast-bf16"])
def test_checkpoint_gives_the_same_gradients(use_reentrant, autocast, rules, device):
    x, y = batch(device)
    model = mlp(device)

    def loss_of(model, loss_fn, wrap):
        def run(x):
            with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
                return loss_fn(wrap(model, x), y)

        return run

    def checkpointed(model, x):
        return checkpoint(model, x, use_reentrant=use_reentrant)

    got, loss = grads(model, loss_of(model, ManualMSELoss(), checkpointed), x)
    plain, loss_p = grads(model, loss_of(model, ManualMSELoss(), lambda m, x: m(x)), x)
    native_model = mlp(device, manual=False)
    native, _ = grads(native_model, loss_of(native_model, nn.MSELoss(), lambda m, x: m(x)), x)
    tol = tolerances(torch.bfloat16) if autocast else None
    torch.testing.assert_close(loss, loss_p)
    assert_grads(got, plain, tol=tol)
    assert_grads(got, native, rules, tol=tol)
