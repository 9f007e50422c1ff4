"""Dropout with a hand-derived backward: the Function, its functional form, its module."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd import Function

from manualgrad.ops import _fused, _torch_private
from manualgrad.ops._apply import ManualOp

__all__ = ["ManualDropoutFunction", "ManualDropoutInplaceFunction", "dropout", "ManualDropout"]

# Devices where native F.dropout (out of place) draws its mask with the fused
# ``native_dropout`` kernel (ATen's ``is_fused_kernel_acceptable``); elsewhere it draws
# with ``bernoulli_`` on a tensor shaped like the input.
_FUSED_DEVICES = frozenset({"cuda", "xpu", "lazy", "privateuseone"})


class ManualDropoutFunction(Function):
    r"""``Y = X * M / (1 - p)``, ``M ~ Bernoulli(1 - p)`` elementwise, by hand.

    Shapes: ``X``, ``M`` and ``Y`` all ``(*)``, any shape; ``p`` is a Python float in
    ``(0, 1]``. (``p = 0``, ``training=False`` and empty inputs never get here: native
    dropout returns the input itself there, and so does :func:`dropout`.)

    Backward. One element is ``y = x m / (1 - p)`` with ``m`` in {0, 1} drawn once in forward
    and a constant from then on, so ``dy/dx = m / (1 - p)``. With ``G = dL/dY  (*)``::

        dL/dX = G * M / (1 - p)                    (*, elementwise)

    linear in ``G`` with a constant factor, so double backward is this same product
    (written in differentiable torch ops). ``p = 1``: ``Y = X * 0`` and ``dL/dX = G * 0``,
    as native computes them (no ``1/0``; ``inf * 0`` and ``NaN * 0`` are NaN, as natively).

    Forward-mode (jvp): ``dY = dX * M / (1 - p)``.

    Saved: the mask ``M`` as bool, 1 byte per element (a 0-dim False for ``p = 1``). Native
    autograd keeps no less: on CPU (and in place anywhere) it keeps ``M / (1 - p)`` in the
    input's dtype, on CUDA a bool mask. ``M`` is made inside forward, so it is returned as
    a second, non-differentiable output and saved as such (pytorch issue 104040); the
    wrapper returns ``Y`` alone.

    The mask is drawn with native's own calls, so under the same seed it is native's mask.
    On CPU: ``torch.empty_like(X).bernoulli_(1 - p)``, ``div_(1 - p)``, ``X * noise``, as
    ATen's ``_dropout``: output and gradient equal native's to the bit (tested; the fused
    ``torch.native_dropout`` rounds differently on CPU, e.g. at ``p = 1e-6``). On CUDA (and
    xpu, lazy) native calls the fused ``torch.native_dropout``, and so does this forward: the
    same mask and output; the gradient differs from native's fused backward in rounding
    only. Under torch.compile the RNG is the compiler's: another mask, the same rule.
    """

    #: each gradient's formula, by forward argument (shown by manualgrad.explain)
    formulas = {
        "input": "dL/dX = G * M / (1 - p)  (*)",
    }

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, p: float, fused: bool) -> tuple[Tensor, Tensor]:
        if p == 1:
            mask = torch.zeros((), dtype=torch.bool, device=input.device)  # nothing drawn
            return input * _scaled(mask, p, input.dtype), mask  # X * 0, as ATen
        if fused:
            return torch.native_dropout(input, p, True)  # (Y, M): the fused kernel's own
        noise = torch.empty_like(input).bernoulli_(1 - p)  # M, in X's dtype and layout  (*)
        mask = noise.bool()
        return input * noise.div_(1 - p), mask

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, p, _ = inputs
        _, mask = output
        ctx.mark_non_differentiable(mask)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(mask)
        ctx.save_for_forward(mask)
        ctx.p = p

    @staticmethod
    def backward(ctx, grad_output: Tensor | None, _grad_mask: None = None):
        if grad_output is None or not ctx.needs_input_grad[0]:
            return None, None, None
        (mask,) = ctx.saved_tensors
        return _masked(grad_output, mask, ctx.p), None, None  # G * M / (1 - p)

    @staticmethod
    def jvp(ctx, input_t: Tensor, _p: None, _fused: None):
        (mask,) = ctx.saved_tensors
        return _masked(input_t, mask, ctx.p), None  # dX * M / (1 - p)


class ManualDropoutInplaceFunction(Function):
    r"""``X *= M / (1 - p)`` in place: :class:`ManualDropoutFunction`'s rule,
    ``dL/dX = G * M / (1 - p)  (*)`` and ``dY = dX * M / (1 - p)`` (the tangent scaled in
    place, as the input is), with the bool mask ``M`` drawn by :func:`dropout` the way
    native in-place dropout draws it on every device (``bernoulli_`` on a tensor like
    ``X``, in ``X``'s dtype) and passed in.

    Why an input here: autograd lets a Function that modifies a view in place return one
    tensor only, and Dynamo wants that tensor to be the input itself; ``M`` is a constant
    (no gradient), so saving it as an input is right, and double backward stays right.
    Saved: ``M``, 1 byte per element; native keeps ``M / (1 - p)`` in ``X``'s dtype.
    """

    #: each gradient's formula, by forward argument (shown by manualgrad.explain)
    formulas = {
        "input": "dL/dX = G * M / (1 - p)  (*)",
    }

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, mask: Tensor, p: float) -> Tensor:
        input.mul_(_scaled(mask, p, input.dtype))  # X * M / (1 - p), into X  (*)
        return input

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, mask, p = inputs
        ctx.mark_dirty(input)
        ctx.save_for_backward(mask)
        ctx.save_for_forward(mask)
        ctx.p = p

    # the out-of-place rule, dL/dX = G * M / (1 - p), from the same saved M and ctx.p
    backward = staticmethod(ManualDropoutFunction.backward)

    @staticmethod
    def jvp(ctx, input_t: Tensor, _mask_t: None, _p: None):
        (mask,) = ctx.saved_tensors
        input_t.mul_(_scaled(mask, ctx.p, input_t.dtype))  # in place, as the input
        return input_t


def _scaled(mask: Tensor, p: float, dtype: torch.dtype) -> Tensor:
    """``M / (1 - p)`` in ``dtype`` (``(*)``, or a 0-dim zero for ``p = 1``): the ops
    native forward makes its noise with, so ``G * noise`` is native's gradient to the bit."""
    noise = mask.to(dtype)
    return noise if p == 1 else noise / (1 - p)


@_fused.fused  # (not the forward's `fused` flag: that picks native's dropout kernel)
def _masked(v: Tensor, mask: Tensor, p: float) -> Tensor:
    """``v * M / (1 - p)``: the rule of backward and jvp (fused on large eager tensors)."""
    return v * _scaled(mask, p, v.dtype)


def _draw_mask(input: Tensor, p: float) -> Tensor:
    """The bool mask native in-place dropout draws (none for ``p = 1``: a 0-dim False)."""
    if p == 1:
        return torch.zeros((), dtype=torch.bool, device=input.device)
    return torch.empty_like(input).bernoulli_(1 - p).bool()  # drawn in X's dtype  (*)


_dropout = ManualOp(ManualDropoutFunction)
_dropout_ = ManualOp(ManualDropoutInplaceFunction)

_LEAF_IN_PLACE = "a leaf Variable that requires grad is being used in an in-place operation."
_VIEW_OF_LEAF_IN_PLACE = (
    "a view of a leaf Variable that requires grad is being used in an in-place operation."
)


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Functional form of :class:`ManualDropout`.

    Same signature, semantics, random draws and errors as
    :func:`torch.nn.functional.dropout`; see :class:`ManualDropoutFunction` for the
    derivation of the backward.
    """
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not 0.0 <= p <= 1.0:  # NaN: native's C++ check raises a RuntimeError
        raise RuntimeError(f"dropout probability has to be between 0 and 1, but got {p}")
    if p == 0 or not training or input.numel() == 0:
        return input  # native returns the input itself: identity, no node of its own
    p = float(p)
    if not inplace:
        fused = input.device.type in _FUSED_DEVICES
        return _dropout(input, p, fused)[0]
    if input.requires_grad and torch.is_grad_enabled():  # checked before anything is
        if input.is_leaf:  # modified or drawn, as natively
            raise RuntimeError(_LEAF_IN_PLACE)
        if input._base is not None and input._base.is_leaf:
            raise RuntimeError(_VIEW_OF_LEAF_IN_PLACE)
    if _torch_private.functorch_active():
        # vmap cannot batch a Function that modifies its input (its generated rule returns
        # a copy): the out-of-place Function, drawing as in-place native does (bernoulli_,
        # never fused), then the result written back.
        return input.copy_(_dropout(input, p, False)[0])
    _dropout_(input, _draw_mask(input, p), p)
    return input  # itself, as natively (without grad mode, apply returns an alias)


class ManualDropout(nn.Dropout):
    r"""Drop-in for :class:`torch.nn.Dropout` whose backward is :class:`ManualDropoutFunction`.

    In training, zeroes each element with probability ``p`` and scales the rest by
    ``1 / (1 - p)``; in eval mode, the identity. Under the same seed it draws the mask
    native dropout draws.

    Args:
        p: probability of an element to be zeroed. Default: 0.5
        inplace: if ``True``, do the operation in place. Default: ``False``

    Shape:
        - Input: ``(*)``, any shape.
        - Output: ``(*)``, the input's shape.

    Examples::

        >>> layer = ManualDropout(p=0.2)
        >>> layer(torch.randn(20, 16)).shape
        torch.Size([20, 16])
    """

    def forward(self, input: Tensor) -> Tensor:
        return dropout(input, self.p, self.training, self.inplace)
