"""Dropout with a hand-derived backward: the Function, its functional form, its module."""

from __future__ import annotations

import functools

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
    On CPU, ATen's ``_dropout`` draws ``noise = empty_like(X).bernoulli_(1 - p)`` and
    multiplies by ``noise.div_(1 - p)``; CPU ``bernoulli_`` draws the same stream whatever
    dtype it writes, so this forward draws ``M`` as bool directly and computes
    ``(X * M) * s``, with ``s`` the very value ``1 / (1 - p)`` native's noise holds: output
    and gradient equal native's to the bit (tested). The draw writes 1 byte per element,
    not 4, and no pass converts it (the fused ``torch.native_dropout`` rounds differently
    on CPU, e.g. at ``p = 1e-6``, so it is not used there). On CUDA (and xpu, lazy) native
    calls the fused ``torch.native_dropout``, and so does this forward: the same mask and
    output; the gradient differs from native's fused backward in rounding only. Under
    torch.compile the RNG is the compiler's: another mask, the same rule.
    """

    #: each gradient's formula, by forward argument (shown by manualgrad.explain)
    formulas = {
        "input": "dL/dX = G * M / (1 - p)  (*)",
    }

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, p: float, fused: bool) -> tuple[Tensor, Tensor]:
        if fused and p != 1:
            return torch.native_dropout(input, p, True)  # (Y, M): the fused kernel's own
        mask = _draw_mask(input, p)  # M  (*); for p = 1 a 0-dim False, nothing drawn
        return _masked(input, mask, p), mask  # X * M / (1 - p); X * 0 for p = 1, as ATen

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
        return _mask_(input, mask, p)  # X * M / (1 - p), into X  (*)

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
        return _mask_(input_t, mask, ctx.p)  # in place, as the input


def _scale(p: float, t: Tensor) -> float | Tensor | None:
    """``1 / (1 - p)`` as native's noise holds it for a kept element: ``1`` divided by
    ``1 - p`` in ``t``'s dtype (ATen's ``noise.div_(1 - p)``), exact in that dtype. So
    ``(v * M) * scale`` is native's ``v * noise`` to the bit: ``v * 1 * scale`` where
    ``M = 1``, and ``v * 0`` (a signed zero, NaN for inf or NaN) where ``M = 0``. None for
    ``p = 1``: nothing to scale (``v * 0``, as ATen: no ``1/0``)."""
    if p == 1:
        return None
    if torch.compiler.is_compiling():  # a 0-dim tensor the graph folds (.item() would break it)
        return torch.ones((), dtype=t.dtype, device=t.device).div_(1 - p)
    return _eager_scale(p, t.dtype)


@functools.lru_cache(maxsize=64)
def _eager_scale(p: float, dtype: torch.dtype) -> float:
    return torch.ones((), dtype=dtype).div_(1 - p).item()


def _masked(v: Tensor, mask: Tensor, p: float) -> Tensor:
    """``v * M / (1 - p)``, ``M`` bool: the forward's product and the rule of backward and
    jvp."""
    return _times_mask(v, mask, _scale(p, v))


@_fused.fused  # (not the forward's `fused` flag: that picks native's dropout kernel)
def _times_mask(v: Tensor, mask: Tensor, scale: float | Tensor | None) -> Tensor:
    """``(v * M) * scale``, fused on large eager tensors (the scale is looked up outside,
    so that the compiled loop multiplies by the very value native's noise holds). In eager
    code ``M`` is read as the uint8 it is stored as: the same 0/1 bytes, and ATen's CPU
    product with uint8 runs twice as fast as with bool (10 us against 21 at 16K elements);
    a compiled loop reads bool as fast, and a dtype view there would slow it down."""
    if not torch.compiler.is_compiling():
        mask = mask.view(torch.uint8)
    out = v.mul(mask)
    return out if scale is None else out.mul_(scale)  # a fresh temporary: in place


def _mask_(t: Tensor, mask: Tensor, p: float) -> Tensor:
    """``t *= M / (1 - p)``, in place: the in-place forward and its tangent. The scale is
    looked up first, so an integer ``t`` raises native's error before anything is written."""
    scale = _scale(p, t)
    t.mul_(mask)
    if scale is not None:
        t.mul_(scale)
    return t  # the object itself, as autograd and Dynamo want an in-place result back


def _draw_mask(input: Tensor, p: float) -> Tensor:
    """The bool mask native dropout draws with ``bernoulli_`` on a tensor like ``X`` (none
    for ``p = 1``: a 0-dim False). On the CPU, ATen's ``bernoulli_`` draws the same stream
    whatever dtype it writes (tested against native under the same seed), so the mask is
    drawn as bool directly, not in ``X``'s dtype and converted (a pass over memory)."""
    if p == 1:
        return torch.zeros((), dtype=torch.bool, device=input.device)
    if input.device.type == "cpu" and input.dtype in _DRAWN_AS_BOOL:
        return torch.empty_like(input, dtype=torch.bool).bernoulli_(1 - p)  # (*)
    return torch.empty_like(input).bernoulli_(1 - p).bool()  # drawn in X's dtype  (*)


# the dtypes whose CPU dropout draws its mask as bool; any other (integers, complex) is
# drawn in its own dtype, as natively, so that native's errors come out of native's calls
_DRAWN_AS_BOOL = frozenset({torch.float32, torch.float64, torch.bfloat16, torch.float16})


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
