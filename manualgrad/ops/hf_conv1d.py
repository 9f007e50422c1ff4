"""Hugging Face's ``Conv1D`` (GPT-2's projections) with a hand-derived backward.

``transformers.pytorch_utils.Conv1D`` is not a convolution: it is a Linear layer whose
weight is stored transposed, ``(in, out)``, computing ``y = x W + b`` with ``torch.addmm``.
This file holds its Function and functional form (torch only) and, made on first use, its
drop-in module :class:`ManualConv1D`, a subclass of ``Conv1D``: the one place that imports
``transformers``, and only when asked for that class. ``import manualgrad`` does not import
``transformers`` (optional, and a second to import); the table in
:mod:`manualgrad.registry` names the class by its path and adds the row once
``transformers`` has been imported, as it is by any model holding a ``Conv1D``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function

from manualgrad.ops._apply import ManualOp, autocast_dtype

__all__ = ["ManualConv1DFunction", "hf_conv1d"]  # and ManualConv1D, made on first use


class ManualConv1DFunction(Function):
    r"""``Y = X W + b`` with the weight stored ``(in, out)``, by hand.

    Shapes: ``X (N, in)``, ``W (in, out)``, ``b (out,)``, ``Y (N, out)`` (:func:`hf_conv1d`
    folds the leading dimensions of ``(*, in)`` into ``N`` first, as ``Conv1D`` does).

    Backward. One element is ``Y[n, o] = sum_i X[n, i] W[i, o] + b[o]``, so
    ``dY[n, o]/dX[n, i] = W[i, o]``, ``dY[n, o]/dW[i, o] = X[n, i]`` and
    ``dY[n, o]/db[o] = 1``. With ``G = dL/dY  (N, out)``, summing over every path::

        dL/dX = G W^T            (N, in)
        dL/dW = X^T G            (in, out)
        dL/db = sum of G over N  (out,)

    (``nn.Linear``'s rule with ``W`` transposed: there ``dL/dW = G^T X  (out, in)``.)
    Each is formed only if ``ctx.needs_input_grad`` asks, from differentiable ops, so
    double backward works. Forward-mode (jvp), the product rule:
    ``dY = dX W + X dW + db  (N, out)``.

    Keeps: ``X`` when ``W`` needs a gradient and ``W`` when ``X`` does, the very tensors
    native ``addmm`` keeps (nothing made inside forward). The forward is ``torch.addmm``,
    native ``Conv1D``'s own call, so outputs agree to the bit.

    Reference: Radford et al., *Improving Language Understanding by Generative
    Pre-Training* (2018), whose code named this layer ``conv1d``; PyTorch's ``addmm``
    derivative (``tools/autograd/derivatives.yaml``).
    """

    #: each gradient's formula, by forward argument (shown by manualgrad.explain)
    formulas = {
        "input": "dL/dX = G W^T  (N, in)",
        "weight": "dL/dW = X^T G  (in, out)",
        "bias": "dL/db = sum of G over rows  (out,)",
    }

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return torch.addmm(bias, input, weight)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, _ = inputs
        need_input, need_weight, _ = ctx.needs_input_grad
        ctx.save_for_backward(input if need_weight else None, weight if need_input else None)
        ctx.save_for_forward(input, weight)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        input, weight = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad
        grad_input = grad_output @ weight.t() if need_input else None  # G W^T  (N, in)
        grad_weight = input.t() @ grad_output if need_weight else None  # X^T G  (in, out)
        grad_bias = grad_output.sum(0) if need_bias else None  # (out,)
        return grad_input, grad_weight, grad_bias

    @staticmethod
    def jvp(ctx, input_t: Tensor | None, weight_t: Tensor | None, bias_t: Tensor | None):
        input, weight = ctx.saved_tensors
        out_t = torch.zeros(
            input.shape[0], weight.shape[1], dtype=weight.dtype, device=weight.device
        )
        if input_t is not None:
            out_t = out_t + input_t @ weight  # dX W
        if weight_t is not None:
            out_t = out_t + input @ weight_t  # X dW
        if bias_t is not None:
            out_t = out_t + bias_t  # db, broadcast over N
        return out_t


_conv1d = ManualOp(ManualConv1DFunction)


def hf_conv1d(input: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Functional form of :class:`ManualConv1D`: ``input @ weight + bias`` over the last
    dimension, ``input (*, in)``, ``weight (in, out)``, ``bias (out,)`` -> ``(*, out)``.

    The same computation, shapes and errors as ``transformers.pytorch_utils.Conv1D``'s
    forward (``torch.addmm`` on ``input.view(-1, in)``); see :class:`ManualConv1DFunction`
    for the derivation of the backward. Under autocast it runs in the autocast dtype, as
    native ``addmm`` does.
    """
    size_out = input.size()[:-1] + (weight.shape[-1],)
    rows = input.view(-1, input.size(-1))  # (N, in), a view as in Conv1D (the same errors)
    dtype = autocast_dtype(input.device.type)
    if dtype is None:
        return _conv1d(rows, weight, bias).view(size_out)
    # autocast runs addmm in low precision: cast what it would (floating point, not
    # float64), then run with autocast off so backward sees one dtype
    rows, weight, bias = (
        t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t
        for t in (rows, weight, bias)
    )
    with torch.autocast(input.device.type, enabled=False):
        return _conv1d(rows, weight, bias).view(size_out)


def _manual_conv1d_class() -> type:
    from transformers.pytorch_utils import Conv1D  # only here: see the module docstring

    class ManualConv1D(Conv1D):
        r"""Drop-in for ``transformers.pytorch_utils.Conv1D`` whose backward is
        :class:`ManualConv1DFunction`.

        Applies ``y = x W + b`` with ``W`` stored ``(in, out)``. A subclass of ``Conv1D``:
        same constructor ``(nf, nx)`` (output features first), init, state_dict and repr.

        Shape:
            - Input: ``(*, nx)``.
            - Output: ``(*, nf)``.

        Examples::

            >>> from manualgrad.ops.hf_conv1d import ManualConv1D
            >>> ManualConv1D(nf=48, nx=16)(torch.randn(2, 5, 16)).shape
            torch.Size([2, 5, 48])
        """

        def forward(self, x: Tensor) -> Tensor:
            return hf_conv1d(x, self.weight, self.bias)

    ManualConv1D.__module__, ManualConv1D.__qualname__ = __name__, "ManualConv1D"  # picklable
    return ManualConv1D


def __getattr__(name: str):
    # ManualConv1D is made on first use (importing transformers then), and kept: one class,
    # so pickles, isinstance and the registry all see the same one.
    if name == "ManualConv1D":
        globals()[name] = _manual_conv1d_class()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
