"""Mean squared error with a hand-derived backward: Function, functional form, module."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd import Function

from manualgrad.ops._apply import ManualOp, autocast_dtype, warn_traceable
from manualgrad.ops._loss_checks import check_reduction

__all__ = ["ManualMSEFunction", "mse_loss", "ManualMSELoss"]


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
    are formed.

    The Function returns two outputs, ``L`` and ``D = y_hat - y``, and saves ``D`` for the
    backward rather than recomputing it from the inputs. Saving a tensor made inside
    ``forward`` would cut it off the graph, making double backward silently wrong; as an
    output, ``D`` stays on the graph through this Function, whose backward then also
    receives ``G_D = dL'/dD`` (nonzero only in double backward) and adds it by the chain rule:
    ``dL'/dy_hat = 2 D g [/ N] + G_D``. The wrappers return ``L`` alone.

    Forward-mode (jvp): ``dD = d y_hat - d y`` and ``dL = reduce(2 D dD)``.
    """

    #: each gradient's formula, by forward argument (shown by manualgrad.explain)
    formulas = {
        "input": "dL/dy_hat = 2 (y_hat - y) g / N ('sum': no / N), summed to y_hat's shape  (S)",
        "target": "dL/dy = -2 (y_hat - y) g / N ('sum': no / N), summed to y's shape  (S)",
    }

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, target: Tensor, reduction: str) -> tuple[Tensor, Tensor]:
        diff = input - target  # D  (S)
        if reduction == "none":
            return diff.square(), diff
        flat = diff.reshape(-1)
        total = torch.dot(flat, flat)  # sum of D^2 as one dot product: no squared temporary
        return (total / flat.numel() if reduction == "mean" else total), diff

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, reduction = inputs
        _, diff = output
        ctx.save_for_backward(diff)
        ctx.save_for_forward(diff)
        ctx.set_materialize_grads(False)  # the D output is unused outside double backward
        ctx.reduction = reduction
        ctx.shapes = input.shape, target.shape

    @staticmethod
    def backward(ctx, grad_loss: Tensor | None, grad_diff: Tensor | None):
        (diff,) = ctx.saved_tensors
        grad = grad_diff  # dL'/dD reaching D directly (None outside double backward)
        if grad_loss is not None:
            # 2 g / N for 'mean' (max: an empty input has an empty gradient), else 2 g; one
            # op on g, a scalar for 'mean'/'sum' and shape S for 'none'
            n = max(diff.numel(), 1) if ctx.reduction == "mean" else 1
            scale = grad_loss * (2.0 / n)
            grad = diff * scale if grad is None else grad + diff * scale  # 2 D g [/ N]
        if grad is None:
            return None, None, None
        need_input, need_target, _ = ctx.needs_input_grad
        input_shape, target_shape = ctx.shapes
        grad_input = _sum_to(grad, input_shape) if need_input else None  # dD/dy_hat = 1
        grad_target = _sum_to(grad.neg(), target_shape) if need_target else None  # dD/dy = -1
        return grad_input, grad_target, None

    @staticmethod
    def jvp(ctx, input_t: Tensor | None, target_t: Tensor | None, _):
        (diff,) = ctx.saved_tensors
        if input_t is None:
            diff_t = -target_t
        elif target_t is None:
            diff_t = input_t
        else:
            diff_t = input_t - target_t
        diff_t = diff_t.expand(diff.shape)  # dD (S)
        return _reduce(2.0 * diff * diff_t, ctx.reduction), diff_t


def _sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum a gradient over the dimensions broadcasting added or stretched, back to ``shape``."""
    return grad if grad.shape == shape else grad.sum_to_size(shape)


def _reduce(elementwise: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return elementwise.mean()
    if reduction == "sum":
        return elementwise.sum()
    return elementwise


_mse = ManualOp(ManualMSEFunction)


def _check(input: Tensor, target: Tensor, reduction: str) -> None:
    """Raise the error the native op would, with a message that names the problem."""
    check_reduction(reduction)
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
        warn_traceable(
            f"Using a target size ({target.size()}) that is different to the input size "
            f"({input.size()}). This will likely lead to incorrect results due to broadcasting. "
            "Please ensure they have the same size."
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
        dtype = torch.promote_types(torch.promote_types(input.dtype, target.dtype), torch.float32)
        with torch.autocast(input.device.type, enabled=False):
            return _mse(input.to(dtype), target.to(dtype), reduction)[0]
    if input.dtype != target.dtype:
        # F.mse_loss broadcasts both to one shape first, so dtypes promote as peers
        # (a 0-dim target counts), unlike torch.result_type.
        dtype = torch.promote_types(input.dtype, target.dtype)
        input, target = input.to(dtype), target.to(dtype)
    return _mse(input, target, reduction)[0]


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
        super().__init__(reduction=check_reduction(reduction))

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return mse_loss(input, target, self.reduction)
