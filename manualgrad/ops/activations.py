"""Elementwise activations with hand-derived backwards: ReLU, Tanh, Sigmoid, GELU, SiLU.

Each is ``y = f(x)`` on every element alone, so its Jacobian is diagonal, ``diag(f'(x))``:
the gradient ``dL/dx = G * f'(x)`` (backward, ``G = dL/dy``) and the tangent
``dy = f'(x) * dx`` (jvp) are one and the same elementwise product. Each Function writes
that product once, as its ``chain(v, kept)``, and keeps the one tensor it reads;
:func:`_chain_rule` turns it into backward and jvp. All shapes are ``(*)``: any shape, 0-dim
and empty included, the same for ``x``, ``y``, ``G`` and the tangents.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.autograd import Function
from torch.nn import functional as F

from manualgrad.ops._apply import ManualOp
from manualgrad.ops._fused import fused

__all__ = [
    "ManualReLUFunction",
    "ManualTanhFunction",
    "ManualSigmoidFunction",
    "ManualGELUFunction",
    "ManualSiLUFunction",
    "relu",
    "tanh",
    "sigmoid",
    "gelu",
    "silu",
    "ManualReLU",
    "ManualTanh",
    "ManualSigmoid",
    "ManualGELU",
    "ManualSiLU",
]


# ---- what the five share (plumbing) -----------------------------------------------------


def _chain_rule(chain: staticmethod):
    """backward and jvp of an elementwise op, both from its ``chain(v, kept, *options) =
    v * f'(x)``, a plain function of the tensor it keeps (and its options, ``ctx.options``),
    fused into one loop on large eager tensors (:mod:`manualgrad.ops._fused`)."""
    chain = fused(chain.__func__)  # the plain function: Dynamo cannot call a staticmethod

    def backward(ctx, grad_output: Tensor):
        if not ctx.needs_input_grad[0]:
            return (None,) * len(ctx.needs_input_grad)
        # G * conj(f'(x)): autograd's convention for complex x; conj() is a no-op for real x
        grad_input = chain(grad_output.conj(), *ctx.saved_tensors, *ctx.options).conj()
        return (grad_input,) + (None,) * (len(ctx.needs_input_grad) - 1)  # none for options

    def jvp(ctx, input_t: Tensor, *_):
        output_t = chain(input_t, *ctx.saved_tensors, *ctx.options)
        if not ctx.inplace:
            return output_t
        # in place (the output is the input): so is its tangent, written into the input's;
        # the version bump that autograd checks for, which legacy-vmap tangents
        # (gradcheck's batched forward grad) miss
        torch.autograd.graph.increment_version(input_t.copy_(output_t))
        return input_t

    return staticmethod(backward), staticmethod(jvp)


def _keep(ctx, kept: Tensor, dirty: Tensor | None = None, options: tuple = ()) -> None:
    """Keep ``kept``, the one tensor ``chain`` reads, for backward and jvp, and the
    ``options`` it takes after it; ``dirty``: the input an in-place forward overwrote
    (autograd then checks it and rebases its history)."""
    ctx.save_for_backward(kept)
    ctx.save_for_forward(kept)
    ctx.options = options
    ctx.inplace = dirty is not None
    if ctx.inplace:
        ctx.mark_dirty(dirty)


class _Elementwise(Function):
    """Plumbing (a first reader may skip it): the vmap rule the five share.

    An elementwise op on a batch is the op on the whole batched tensor, its batch dimension
    where it was. (torch's generated rule, ``generate_vmap_rule``, refuses a Function that
    writes into its input, so the in-place forms need this one.)
    """

    @classmethod
    def vmap(cls, info, in_dims, input, *args):
        return cls.apply(input, *args), in_dims[0]


# ---- the five Functions -----------------------------------------------------------------


class ManualReLUFunction(_Elementwise):
    r"""``y = relu(x) = max(x, 0)`` elementwise, with the chain rule written out by hand.

    Shapes: ``x``, ``y``, ``G = dL/dy`` and the tangents all ``(*)``, any one shape. Each
    ``y_i`` depends on ``x_i`` alone, so ``dL/dx_i = G_i relu'(x_i)``: the scalar
    derivative, applied elementwise, is the whole tensor rule.

    Derivative. ``relu'(x) = 1`` for ``x > 0``, ``0`` for ``x < 0``; at the kink ``x = 0``
    every value in ``[0, 1]`` is a subgradient and native picks 0. As ``y > 0`` exactly
    where ``x > 0``, the derivative is read off the output, ``relu'(x) = 1[y > 0]``::

        dL/dx = G where y > 0, else 0      (*)
        dy    = dx where y > 0, else 0     (*, jvp)

    written ``v.masked_fill(y <= 0, 0)``, native's own test (``threshold_backward``): 0 at
    ``x = 0``; at a NaN input ``G`` passes, as natively; a masked ``G`` of inf or NaN gives
    0 (a product ``G * 1[y > 0]`` would give NaN there).

    Keeps: the output ``y``, as native: the next layer almost always keeps that very tensor
    too (a Linear keeps its input), so it costs no memory of its own, where a bool mask
    would be one more allocation; and it is what the in-place form leaves. Double backward:
    ``dL/dx`` is linear in ``G`` (the same mask) and flat in ``y``.

    ``inplace``: ``x`` is overwritten with ``y`` and returned (``relu_``).

    Reference: Nair & Hinton, *Rectified Linear Units Improve Restricted Boltzmann Machines*
    (ICML 2010); PyTorch's ``threshold_backward``.
    """

    #: each gradient's formula, by forward argument (shown by manualgrad.explain)
    formulas = {
        "input": "dL/dx = G where y > 0, else 0  (*)",
    }

    @staticmethod
    def forward(input: Tensor, inplace: bool) -> Tensor:
        if not inplace:
            return torch.relu(input)
        input.relu_()
        return input  # the input object itself, as autograd and Dynamo want it back

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, inplace = inputs
        _keep(ctx, output, input if inplace else None)  # y

    @staticmethod
    def chain(v: Tensor, y: Tensor) -> Tensor:
        return v.masked_fill(y <= 0, 0)  # v 1[y > 0]  (*)

    backward, jvp = _chain_rule(chain)


class ManualTanhFunction(_Elementwise):
    r"""``y = tanh(x) = (e^x - e^-x) / (e^x + e^-x)`` elementwise, by hand.

    Shapes: ``x``, ``y``, ``G = dL/dy`` all ``(*)``; elementwise, as :class:`ManualReLUFunction`.

    Derivative. The quotient rule gives ``tanh'(x) = 1 - tanh(x)^2 = 1 - y^2``::

        dL/dx = G (1 - y^2)                (*)
        dy    = (1 - y^2) dx               (*, jvp)

    Keeps: the output ``y`` only, as native. ``y`` is an output of this Function, so in
    double backward the gradient reaching it flows through this node again, and the second
    derivative ``-2 y (1 - y^2)`` comes out right.

    Reference: any calculus text, ``d tanh/dx = sech^2 x``; PyTorch's ``tanh_backward``.
    """

    #: each gradient's formula, by forward argument (shown by manualgrad.explain)
    formulas = {
        "input": "dL/dx = G (1 - y^2)  (*)",
    }

    @staticmethod
    def forward(input: Tensor) -> Tensor:
        return torch.tanh(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _keep(ctx, output)  # y

    @staticmethod
    def chain(v: Tensor, y: Tensor) -> Tensor:
        return torch.addcmul(v, v * y, y, value=-1)  # v (1 - y^2) as v - (v y) y: 2 ops  (*)

    backward, jvp = _chain_rule(chain)


class ManualSigmoidFunction(_Elementwise):
    r"""``y = sigmoid(x) = 1 / (1 + e^-x)`` elementwise, by hand.

    Shapes: ``x``, ``y``, ``G = dL/dy`` all ``(*)``; elementwise, as :class:`ManualReLUFunction`.

    Derivative. ``sigmoid'(x) = e^-x / (1 + e^-x)^2 = y (1 - y)``, since
    ``1 - y = e^-x / (1 + e^-x)``::

        dL/dx = G (1 - y) y                (*)
        dy    = (1 - y) y dx               (*, jvp)

    Keeps: the output ``y`` only, as native; being this Function's output, double backward
    through it is right (as for :class:`ManualTanhFunction`).

    Reference: Bishop, *Pattern Recognition and Machine Learning* (2006), eq. 4.88;
    PyTorch's ``sigmoid_backward``.
    """

    #: each gradient's formula, by forward argument (shown by manualgrad.explain)
    formulas = {
        "input": "dL/dx = G (1 - y) y  (*)",
    }

    @staticmethod
    def forward(input: Tensor) -> Tensor:
        return torch.sigmoid(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _keep(ctx, output)  # y

    @staticmethod
    def chain(v: Tensor, y: Tensor) -> Tensor:
        vy = v * y
        return torch.addcmul(vy, vy, y, value=-1)  # v (1 - y) y as v y - (v y) y: 2 ops  (*)

    backward, jvp = _chain_rule(chain)


_SQRT_HALF = math.sqrt(0.5)  # 1 / sqrt(2)
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_KAPPA = 0.044715  # the cubic coefficient of the tanh approximation


class ManualGELUFunction(_Elementwise):
    r"""``y = gelu(x)`` elementwise, exact (``'none'``) or tanh-approximated, by hand.

    Shapes: ``x``, ``y``, ``G = dL/dy`` all ``(*)``; elementwise, as :class:`ManualReLUFunction`.

    ``'none'``: ``y = x Phi(x)`` with the standard normal CDF ``Phi(x) = (1 + erf(x/sqrt 2))/2``
    and density ``phi(x) = exp(-x^2/2) / sqrt(2 pi)``. The product rule, ``Phi' = phi``::

        dL/dx = G (Phi(x) + x phi(x))      (*)

    ``'tanh'``: ``y = x/2 (1 + tanh(u))`` with ``u = sqrt(2/pi) (x + 0.044715 x^3)``. The
    product rule, then the chain rule through ``u`` (``tanh' = 1 - tanh^2``)::

        du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
        dL/dx = G ((1 + tanh u)/2 + x/2 (1 - tanh(u)^2) du/dx)      (*)

    and in both, ``dy = (...) dx`` for the jvp. Keeps: the input ``x`` only, as native; an
    input, so double backward (autograd through these formulas) is right.

    Reference: Hendrycks & Gimpel, *Gaussian Error Linear Units (GELUs)*, arXiv:1606.08415;
    PyTorch's ``gelu_backward``.
    """

    #: each gradient's formula, by forward argument (shown by manualgrad.explain)
    formulas = {
        "input": "dL/dx = G (Phi(x) + x phi(x)) ('tanh': G ((1 + tanh u)/2 + x/2 sech^2 u du/dx))",
    }

    @staticmethod
    def forward(input: Tensor, approximate: str) -> Tensor:
        return F.gelu(input, approximate=approximate)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, approximate = inputs
        _keep(ctx, input, options=(approximate,))  # x

    @staticmethod
    def chain(v: Tensor, x: Tensor, approximate: str) -> Tensor:
        if approximate == "none":
            # With t = x / sqrt 2: Phi(x) = (1 + erf t) / 2 and phi(x) = exp(-t^2) / sqrt(2 pi),
            # so Phi + x phi = (1 + erf t + sqrt(2/pi) x exp(-t^2)) / 2: 8 ops. In place on
            # fresh temporaries (no backward reads what is overwritten); exp_: CUDA
            # autocast runs exp() in float32
            t = x * _SQRT_HALF
            inner = torch.addcmul(torch.erf(t), x, (t * t).neg_().exp_(), value=_SQRT_2_OVER_PI)
            half = v * 0.5
            return torch.addcmul(half, half, inner)  # v/2 (1 + inner)  (*)
        x2 = x * x
        t = torch.tanh(_SQRT_2_OVER_PI * x * (1 + _KAPPA * x2))  # tanh(u)
        du_dx = _SQRT_2_OVER_PI * (1 + 3 * _KAPPA * x2)
        return v * (0.5 * (1 + t + x * (1 - t * t) * du_dx))  # (*)

    backward, jvp = _chain_rule(chain)


class ManualSiLUFunction(_Elementwise):
    r"""``y = silu(x) = x sigmoid(x)`` elementwise (also called swish), by hand.

    Shapes: ``x``, ``y``, ``G = dL/dy`` all ``(*)``; elementwise, as :class:`ManualReLUFunction`.

    Derivative. With ``s = sigmoid(x)`` and ``s' = s (1 - s)``, the product rule gives
    ``silu'(x) = s + x s (1 - s) = s (1 + x (1 - s))``::

        dL/dx = G s (1 + x (1 - s))        (*)
        dy    = s (1 + x (1 - s)) dx       (*, jvp)

    Keeps: the input ``x`` only, as native (``s`` is recomputed in backward: one
    elementwise op, where keeping it would double the memory).

    In place (``original`` given): the forward overwrites ``input`` with ``y``, which loses
    ``x``; :func:`silu` passes a copy of ``x`` made before, ``original``, and that copy is
    what is kept (native keeps such a copy too). The gradient goes to ``input``, whose
    history autograd keeps from before the write; the copy carries second derivatives.

    Reference: Elfwing, Uchibe & Doya, *Sigmoid-Weighted Linear Units for Neural Network
    Function Approximation in Reinforcement Learning* (2018); PyTorch's ``silu_backward``.
    """

    #: each gradient's formula, by forward argument (shown by manualgrad.explain)
    formulas = {
        "input": "dL/dx = G s (1 + x (1 - s)), s = sigmoid(x)  (*)",
    }

    @staticmethod
    def forward(input: Tensor, original: Tensor | None) -> Tensor:
        if original is None:
            return F.silu(input)
        F.silu(input, inplace=True)  # input holds x (original is a copy) until this writes y
        return input  # the input object itself, as autograd and Dynamo want it back

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, original = inputs
        if original is None:
            _keep(ctx, input)  # x
        else:
            _keep(ctx, original, input)  # x, copied before the write

    @staticmethod
    def chain(v: Tensor, x: Tensor) -> Tensor:
        s = torch.sigmoid(x)
        return v * s * (1 + x * (1 - s))  # (*)

    backward, jvp = _chain_rule(chain)


# ---- functional forms -------------------------------------------------------------------

_relu = ManualOp(ManualReLUFunction)
_tanh = ManualOp(ManualTanhFunction)
_sigmoid = ManualOp(ManualSigmoidFunction)
_gelu = ManualOp(ManualGELUFunction)
_silu = ManualOp(ManualSiLUFunction)

_LEAF_IN_PLACE = "a leaf Variable that requires grad is being used in an in-place operation."
_VIEW_OF_LEAF_IN_PLACE = (
    "a view of a leaf Variable that requires grad is being used in an in-place operation."
)
_NO_GRAD_VIEW_IN_PLACE = (
    "A view was created in no_grad mode and is being modified inplace with grad mode enabled. "
    "Given that this use case is ambiguous and error-prone, it is forbidden. You can clarify "
    "your code by moving both the view and the inplace either both inside the no_grad block "
    "(if you don't want the inplace to be tracked) or both outside (if you want the inplace "
    "to be tracked)."
)


def _check_inplace(name: str, input: Tensor) -> None:
    """Native's error for writing into a leaf that requires grad, a view of one, or a view
    made under no_grad, raised before anything is written (a Function would write first,
    then refuse, with a message about leaves)."""
    if not isinstance(input, Tensor):
        raise TypeError(
            f"{name}_(): argument 'input' (position 1) must be Tensor, not {type(input).__name__}"
        )
    if input.requires_grad and torch.is_grad_enabled():
        base = input._base
        if input.is_leaf:  # no history of its own: a leaf, or a view made under no_grad
            raise RuntimeError(_LEAF_IN_PLACE if base is None else _NO_GRAD_VIEW_IN_PLACE)
        if base is not None and base.is_leaf and base.requires_grad:
            raise RuntimeError(_VIEW_OF_LEAF_IN_PLACE)


def relu(input: Tensor, inplace: bool = False) -> Tensor:
    """Functional form of :class:`ManualReLU`.

    Same signature, semantics and errors as :func:`torch.nn.functional.relu`; see
    :class:`ManualReLUFunction` for the derivation of the backward.
    """
    if inplace:
        _check_inplace("relu", input)
        _relu(input, True)
        return input  # itself: with grad off, autograd would hand back a detached alias
    return _relu(input, False)


def tanh(input: Tensor) -> Tensor:
    """Functional form of :class:`ManualTanh`: as :func:`torch.tanh`; see
    :class:`ManualTanhFunction` for the derivation of the backward."""
    return _tanh(input)


def sigmoid(input: Tensor) -> Tensor:
    """Functional form of :class:`ManualSigmoid`: as :func:`torch.sigmoid`; see
    :class:`ManualSigmoidFunction` for the derivation of the backward."""
    return _sigmoid(input)


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """Functional form of :class:`ManualGELU`.

    Same signature, semantics and errors as :func:`torch.nn.functional.gelu`; see
    :class:`ManualGELUFunction` for the derivation of the backward.
    """
    if approximate != "none" and approximate != "tanh":
        if not isinstance(approximate, str):
            raise TypeError(
                f"gelu(): argument 'approximate' must be str, not {type(approximate).__name__}"
            )
        raise RuntimeError(
            f"gelu: approximate argument must be either 'none' or 'tanh', got {approximate!r}"
        )
    return _gelu(input, approximate)


def silu(input: Tensor, inplace: bool = False) -> Tensor:
    """Functional form of :class:`ManualSiLU`.

    Same signature, semantics and errors as :func:`torch.nn.functional.silu`; see
    :class:`ManualSiLUFunction` for the derivation of the backward.
    """
    complex_grad = isinstance(input, Tensor) and input.is_complex() and input.requires_grad
    if complex_grad and torch.is_grad_enabled():
        raise RuntimeError(
            "silu does not support automatic differentiation for outputs with complex dtype."
        )
    if inplace:
        _check_inplace("silu", input)
        _silu(input, input.clone())  # the copy: x, which backward needs and the write destroys
        return input  # itself: with grad off, autograd would hand back a detached alias
    return _silu(input, None)


# ---- modules ----------------------------------------------------------------------------


class ManualReLU(nn.ReLU):
    r"""Drop-in for :class:`torch.nn.ReLU` whose backward is :class:`ManualReLUFunction`.

    Applies ``relu(x) = max(x, 0)`` elementwise. A subclass of ``nn.ReLU``: same
    constructor, attributes, repr and (empty) state_dict.

    Args:
        inplace: overwrite the input with the result (and return it). Default: ``False``

    Shape:
        - Input: ``(*)``, any shape.
        - Output: ``(*)``, the input's shape.

    Examples::

        >>> m = ManualReLU()
        >>> m(torch.tensor([-1.0, 0.0, 2.0]))
        tensor([0., 0., 2.])
    """

    def forward(self, input: Tensor) -> Tensor:
        return relu(input, self.inplace)


class ManualTanh(nn.Tanh):
    r"""Drop-in for :class:`torch.nn.Tanh` whose backward is :class:`ManualTanhFunction`.

    Applies ``tanh(x) = (e^x - e^-x) / (e^x + e^-x)`` elementwise.

    Shape:
        - Input: ``(*)``, any shape.
        - Output: ``(*)``, the input's shape, values in ``[-1, 1]``.

    Examples::

        >>> ManualTanh()(torch.tensor([0.0, 100.0]))
        tensor([0., 1.])
    """

    def forward(self, input: Tensor) -> Tensor:
        return tanh(input)


class ManualSigmoid(nn.Sigmoid):
    r"""Drop-in for :class:`torch.nn.Sigmoid` whose backward is :class:`ManualSigmoidFunction`.

    Applies ``sigmoid(x) = 1 / (1 + e^-x)`` elementwise.

    Shape:
        - Input: ``(*)``, any shape.
        - Output: ``(*)``, the input's shape, values in ``[0, 1]``.

    Examples::

        >>> ManualSigmoid()(torch.tensor([0.0]))
        tensor([0.5000])
    """

    def forward(self, input: Tensor) -> Tensor:
        return sigmoid(input)


class ManualGELU(nn.GELU):
    r"""Drop-in for :class:`torch.nn.GELU` whose backward is :class:`ManualGELUFunction`.

    Applies ``gelu(x) = x Phi(x)`` elementwise (``Phi``: the standard normal CDF), or with
    ``approximate='tanh'`` its approximation ``x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``.
    A subclass of ``nn.GELU``: same constructor, attributes, repr and (empty) state_dict.

    Args:
        approximate: ``'none'`` (exact) or ``'tanh'``. Default: ``'none'``

    Shape:
        - Input: ``(*)``, any shape.
        - Output: ``(*)``, the input's shape.

    Examples::

        >>> ManualGELU(approximate="tanh")(torch.randn(4, 8)).shape
        torch.Size([4, 8])
    """

    def forward(self, input: Tensor) -> Tensor:
        return gelu(input, self.approximate)


class ManualSiLU(nn.SiLU):
    r"""Drop-in for :class:`torch.nn.SiLU` whose backward is :class:`ManualSiLUFunction`.

    Applies ``silu(x) = x sigmoid(x)`` (swish) elementwise. A subclass of ``nn.SiLU``: same
    constructor, attributes, repr and (empty) state_dict.

    Args:
        inplace: overwrite the input with the result (and return it). Default: ``False``

    Shape:
        - Input: ``(*)``, any shape.
        - Output: ``(*)``, the input's shape.

    Examples::

        >>> ManualSiLU()(torch.tensor([0.0]))
        tensor([0.])
    """

    def forward(self, input: Tensor) -> Tensor:
        return silu(input, self.inplace)
