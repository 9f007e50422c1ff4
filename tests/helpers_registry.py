"""Shared by the tests of the one native -> manual table (test_registry,
test_lightning_audit): a throwaway op, ``Exp``, that a test registers in the table alone."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd import Function

from manualgrad.ops._apply import ManualOp


class Exp(nn.Module):
    """A native module written by a user: ``torch.exp``, on autograd."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.exp(x)


class ExpFunction(Function):
    """``y = exp(x)``; ``dL/dx = G * y`` (the output is its own derivative), times
    ``FACTOR["backward"]``, which a test sets to 2 to plant a wrong derivation."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.exp(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return grad * y * FACTOR["backward"]


FACTOR = {"backward": 1.0}  # the fixtures set it with monkeypatch.setitem: restored after
_exp = ManualOp(ExpFunction)


class ManualExp(Exp):
    def forward(self, x: Tensor) -> Tensor:
        return _exp(x)
