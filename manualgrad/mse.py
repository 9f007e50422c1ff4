"""Mean squared error with a hand-derived backward: Function, functional form, module."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch.autograd import Function

from manualgrad._apply import ManualOp, autocast_dtype

__all__ = ["ManualMSEFunction", "mse_loss", "ManualMSELoss"]

_REDUCTIONS = ("mean", "sum", "none")


class ManualMSEFunction(Function):
    r"""``L = reduce((y_hat - y)^2)`` with the chain rule written out by hand.

    Shapes: ``y_hat`` and ``y`` broadcast to a common shape ``S`` with ``N`` elements;
    ``L`` is a scalar for ``'mean'`` and ``'sum'`` and has shape ``S`` for ``'none'``.

    Backward. Each element's square ``e = (y_hat - y)^2`` has ``de/dy_hat = 2 (y_hat - y)``
    and ``de/dy = -2 (y_hat - y)``. With the upstream gradient ``g`` (a scalar, or shape
    ``S`` for ``'none'``)::

        'mean':  dL/dy_hat = 2 (y_hat - y) g / N     (S)
        'sum':   dL/dy_hat = 2 (y_hat - y) g         (S)
        'none':  dL/dy_hat = 2 (y_hat - y) * g       (S, elementwise)
        dL/dy = -dL/dy_hat

    then each is summed back over the dimensions that broadcasting added or stretched, to
    the shape of its own input. Only the gradients that ``ctx.needs_input_grad`` asks for
    are formed; the backward recomputes ``y_hat - y`` from the saved inputs in
    differentiable ops, so double backward is exact.

    Forward-mode (jvp): ``dL = reduce(2 (y_hat - y) (d y_hat - d y))``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, target: Tensor, reduction: str) -> Tensor:
        return _reduce(torch.square(input - target), reduction)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, reduction = inputs
        ctx.save_for_backward(input, target)
        ctx.save_for_forward(input, target)
        ctx.reduction = reduction

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        input, target = ctx.saved_tensors
        need_input, need_target, _ = ctx.needs_input_grad
        if not (need_input or need_target):
            return None, None, None
        diff = input - target  # (S)
        if ctx.reduction == "mean":
            grad = diff * (grad_output * (2.0 / max(diff.numel(), 1)))  # 2 (y_hat - y) g / N
        else:
            grad = diff * (2.0 * grad_output)  # 2 (y_hat - y) g, elementwise for 'none'
        grad_input = grad.sum_to_size(input.shape) if need_input else None
        grad_target = grad.neg().sum_to_size(target.shape) if need_target else None
        return grad_input, grad_target, None

    @staticmethod
    def jvp(ctx, input_t: Tensor | None, target_t: Tensor | None, _):
        input, target = ctx.saved_tensors
        diff = input - target  # (S)
        if input_t is None:
            diff_t = -target_t
        elif target_t is None:
            diff_t = input_t
        else:
            diff_t = input_t - target_t
        return _reduce(2.0 * diff * diff_t, ctx.reduction)


def _reduce(elementwise: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return elementwise.mean()
    if reduction == "sum":
        return elementwise.sum()
    return elementwise


_mse = ManualOp(ManualMSEFunction)


def _check(input: Tensor, target: Tensor, reduction: str) -> None:
    """Raise the error the native op would, with a message that names the problem."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    if not (input.is_floating_point() or target.is_floating_point()):
        raise NotImplementedError(
            "mse_loss: expected floating-point input or target, "
            f"got {input.dtype} and {target.dtype}"
        )
    if input.device != target.device:
        raise RuntimeError(
            f"mse_loss: expected input and target on the same device, got {input.device} "
            f"and {target.device}"
        )
    if input.shape != target.shape:
        try:
            torch.broadcast_shapes(input.shape, target.shape)
        except RuntimeError as err:
            raise RuntimeError(
                f"mse_loss: input shape {tuple(input.shape)} and target shape "
                f"{tuple(target.shape)} cannot be broadcast together"
            ) from err
        warnings.warn(
            f"Using a target size ({target.size()}) that is different to the input size "
            f"({input.size()}). This will likely lead to incorrect results due to broadcasting. "
            "Please ensure they have the same size.",
            stacklevel=3,
        )


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Functional form of :class:`ManualMSELoss`.

    Same signature and semantics as :func:`torch.nn.functional.mse_loss`, including type
    promotion and broadcasting (with the same warning); see :class:`ManualMSEFunction`
    for the derivation of the backward.
    """
    _check(input, target, reduction)
    if autocast_dtype(input.device.type) is not None:
        # Autocast runs mse_loss in float32, like native: widen, then run with autocast off.
        dtype = torch.promote_types(torch.result_type(input, target), torch.float32)
        with torch.autocast(input.device.type, enabled=False):
            return _mse(input.to(dtype), target.to(dtype), reduction)
    if input.dtype != target.dtype:
        dtype = torch.result_type(input, target)
        input, target = input.to(dtype), target.to(dtype)
    return _mse(input, target, reduction)


class ManualMSELoss(nn.MSELoss):
    r"""Drop-in for :class:`torch.nn.MSELoss` whose backward is :class:`ManualMSEFunction`.

    Args:
        reduction: ``'mean'`` (default), ``'sum'`` or ``'none'``.

    Shape:
        - Input: ``(*)``, any shape.
        - Target: ``(*)``, the input's shape (or one broadcastable with it, with a warning).
        - Output: a scalar, or ``(*)`` for ``reduction='none'``.

    Examples::

        >>> loss = ManualMSELoss()
        >>> loss(torch.randn(3, 5, requires_grad=True), torch.randn(3, 5)).backward()
    """

    def __init__(self, reduction: str = "mean") -> None:
        if reduction not in _REDUCTIONS:
            raise ValueError(f"{reduction} is not a valid value for reduction")
        super().__init__(reduction=reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return mse_loss(input, target, self.reduction)
