"""Embedding lookup with a hand-derived backward: the Function, its functional form, its module."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd import Function

from manualgrad.ops._apply import ManualOp

__all__ = ["ManualEmbeddingFunction", "embedding", "ManualEmbedding"]


class ManualEmbeddingFunction(Function):
    r"""``Y[n] = W[idx[n]]`` with the chain rule written out by hand.

    Shapes: indices ``idx (*)`` (int64 or int32, ``N`` entries in all), weight ``W (V, D)``,
    ``Y (*, D)``. Below, ``idx`` and ``G = dL/dY`` are flattened to ``(N,)`` and ``(N, D)``.

    Backward. The scalar case: one lookup ``y = w_i`` of a table of numbers ``w``, so
    ``dL/dw_v = g`` for ``v = i`` and 0 for every other row. With ``N`` lookups of rows of
    ``D`` numbers, ``Y[n, d] = W[idx[n], d]`` and ``dY[n, d]/dW[v, d]`` is 1 where
    ``idx[n] = v``, 0 elsewhere; summing over every path into row ``v``::

        dL/dW[v] = sum of G[n] over the n with idx[n] = v       (V, D): an index_add
        dL/dW[padding_idx] = 0                                 the pad row learns nothing
        scale_grad_by_freq:  G[n] / count(idx[n]) in the sum   count over this mini-batch

    No gradient flows to the integer indices. The backward is linear in ``G`` and made of
    differentiable ops (``index_add``, ``index_fill``, a product), so double backward works:
    its adjoint is the lookup again, ``G'[n] = P[idx[n]] / count(idx[n])`` (0 at the pad).
    (Native's double backward leaves out the ``1/count``, and fails gradgradcheck there.)

    ``sparse=True`` is implemented: the same rows, not summed, as a sparse COO tensor of
    shape ``(V, D)`` with indices ``idx[n]`` and values ``G[n]`` (padding entries dropped),
    equal to native's (uncoalesced, in the same order). As natively, backward then refuses
    ``scale_grad_by_freq`` with a RuntimeError. Dynamo holds no sparse tensor, so under
    ``torch.compile(fullgraph=True)`` a sparse backward is refused (without fullgraph it
    runs eagerly, with a graph break).

    Forward-mode (jvp): the lookup is linear in ``W``, so ``dY[n] = dW[idx[n]]  (*, D)``.

    Saved: the indices only (``idx``), as native autograd does; the counts for
    ``scale_grad_by_freq`` are recomputed in backward. Never the weight.

    The forward calls :func:`torch.embedding`, the native kernel, so outputs agree to the
    bit. ``max_norm`` renormalises rows of the weight in place before the lookup; that is
    no part of the differentiated function (native runs it under no_grad too), so the
    functional wrapper does it. Reference: PyTorch's ``embedding_dense_backward``
    (aten/src/ATen/native/Embedding.cpp), whose semantics this reproduces.
    """

    #: each gradient's formula, by forward argument (shown by manualgrad.explain)
    formulas = {
        "weight": "dL/dW[v] = sum of G[n] over the n with idx[n] = v, 0 at padding_idx  (V, D)",
    }
    #: what native autograd differentiates to check this backward (manualgrad.explain): the
    #: forward leaves padding_idx, scale_grad_by_freq and sparse to the backward
    native = staticmethod(
        lambda input, weight, padding_idx, scale_grad_by_freq, sparse: torch.embedding(
            weight, input, padding_idx, scale_grad_by_freq, sparse
        )
    )

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: Tensor, weight: Tensor, padding_idx: int, scale_grad_by_freq: bool, sparse: bool
    ) -> Tensor:
        return torch.embedding(weight, input)  # (*, D); padding_idx only matters in backward

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, padding_idx, scale_grad_by_freq, sparse = inputs
        ctx.save_for_backward(input if ctx.needs_input_grad[1] else None)  # the indices only
        ctx.save_for_forward(input)
        ctx.num_weights, ctx.padding_idx = weight.shape[0], padding_idx
        ctx.scale_grad_by_freq, ctx.sparse = scale_grad_by_freq, sparse

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        if not ctx.needs_input_grad[1]:
            return None, None, None, None, None
        (input,) = ctx.saved_tensors
        num_weights, pad = ctx.num_weights, ctx.padding_idx
        idx = input.reshape(-1)  # (N,)
        grad = grad_output.reshape(-1, grad_output.shape[-1])  # (N, D)
        if ctx.sparse:
            grad_weight = _sparse_grad(idx, grad, num_weights, pad, ctx.scale_grad_by_freq)
            return None, grad_weight, None, None, None
        if ctx.scale_grad_by_freq:
            counts = idx.new_zeros(num_weights).index_add_(0, idx, torch.ones_like(idx))  # (V,)
            scale = counts.index_select(0, idx).to(grad.dtype).reciprocal()  # 1/count  (N,)
            grad = grad * scale.unsqueeze(1)  # (N, D)
        # in place into fresh zeros: an out-of-place index_add would copy the (V, D) zeros first
        grad_weight = grad.new_zeros(num_weights, grad.shape[1]).index_add_(0, idx, grad)  # (V, D)
        if pad >= 0:
            grad_weight.index_fill_(0, idx.new_full((1,), pad), 0)  # pad row: 0
        return None, grad_weight, None, None, None

    @staticmethod
    def jvp(ctx, input_t: None, weight_t: Tensor, *_):
        (input,) = ctx.saved_tensors
        return torch.embedding(weight_t, input)  # dW[idx]  (*, D)


def _sparse_grad(idx: Tensor, grad: Tensor, num_weights: int, pad: int, scale: bool) -> Tensor:
    """dL/dW as native's sparse COO tensor: one (index, row of G) pair per lookup."""
    if scale:
        raise RuntimeError(
            "embedding_backward: scale_grad_by_freq not supported with sparse gradients"
        )
    if pad >= 0:
        keep = idx != pad  # (N,) bool
        idx, grad = idx[keep], grad[keep]
    size = (num_weights, grad.shape[1])
    # (V, D) with nnz <= N; the indices are known valid (forward looked them up)
    return torch.sparse_coo_tensor(idx.long().unsqueeze(0), grad, size, check_invariants=False)


_embedding = ManualOp(ManualEmbeddingFunction)

_INDEX_DTYPES = (torch.int64, torch.int32)


def _check(input: Tensor, weight: Tensor) -> None:
    """Raise the error the native op would, with a message that names the argument."""
    if weight.dim() != 2:
        raise RuntimeError(
            "embedding: 'weight' must be 2-D (num_embeddings, embedding_dim), "
            f"got shape {tuple(weight.shape)}"
        )
    if input.dtype not in _INDEX_DTYPES:
        raise RuntimeError(
            "embedding: Expected tensor for argument #1 'indices' (input) to have one of the "
            f"following scalar types: Long, Int; but got {input.dtype} instead"
        )


def _padding_index(padding_idx: int | None, weight: Tensor) -> int:
    """``padding_idx`` as a row number (negative counts from the end), -1 for none."""
    if padding_idx is None:
        return -1
    num_embeddings = weight.size(0)
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise AssertionError("Padding_idx must be within num_embeddings")
    return padding_idx + num_embeddings if padding_idx < 0 else padding_idx


def embedding(
    input: Tensor,
    weight: Tensor,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
) -> Tensor:
    """Functional form of :class:`ManualEmbedding`: the rows ``weight[input]``.

    Same signature and semantics as :func:`torch.nn.functional.embedding` (``max_norm``
    renormalises the looked-up rows of ``weight`` in place; ``sparse=True`` gives a sparse
    COO gradient); see :class:`ManualEmbeddingFunction` for the derivation of the backward.
    Embedding is on no autocast list: the output keeps the weight's dtype, as natively.
    """
    padding_idx = _padding_index(padding_idx, weight)
    _check(input, weight)
    if max_norm is not None:
        input = input.contiguous()  # as native: embedding_renorm_ would make it contiguous
        with torch.no_grad():
            torch.embedding_renorm_(weight.detach(), input, max_norm, norm_type)
    return _embedding(input, weight, padding_idx, scale_grad_by_freq, sparse)


class ManualEmbedding(nn.Embedding):
    r"""Drop-in for :class:`torch.nn.Embedding` whose backward is
    :class:`ManualEmbeddingFunction`.

    A lookup table: ``y = weight[x]``. Being a subclass of ``nn.Embedding``, it has the same
    constructor, initialisation (``N(0, 1)``, the ``padding_idx`` row zeroed) under the same
    seed, state_dict keys and repr; ``ManualEmbedding.from_pretrained(w)`` returns a
    ``ManualEmbedding``.

    Args:
        num_embeddings: size of the dictionary of embeddings.
        embedding_dim: the size of each embedding vector.
        padding_idx: this row gets no gradient (and starts as zeros). Default: ``None``.
        max_norm: rows looked up with a larger ``norm_type``-norm are renormalised to
            ``max_norm``, in place, before the lookup. Default: ``None``.
        norm_type: the p of the p-norm for ``max_norm``. Default: ``2.0``.
        scale_grad_by_freq: divide each row's gradient by how often its index occurs in the
            mini-batch. Default: ``False``.
        sparse: the weight's gradient is a sparse COO tensor. Default: ``False``.
        device: where the weight is created.
        dtype: dtype of the weight.

    Shape:
        - Input: ``(*)``, an int64 or int32 tensor of indices, any shape.
        - Output: ``(*, embedding_dim)``.

    Examples::

        >>> table = ManualEmbedding(10, 3, padding_idx=0)
        >>> table(torch.tensor([[0, 2, 0, 5]])).shape
        torch.Size([1, 4, 3])
    """

    def forward(self, input: Tensor) -> Tensor:
        return embedding(
            input,
            self.weight,
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
        )
