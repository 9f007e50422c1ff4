"""Layer normalisation with a hand-derived backward: the Function, its functional form, its
module."""

from __future__ import annotations

import numbers
import operator
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.autograd import Function

from manualgrad.ops._apply import ManualOp, autocast_dtype
from manualgrad.ops._fused import fused

__all__ = ["ManualLayerNormFunction", "layer_norm", "ManualLayerNorm"]


class ManualLayerNormFunction(Function):
    r"""``y = (x - mu) r w + b`` over the last dimensions, with the chain rule by hand.

    Shapes: ``x (*, S)`` where ``S = normalized_shape`` holds ``D`` elements; ``w`` and ``b``
    are ``S`` or None. Below every leading dimension is folded into ``N`` rows: ``x (N, D)``.
    Per row, ``mu = mean(x)``, ``var = mean((x - mu)^2)`` (biased), ``r = 1 / sqrt(var +
    eps)``, ``xhat = (x - mu) r``, and ``y = xhat * w + b``  ``(N, D)``.

    Backward (llm.c, ``doc/layernorm/layernorm.md``). With ``G = dL/dy  (N, D)``, the affine
    part gives ``dL/db = sum of G over rows  (D,)``, ``dL/dw = sum of G * xhat over rows
    (D,)`` and ``dL/dxhat = G * w  (N, D)``. Within a row, ``dmu/dx_j = 1/D`` and
    ``dr/dx_j = -r^3 (x_j - mu) / D = -r^2 xhat_j / D``, so
    ``dxhat_i/dx_j = r (delta_ij - 1/D - xhat_i xhat_j / D)``. Summing over ``i``::

        dL/dx = r (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))    (N, D)

    with the means over the row (``D = 1``, the scalar case: ``xhat = 0``, ``dL/dx = 0``).
    Only the gradients that ``ctx.needs_input_grad`` asks for are formed.

    The Function returns three outputs, ``y``, ``mu`` and ``r`` (``(*, 1, ..., 1)``, one per
    row), as :func:`torch.native_layer_norm` does, and saves ``x``, ``w``, ``mu`` and ``r``:
    what native autograd keeps, less ``b`` (its gradient needs nothing), and only those a
    requested gradient needs. ``mu`` and ``r`` are outputs, not forward intermediates, so
    they stay on the graph: in double backward this backward also receives ``G_mu`` and
    ``G_r`` and adds ``dL'/dx += G_mu / D - G_r r^2 xhat / D``. The wrappers return ``y``.
    Half and bfloat16 are computed in float32, as the native kernels do.

    Forward-mode (jvp), with ``dxc = dx - mean(dx)`` and ``m = mean(xhat * dxc)``::

        dmu = mean(dx)    dr = -r^2 m    dxhat = r (dxc - xhat m)     (N, D)
        dy = dxhat * w + xhat * dw + db

    The forward is :func:`torch.native_layer_norm`, the native kernel, so outputs agree to
    the bit and any difference lies in the backward.
    """

    #: each gradient's formula, by forward argument (shown by manualgrad.explain)
    formulas = {
        "input": "dL/dx = r (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), dxhat = G w  (N, D)",
        "weight": "dL/dw = sum of G * xhat over rows  (D,)",
        "bias": "dL/db = sum of G over rows  (D,)",
    }

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: Tensor,
        normalized_shape: tuple[int, ...],
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        return torch.native_layer_norm(input, normalized_shape, weight, bias, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, normalized_shape, weight, bias, eps = inputs
        _, mean, rstd = output
        need_input, _, need_weight, _, _ = ctx.needs_input_grad
        stats = need_input or need_weight  # dx and dw need xhat; db needs nothing
        ctx.save_for_backward(
            input if stats else None,
            weight if need_input else None,  # dx needs w; dw does not
            mean if stats else None,
            rstd if stats else None,
        )
        ctx.save_for_forward(input, weight, mean, rstd)  # dropped after forward
        ctx.set_materialize_grads(False)  # mu and r get gradients only in double backward
        ctx.normalized_shape = normalized_shape
        ctx.param_dtypes = tuple(None if t is None else t.dtype for t in (weight, bias))

    @staticmethod
    def backward(ctx, grad_out: Tensor | None, grad_mean: Tensor | None, grad_rstd: Tensor | None):
        need_input, _, need_weight, need_bias, _ = ctx.needs_input_grad
        grad_input, grad_weight, grad_bias = _vjp(
            grad_out,
            *ctx.saved_tensors,
            grad_mean,
            grad_rstd,
            ctx.normalized_shape,
            (need_input, need_weight, need_bias),
            ctx.param_dtypes,
        )
        return grad_input, None, grad_weight, grad_bias, None

    @staticmethod
    def jvp(ctx, input_t, _shape_t, weight_t, bias_t, _eps_t):
        input, weight, mean, rstd = ctx.saved_tensors
        shape = ctx.normalized_shape
        xhat, r = _normalized(input, mean, rstd, shape)  # (N, D), (N, 1)
        out_t, mean_t, rstd_t = torch.zeros_like(xhat), torch.zeros_like(r), torch.zeros_like(r)
        if input_t is not None:
            dx = _rows(input_t, shape).to(xhat.dtype)  # (N, D)
            mean_t = dx.mean(1, keepdim=True)  # dmu  (N, 1)
            dxc = dx - mean_t
            m = (xhat * dxc).mean(1, keepdim=True)  # (N, 1)
            rstd_t = -r * r * m  # dr
            dxhat = r * (dxc - xhat * m)  # (N, D)
            out_t = dxhat if weight is None else dxhat * weight.reshape(-1).to(xhat.dtype)
        if weight_t is not None:
            out_t = out_t + xhat * weight_t.reshape(-1).to(xhat.dtype)  # xhat * dw
        if bias_t is not None:
            out_t = out_t + bias_t.reshape(-1).to(xhat.dtype)  # db
        return (
            out_t.to(input.dtype).reshape(input.shape),
            mean_t.to(mean.dtype).reshape(mean.shape),
            rstd_t.to(rstd.dtype).reshape(rstd.shape),
        )


@fused
def _vjp(
    grad_out: Tensor | None,
    input: Tensor | None,
    weight: Tensor | None,
    mean: Tensor | None,
    rstd: Tensor | None,
    grad_mean: Tensor | None,
    grad_rstd: Tensor | None,
    shape: tuple[int, ...],
    needs: tuple[bool, bool, bool],
    param_dtypes: tuple[torch.dtype | None, torch.dtype | None],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(dL/dx, dL/dw, dL/db)``, each None unless ``needs`` asks for it: the backward's
    formulas, a plain function of the saved tensors (fused on large eager tensors)."""
    need_input, need_weight, need_bias = needs
    (weight_dtype, bias_dtype) = param_dtypes
    g = None if grad_out is None else _rows(grad_out, shape)  # G  (N, D)
    grad_input = grad_weight = grad_bias = None
    if need_bias and g is not None:
        grad_bias = _as(_as(g, _acc(g)).sum(0).view(shape), bias_dtype)  # sum of G over rows  S
    if need_input or need_weight:
        xhat, r = _normalized(input, mean, rstd, shape)  # (N, D), (N, 1)
        g = None if g is None else _as(g, xhat.dtype)
        if need_weight and g is not None:
            grad_weight = _as((g * xhat).sum(0).view(shape), weight_dtype)  # S
        if need_input:
            grad = _grad_input(g, weight, xhat, r, grad_mean, grad_rstd)  # (N, D)
            grad_input = None if grad is None else _as(grad, input.dtype).reshape(input.shape)
    return grad_input, grad_weight, grad_bias


def _grad_input(
    g: Tensor | None,
    weight: Tensor | None,
    xhat: Tensor,
    r: Tensor,
    grad_mean: Tensor | None,
    grad_rstd: Tensor | None,
) -> Tensor | None:
    """``dL/dx  (N, D)``: the three-term form through ``y``, plus what reaches ``x`` through
    the ``mu`` and ``r`` outputs in double backward (``dmu/dx = 1/D``,
    ``dr/dx = -r^2 xhat / D``). None when no gradient reaches ``x``."""
    terms = []
    d = max(xhat.shape[1], 1)  # D (max: an empty row has an empty gradient)
    if g is not None:
        dxhat = g if weight is None else g * _as(weight.reshape(-1), g.dtype)  # G * w  (N, D)
        sum_dxhat = dxhat.sum(1, keepdim=True)  # D mean(dxhat)  (N, 1)
        sum_dxhat_xhat = (dxhat * xhat).sum(1, keepdim=True)  # D mean(dxhat xhat)  (N, 1)
        # r (dxhat - xhat sum(dxhat xhat) / D - sum(dxhat) / D): the means as sums, whose
        # 1/D rides on the ops that use them (a mean is a sum and a division: two passes)
        centred = torch.addcmul(dxhat, xhat, sum_dxhat_xhat, value=-1 / d)
        terms.append(centred.sub_(sum_dxhat, alpha=1 / d).mul_(r))
    if grad_mean is not None:
        terms.append((_per_row(grad_mean).to(r.dtype) / d).expand_as(xhat))  # G_mu / D
    if grad_rstd is not None:
        terms.append(-(_per_row(grad_rstd).to(r.dtype) * r * r / d) * xhat)  # -G_r r^2 xhat / D
    grad = None
    for term in terms:
        grad = term if grad is None else grad + term
    return grad


def _as(t: Tensor, dtype: torch.dtype | None) -> Tensor:
    """``t`` in ``dtype``: itself when it has it already (no call into torch: a backward
    on small tensors is mostly such calls)."""
    return t if t.dtype == dtype or dtype is None else t.to(dtype)


def _acc(t: Tensor) -> torch.dtype:
    """The dtype to compute in: float32 for half and bfloat16 (as the native kernels do)."""
    return torch.promote_types(t.dtype, torch.float32)


def _normalized(
    input: Tensor, mean: Tensor, rstd: Tensor, shape: tuple[int, ...]
) -> tuple[Tensor, Tensor]:
    """``xhat = (x - mu) r  (N, D)`` and ``r  (N, 1)``, recomputed from the saved tensors."""
    acc = _acc(input)
    r = _as(_per_row(rstd), acc)  # (N, 1)
    return (_as(_rows(input, shape), acc) - _as(_per_row(mean), acc)) * r, r


def _rows(t: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``(*, S) -> (N, D)``: the normalised dimensions folded into one, the leading ones into
    another (explicit sizes: either may be 0)."""
    lead = t.dim() - len(shape)
    return t.reshape(t.shape[:lead].numel(), t.shape[lead:].numel())


def _per_row(t: Tensor) -> Tensor:
    """A per-row statistic ``(*, 1, ..., 1) -> (N, 1)``."""
    return t.reshape(-1, 1)


_layer_norm = ManualOp(ManualLayerNormFunction)

_REDUCED = (torch.float16, torch.bfloat16)


def _as_shape(normalized_shape: Sequence[int]) -> tuple[int, ...]:
    """``normalized_shape`` as a tuple of ints, or the TypeError native raises."""
    if type(normalized_shape) is tuple and all(type(s) is int for s in normalized_shape):
        return normalized_shape  # the common case (nn.LayerNorm's attribute), checked fast
    if not isinstance(normalized_shape, (tuple, list, torch.Size)):
        raise TypeError(
            "layer_norm(): argument 'normalized_shape' must be a tuple of ints, not "
            f"{type(normalized_shape).__name__}"
        )
    for pos, size in enumerate(normalized_shape):
        if isinstance(size, (bool, float)) or not hasattr(type(size), "__index__"):
            raise TypeError(
                "layer_norm(): argument 'normalized_shape' must be a tuple of ints, but found "
                f"element of type {type(size).__name__} at pos {pos}"
            )
    # an integer-like size (numpy int, 0-dim integer tensor) as an int; a SymInt stays one
    return tuple(
        s if isinstance(s, (int, torch.SymInt)) else operator.index(s) for s in normalized_shape
    )


def _as_eps(eps: float) -> float:
    """``eps`` as a float (from any real number or one-element tensor, as native takes)."""
    if isinstance(eps, float):
        return eps
    if isinstance(eps, numbers.Real) or (isinstance(eps, Tensor) and eps.numel() == 1):
        return float(eps)
    raise TypeError(f"layer_norm(): argument 'eps' must be float, not {type(eps).__name__}")


def _check(
    input: Tensor, shape: tuple[int, ...], weight: Tensor | None, bias: Tensor | None
) -> None:
    """Raise the error the native op would when the arguments are bad (one quick test)."""
    d = len(shape)
    params = [t for t in (weight, bias) if t is not None]
    ok = (
        d > 0
        and all(t.shape == shape for t in params)
        and input.dim() >= d
        and input.shape[input.dim() - d :] == shape
        and input.is_floating_point()
        and all(t.device == input.device for t in params)
        and (
            all(t.dtype == input.dtype for t in params)
            or (input.dtype in _REDUCED and all(t.dtype == torch.float32 for t in params))
        )
    )
    if not ok:
        _raise_bad_input(input, shape, weight, bias)


def _raise_bad_input(
    input: Tensor, shape: tuple[int, ...], weight: Tensor | None, bias: Tensor | None
) -> None:
    """The error the native op would raise (its type, in its order), naming the problem."""
    if not shape:
        raise RuntimeError(
            "layer_norm: normalized_shape must have at least one element, got normalized_shape=()"
        )
    params = {name: t for name, t in (("weight", weight), ("bias", bias)) if t is not None}
    for name, t in params.items():
        if t.shape != shape:
            raise RuntimeError(
                f"layer_norm: {name} must have shape normalized_shape={shape}, "
                f"got {name} of shape {tuple(t.shape)}"
            )
    d = len(shape)
    if input.dim() < d or input.shape[input.dim() - d :] != shape:
        raise RuntimeError(
            f"layer_norm: normalized_shape={shape} must be the input's last {d} "
            f"dimension(s), i.e. input of shape (*, {', '.join(map(str, shape))}), "
            f"but got input of shape {tuple(input.shape)}"
        )
    if not input.is_floating_point():
        raise NotImplementedError(f"layer_norm: expected a floating-point input, got {input.dtype}")
    for name, t in params.items():
        if t.device != input.device:
            raise RuntimeError(
                f"layer_norm: expected all tensors on the same device, got input on "
                f"{input.device} and {name} on {t.device}"
            )
    got = ", ".join(f"{name} {t.dtype}" for name, t in params.items())
    raise RuntimeError(
        f"layer_norm: weight and bias must have the input's dtype ({input.dtype}), or all be "
        f"torch.float32 with a float16/bfloat16 input; got {got}"
    )


def layer_norm(
    input: Tensor,
    normalized_shape: list[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Functional form of :class:`ManualLayerNorm`: normalise over the last
    ``len(normalized_shape)`` dimensions, then scale by ``weight`` and shift by ``bias``.

    Same signature and semantics as :func:`torch.nn.functional.layer_norm`; see
    :class:`ManualLayerNormFunction` for the derivation of the backward.
    """
    shape, eps = _as_shape(normalized_shape), _as_eps(eps)
    device_type = input.device.type
    if device_type != "cpu" and autocast_dtype(device_type) is not None:
        # Autocast runs layer_norm in float32 on CUDA (and MPS, XPU), like native: widen
        # what autocast would (floating point, not float64), then run with autocast off.
        # On CPU layer_norm is on no autocast list: it runs in the input's dtype.
        input, weight, bias = (
            t.float() if t is not None and t.dtype in _REDUCED else t for t in (input, weight, bias)
        )
        _check(input, shape, weight, bias)
        with torch.autocast(device_type, enabled=False):
            return _layer_norm(input, shape, weight, bias, eps)[0]
    _check(input, shape, weight, bias)
    return _layer_norm(input, shape, weight, bias, eps)[0]


class ManualLayerNorm(nn.LayerNorm):
    r"""Drop-in for :class:`torch.nn.LayerNorm` whose backward is
    :class:`ManualLayerNormFunction`.

    Applies ``y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias`` over the last
    ``len(normalized_shape)`` dimensions (biased variance). Being a subclass of
    ``nn.LayerNorm``, it has the same constructor, initialisation (weight ones, bias zeros),
    state_dict keys and repr.

    Args:
        normalized_shape: the shape of the trailing dimensions to normalise over (an int
            means the last dimension alone).
        eps: added to the variance for numerical stability. Default: ``1e-5``.
        elementwise_affine: if ``True``, learn a per-element ``weight`` (and ``bias``).
            Default: ``True``.
        bias: if ``False`` (with ``elementwise_affine``), learn no additive bias.
            Default: ``True``.
        device: where the parameters are created.
        dtype: dtype of the parameters.

    Shape:
        - Input: ``(*, *normalized_shape)``.
        - Output: the input's shape.

    Examples::

        >>> norm = ManualLayerNorm(10)
        >>> norm(torch.randn(20, 5, 10)).shape
        torch.Size([20, 5, 10])
    """

    def forward(self, input: Tensor) -> Tensor:
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)
