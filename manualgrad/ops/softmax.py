"""Softmax and log-softmax with hand-derived backwards: Functions, functional forms, modules."""

from __future__ import annotations

import operator
import warnings

import torch
from torch import Tensor, nn
from torch.autograd import Function

from manualgrad.ops._apply import ManualOp, autocast_dtype, warn_traceable
from manualgrad.ops._fused import fused

__all__ = [
    "ManualSoftmaxFunction",
    "ManualLogSoftmaxFunction",
    "softmax",
    "log_softmax",
    "ManualSoftmax",
    "ManualLogSoftmax",
]


class _KeepsOutput(Function):
    """Plumbing (a first reader may skip it): what softmax and log-softmax share. Each keeps
    its output alone (for backward and jvp), the ``dim``, and the input's dtype that the
    gradient is cast back to; torch's generated vmap rule serves both."""

    generate_vmap_rule = True

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, dim, _ = inputs
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)
        ctx.dim, ctx.input_dtype = dim, input.dtype


class ManualSoftmaxFunction(_KeepsOutput):
    r"""``Y = softmax(X)`` along ``dim``, with the chain rule written out by hand.

    Shapes: ``X`` and ``Y`` have any shape ``(*)`` (0-dim and empty included); ``dim`` is
    one of its dimensions, call its size ``K``. Each slice along ``dim`` is independent.

    Forward. For one slice ``x (K,)``: ``y_i = exp(x_i - m) / sum_k exp(x_k - m)`` with
    ``m = max_k x_k`` (the shift changes nothing but keeps ``exp`` finite). It calls
    torch's own softmax kernel, so outputs agree with native to the bit.

    Backward. With ``S = sum_k exp(x_k)``, the quotient rule gives
    ``dy_i/dx_j = (delta_ij exp(x_i) S - exp(x_i) exp(x_j)) / S^2 = y_i (delta_ij - y_j)``,
    i.e. the Jacobian ``J = diag(y) - y y^T  (K, K)``, which is symmetric. For an upstream
    gradient ``g = dL/dy  (K,)``: ``dL/dx_j = sum_i g_i y_i (delta_ij - y_j)
    = y_j (g_j - sum_i g_i y_i)``. Over the whole tensor, with ``G = dL/dY``::

        dL/dX = Y * (G - sum(G * Y, dim, keepdim=True))       (*)

    (the sum has size 1 along ``dim`` and broadcasts back).

    Forward-mode (jvp). ``J`` is symmetric, so the tangent is the same formula applied to
    the input tangent: ``dY = Y * (dX - sum(Y * dX, dim, keepdim=True))  (*)``.

    Keeps: only the output ``Y`` (as native autograd does): both formulas need nothing
    else. ``Y`` is an output of this Function, so in double backward the gradient reaching
    it flows through this node again and second derivatives are right.

    ``dtype`` (as in :func:`torch.softmax`) casts ``X`` before the op; the gradient is
    computed in ``Y``'s dtype and cast back to ``X``'s, as native does.

    Reference: the derivation of the softmax Jacobian in Bishop, *Pattern Recognition and
    Machine Learning* (2006), eq. 4.106; PyTorch's ``_softmax_backward_data``.
    """

    #: each gradient's formula, by forward argument (shown by manualgrad.explain)
    formulas = {
        "input": "dL/dX = Y * (G - sum(G * Y, dim, keepdim=True))  (*)",
    }

    @staticmethod
    def forward(input: Tensor, dim: int, dtype: torch.dtype | None) -> Tensor:
        return input.softmax(dim) if dtype is None else input.softmax(dim, dtype=dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (output,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        grad_input = _symmetric_jacobian_product(output, grad_output, ctx.dim)
        return grad_input.to(ctx.input_dtype), None, None

    @staticmethod
    def jvp(ctx, input_t: Tensor, _dim, _dtype):
        (output,) = ctx.saved_tensors
        output_t = _symmetric_jacobian_product(output, input_t.to(output.dtype), ctx.dim)
        return output_t.to(output.dtype)  # CUDA autocast would widen the sum to float32


@fused
def _symmetric_jacobian_product(y: Tensor, v: Tensor, dim: int) -> Tensor:
    """``(diag(y) - y y^T) v`` on every slice along ``dim``: ``y * (v - sum(y * v))``."""
    yv = y * v  # (*)
    return torch.addcmul(yv, y, yv.sum(dim, keepdim=True), value=-1)  # y v - y sum(y v)  (*)


@fused
def _log_softmax_vjp(g: Tensor, z: Tensor, dim: int) -> Tensor:
    """``J^T g = g - exp(z) sum(g)`` on every slice along ``dim``."""
    total = g.sum(dim, keepdim=True)  # sum(G): size 1 along dim
    return torch.addcmul(g, z.exp(), total, value=-1)  # G - p sum(G)  (*)


class ManualLogSoftmaxFunction(_KeepsOutput):
    r"""``Z = log_softmax(X)`` along ``dim``, with the chain rule written out by hand.

    Shapes: as :class:`ManualSoftmaxFunction`: ``X``, ``Z`` of any shape ``(*)``, slices
    of size ``K`` along ``dim``.

    Forward. For one slice: ``z_i = x_i - logsumexp(x) = x_i - m - log sum_k exp(x_k - m)``
    with ``m = max_k x_k``. It calls torch's own log_softmax kernel (bit-equal outputs).

    Backward. ``d logsumexp(x) / dx_j = exp(x_j) / sum_k exp(x_k) = p_j`` with
    ``p = softmax(x) = exp(z)``, so ``dz_i/dx_j = delta_ij - p_j``: the Jacobian is
    ``J = I - 1 p^T  (K, K)``. For ``g = dL/dz``: ``dL/dx_j = g_j - p_j sum_i g_i``. Over the
    whole tensor, with ``G = dL/dZ``::

        dL/dX = G - exp(Z) * sum(G, dim, keepdim=True)        (*)

    Forward-mode (jvp). ``dZ = J dX = dX - sum(exp(Z) * dX, dim, keepdim=True)  (*)``.

    Keeps: only the output ``Z`` (as native autograd does); ``p`` is recomputed as
    ``exp(Z)``. ``Z`` is an output of this Function, so double backward is right.
    ``dtype`` casts ``X`` before the op and the gradient goes back in ``X``'s dtype.

    Reference: Goodfellow, Bengio, Courville, *Deep Learning* (2016), section 6.2.2.3;
    PyTorch's ``_log_softmax_backward_data``.
    """

    #: each gradient's formula, by forward argument (shown by manualgrad.explain)
    formulas = {
        "input": "dL/dX = G - exp(Z) * sum(G, dim, keepdim=True)  (*)",
    }

    @staticmethod
    def forward(input: Tensor, dim: int, dtype: torch.dtype | None) -> Tensor:
        return input.log_softmax(dim) if dtype is None else input.log_softmax(dim, dtype=dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (output,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        grad_input = _log_softmax_vjp(grad_output, output, ctx.dim)  # G - p sum(G)
        return grad_input.to(ctx.input_dtype), None, None

    @staticmethod
    def jvp(ctx, input_t: Tensor, _dim, _dtype):
        (output,) = ctx.saved_tensors
        input_t = input_t.to(output.dtype)
        mean = (output.exp() * input_t).sum(ctx.dim, keepdim=True)  # sum(p dX): size 1 on dim
        return (input_t - mean).to(output.dtype)  # CUDA autocast would widen exp, sum


_softmax = ManualOp(ManualSoftmaxFunction)
_log_softmax = ManualOp(ManualLogSoftmaxFunction)


def _implicit_dim(name: str, ndim: int, stacklevel: int) -> int:
    """The dim torch picks when none is given (0 for 0-, 1- and 3-D input, else 1), with
    its deprecation warning pointing ``stacklevel`` frames up, as native."""
    message = (
        f"Implicit dimension choice for {name} has been deprecated. "
        "Change the call to include dim=X as an argument."
    )
    if torch.compiler.is_compiling():
        warn_traceable(message)  # once, while tracing, as torch's own softmax does
    else:
        warnings.warn(message, stacklevel=stacklevel)
    return 0 if ndim in (0, 1, 3) else 1


def _check_dim(name: str, input: Tensor, dim: object, stacklevel: int) -> int:
    """``dim`` as an int in range for ``input``, or the native exception type saying why;
    for None, the implicit dim, warning ``stacklevel`` frames up from the caller."""
    if dim is None:
        dim = _implicit_dim(name, input.dim(), stacklevel + 1)  # + 1: this frame
    if type(dim) is not int:
        if isinstance(dim, bool) or not hasattr(dim, "__index__"):
            raise TypeError(f"{name}(): argument 'dim' must be int, not {type(dim).__name__}")
        dim = operator.index(dim)  # numpy integers, 0-dim integer tensors: as native
    size = max(input.dim(), 1)  # a 0-dim tensor takes dim 0 or -1
    if not -size <= dim < size:
        raise IndexError(
            f"{name}(): Dimension out of range (expected to be in range of [{-size}, "
            f"{size - 1}], but got dim={dim}) for a {input.dim()}-D input"
        )
    return dim


def _autocast_dtype(input: Tensor, dtype: torch.dtype | None) -> torch.dtype | None:
    """The dtype argument native softmax ends up with under autocast. CUDA (and the other
    accelerators) run softmax in float32 ("fp32_set_opt_dtype": an explicit dtype wins;
    float64 input is left alone); CPU autocast leaves softmax out, so it keeps its dtype."""
    if (
        dtype is None
        and input.device.type != "cpu"
        and input.is_floating_point()
        and input.dtype != torch.float64
        and autocast_dtype(input.device.type) is not None
    ):
        return torch.float32
    return dtype


def softmax(
    input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype: torch.dtype | None = None
) -> Tensor:
    """Functional form of :class:`ManualSoftmax`.

    Same signature and semantics as :func:`torch.nn.functional.softmax` (including the
    warning when ``dim`` is None); see :class:`ManualSoftmaxFunction` for the derivation.
    """
    dim = _check_dim("softmax", input, dim, _stacklevel)
    return _softmax(input, dim, _autocast_dtype(input, dtype))


def log_softmax(
    input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype: torch.dtype | None = None
) -> Tensor:
    """Functional form of :class:`ManualLogSoftmax`.

    Same signature and semantics as :func:`torch.nn.functional.log_softmax` (including the
    warning when ``dim`` is None); see :class:`ManualLogSoftmaxFunction` for the derivation.
    """
    dim = _check_dim("log_softmax", input, dim, _stacklevel)
    return _log_softmax(input, dim, _autocast_dtype(input, dtype))


class ManualSoftmax(nn.Softmax):
    r"""Drop-in for :class:`torch.nn.Softmax` whose backward is :class:`ManualSoftmaxFunction`.

    Rescales every slice along ``dim`` to lie in ``[0, 1]`` and sum to 1:
    ``softmax(x)_i = exp(x_i) / sum_j exp(x_j)``. A subclass of ``nn.Softmax``: same
    constructor, attributes, repr and (empty) state_dict.

    Args:
        dim: the dimension along which softmax is computed. ``None`` (deprecated, with
            native's warning) picks 0 for 0-, 1- and 3-D input and 1 otherwise.

    Shape:
        - Input: ``(*)``, any shape.
        - Output: ``(*)``, the input's shape.

    Examples::

        >>> m = ManualSoftmax(dim=1)
        >>> m(torch.randn(2, 3)).sum(1)
        tensor([1.0000, 1.0000])
    """

    def forward(self, input: Tensor) -> Tensor:
        return softmax(input, self.dim, _stacklevel=5)


class ManualLogSoftmax(nn.LogSoftmax):
    r"""Drop-in for :class:`torch.nn.LogSoftmax` whose backward is
    :class:`ManualLogSoftmaxFunction`.

    Applies ``log_softmax(x)_i = x_i - log sum_j exp(x_j)`` to every slice along ``dim``.
    A subclass of ``nn.LogSoftmax``: same constructor, attributes, repr and state_dict.

    Args:
        dim: the dimension along which log_softmax is computed. ``None`` (deprecated, with
            native's warning) picks 0 for 0-, 1- and 3-D input and 1 otherwise.

    Shape:
        - Input: ``(*)``, any shape.
        - Output: ``(*)``, the input's shape, values in ``[-inf, 0)``.

    Examples::

        >>> m = ManualLogSoftmax(dim=1)
        >>> m(torch.randn(2, 3)).exp().sum(1)
        tensor([1.0000, 1.0000])
    """

    def forward(self, input: Tensor) -> Tensor:
        return log_softmax(input, self.dim, _stacklevel=5)
