"""Linear layer with a hand-derived backward: the Function, its functional form, its module."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd import Function
from torch.nn import functional as F

from manualgrad.ops import _torch_private
from manualgrad.ops._apply import ManualOp, autocast_dtype

__all__ = ["ManualLinearFunction", "linear", "ManualLinear"]


class ManualLinearFunction(Function):
    r"""``Y = X W^T + b`` with the chain rule written out by hand.

    Shapes: ``X (*, in)``, ``W (out, in)``, ``b (out,)`` or None, ``Y (*, out)``, where
    ``*`` is any number of leading dimensions (none for a single sample).

    Backward. Given the upstream gradient ``G = dL/dY  (*, out)``, one output element is
    ``Y[n, o] = sum_i X[n, i] W[o, i] + b[o]``, so ``dY[n, o]/dX[n, i] = W[o, i]``,
    ``dY[n, o]/dW[o, i] = X[n, i]`` and ``dY[n, o]/db[o] = 1``. Summing over every path::

        dL/dX = G W                                  (*, in)
        dL/dW = G^T X, summed over leading dims      (out, in)
        dL/db = sum of G over leading dims           (out,)

    (With one sample, ``in = out = 1``: ``dL/dw = g x`` and ``dL/db = g``, the tutorial's
    single neuron.) Only the gradients that ``ctx.needs_input_grad`` asks for are formed,
    and each is built from differentiable ops, so double backward works.

    Forward-mode (jvp). The tangent of ``Y`` is the product rule applied to ``X W^T + b``::

        dY = dX W^T + X dW^T + db                    (*, out)

    The forward itself calls :func:`torch.nn.functional.linear`, the same kernel the native
    layer uses, so outputs agree to the bit and any difference lies in the backward.
    """

    #: each gradient's formula, by forward argument (shown by manualgrad.explain)
    formulas = {
        "input": "dL/dX = G W  (*, in)",
        "weight": "dL/dW = G^T X, summed over leading dims  (out, in)",
        "bias": "dL/db = sum of G over leading dims  (out,)",
    }

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        # (*, in) input: F.linear would return its (N, out) product reshaped, a view, and a
        # view of a tensor made inside a Function cannot be modified in place later (say by
        # a ReLU(inplace=True)). So the same product is written into a (*, out) tensor,
        # where that is a plain eager Function call (grad mode is off inside one; it is on
        # where manualgrad.explain differentiates this forward natively).
        if (
            input.dim() <= 2
            or torch.is_grad_enabled()
            or torch.compiler.is_compiling()
            or _torch_private.functorch_active()
        ):
            return F.linear(input, weight, bias)
        out_features = weight.shape[0]
        output = input.new_empty(*input.shape[:-1], out_features)
        n = input.shape[:-1].numel()  # N (explicit: -1 is ambiguous with zero-size shapes)
        rows, flat = input.reshape(n, input.shape[-1]), output.view(n, out_features)
        if bias is None:
            torch.mm(rows, weight.t(), out=flat)  # X W^T  (N, out)
        else:
            torch.addmm(bias, rows, weight.t(), out=flat)  # X W^T + b  (N, out)
        return output

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias = inputs
        need_input, need_weight, _ = ctx.needs_input_grad
        # dX needs only W, dW only X: keep just those, as native autograd does.
        ctx.save_for_backward(input if need_weight else None, weight if need_input else None)
        ctx.save_for_forward(input, weight)
        ctx.out_shape = output.shape

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        input, weight = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad
        grad_input = grad_weight = grad_bias = None
        if need_input:
            grad_input = grad_output @ weight  # (*, in)
        if need_weight or need_bias:
            grad_2d = _rows(grad_output)  # (N, out)
            if need_weight:
                grad_weight = grad_2d.t() @ _rows(input)  # (out, in)
            if need_bias:
                grad_bias = grad_2d.sum(0)  # (out,)
        return grad_input, grad_weight, grad_bias

    @staticmethod
    def jvp(ctx, input_t: Tensor | None, weight_t: Tensor | None, bias_t: Tensor | None):
        input, weight = ctx.saved_tensors
        out_t = torch.zeros(ctx.out_shape, dtype=weight.dtype, device=weight.device)
        if input_t is not None:
            out_t = out_t + input_t @ weight.t()  # dX W^T
        if weight_t is not None:
            out_t = out_t + input @ weight_t.t()  # X dW^T
        if bias_t is not None:
            out_t = out_t + bias_t  # db, broadcast over leading dims
        return out_t


def _rows(t: Tensor) -> Tensor:
    """``(*, k) -> (N, k)``: every leading dimension folded into one (explicit N: k may be 0)."""
    if t.dim() == 2:
        return t  # already (N, k): skip the reshape, a few microseconds per call
    return t.reshape(t.shape[:-1].numel(), t.shape[-1])


_linear = ManualOp(ManualLinearFunction)


def _check(input: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    """Raise the error the native op would when the arguments are bad (one quick test)."""
    ok = (
        input.dim() > 0
        and weight.dim() == 2
        and input.shape[-1] == weight.shape[1]
        and input.is_floating_point()
        and weight.dtype == input.dtype
        and weight.device == input.device
        and (
            bias is None
            or (
                bias.shape == weight.shape[:1]
                and bias.dtype == input.dtype
                and bias.device == input.device
            )
        )
    )
    if not ok:
        _raise_bad_input(input, weight, bias)


def _raise_bad_input(input: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    """The RuntimeError the native op would raise, with a message that names the problem."""
    if input.dim() == 0:
        raise RuntimeError("linear: input must have at least 1 dimension, got a 0-dim tensor")
    if weight.dim() != 2:
        raise RuntimeError(
            "linear: weight must be 2-D (out_features, in_features), "
            f"got shape {tuple(weight.shape)}"
        )
    if input.shape[-1] != weight.shape[1]:
        raise RuntimeError(
            f"linear: input has {input.shape[-1]} features in its last dimension "
            f"(shape {tuple(input.shape)}) but weight expects in_features={weight.shape[1]}"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise RuntimeError(
            f"linear: bias must have shape ({weight.shape[0]},) to match out_features, "
            f"got {tuple(bias.shape)}"
        )
    tensors = (input, weight) if bias is None else (input, weight, bias)
    for t in tensors:
        if not t.is_floating_point():
            raise RuntimeError(f"linear: expected floating-point tensors, got {t.dtype}")
    for t in tensors[1:]:
        if t.dtype != input.dtype:
            raise RuntimeError(
                f"linear: expected input and parameters of the same dtype, got input "
                f"{input.dtype} and {'weight' if t is weight else 'bias'} {t.dtype}"
            )
        if t.device != input.device:
            raise RuntimeError(
                f"linear: expected all tensors on the same device, got input on {input.device} "
                f"and {'weight' if t is weight else 'bias'} on {t.device}"
            )


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Functional form of :class:`ManualLinear`: ``input @ weight.T + bias``.

    Same signature and semantics as :func:`torch.nn.functional.linear`; see
    :class:`ManualLinearFunction` for the derivation of the backward.
    """
    dtype = autocast_dtype(input.device.type)
    if dtype is not None:
        # Autocast runs linear in low precision: cast what autocast would cast (floating
        # point, not float64), then run with autocast off so backward sees one dtype.
        input, weight, bias = (
            t.to(dtype)
            if t is not None and t.is_floating_point() and t.dtype != torch.float64
            else t
            for t in (input, weight, bias)
        )
        _check(input, weight, bias)
        with torch.autocast(input.device.type, enabled=False):
            return _linear(input, weight, bias)
    _check(input, weight, bias)
    return _linear(input, weight, bias)


class ManualLinear(nn.Linear):
    r"""Drop-in for :class:`torch.nn.Linear` whose backward is :class:`ManualLinearFunction`.

    Applies ``y = x W^T + b``. Being a subclass of ``nn.Linear``, it has the same
    constructor, initialisation (under the same seed) and state_dict keys; its repr differs
    only in the class name (``ManualLinear(in_features=..., ...)``).

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: if ``False``, the layer learns no additive bias. Default: ``True``.
        device: where the parameters are created.
        dtype: dtype of the parameters.

    Shape:
        - Input: ``(*, in_features)``, where ``*`` is any number of dimensions, none included.
        - Output: ``(*, out_features)``.

    Examples::

        >>> layer = ManualLinear(20, 30)
        >>> layer(torch.randn(128, 20)).shape
        torch.Size([128, 30])
    """

    def forward(self, input: Tensor) -> Tensor:
        return linear(input, self.weight, self.bias)
