"""Scaled dot-product attention with a hand-derived backward: the Function, its functional form.

The module that uses it, :class:`~manualgrad.ops.multihead.ManualMultiheadAttention`, lives in
``multihead.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd import Function

from manualgrad.ops._apply import ManualOp, autocast_dtype
from manualgrad.ops.dropout import _draw_mask, _masked

__all__ = ["ManualAttentionFunction", "scaled_dot_product_attention"]

_NEG_INF = float("-inf")


class ManualAttentionFunction(Function):
    r"""``O = dropout(softmax(scale Q K^T + mask)) V`` with the chain rule written out by hand.

    Shapes: ``Q (*, L, E)``, ``K (*, S, E)``, ``V (*, S, Ev)``, ``O (*, L, Ev)``, where the
    leading dims ``*`` of the three broadcast (grouped-query attention arrives here as a
    broadcast: see :func:`scaled_dot_product_attention`). ``mask`` is None, bool (True:
    attend) or an additive float tensor, broadcastable to ``(*, L, S)``; ``causal`` adds
    the top-left lower-triangular mask. The scalar case, ``L = S = 1``: ``p = 1``, ``o = v``,
    ``dL/dv = g`` and ``dL/dq = dL/dk = 0`` (a softmax over one entry is constant).

    Forward, one row ``i`` of one head (Dao et al. 2022, *FlashAttention*, appendix B)::

        s_ij = scale q_i . k_j + mask_ij              (a bool mask: -inf where False)
        lse_i = log sum_j exp(s_ij)                    (one number per row)
        p_ij = exp(s_ij - lse_i)                       (softmax of the row)
        pd_ij = p_ij m_ij / (1 - p_drop)               (dropout; m_ij in {0, 1}; else pd = p)
        o_i = sum_j pd_ij v_j

    Backward. With ``G = dL/dO  (*, L, Ev)``: ``o_i`` is linear in ``v_j`` and in ``pd_ij``,
    so ``dL/dv_j = sum_i pd_ij g_i`` and ``dL/dpd_ij = g_i . v_j``. Dropout multiplies by a
    constant: ``dL/dp_ij = dL/dpd_ij m_ij / (1 - p_drop)``. The softmax Jacobian
    ``dp_ij/ds_ik = p_ij (delta_jk - p_ik)`` gives ``dL/ds_ik = p_ik (dL/dp_ik - D_i)`` with
    ``D_i = sum_j p_ij dL/dp_ij = sum_j pd_ij (g_i . v_j) = g_i . o_i``. In tensor form::

        dV = Pd^T G                                    (*, S, Ev)
        dP = (G V^T) * M / (1 - p_drop)                (*, L, S)
        D  = rowsum(G * O)                             (*, L)
        dS = P * (dP - D)                              (*, L, S)
        dQ = scale dS K                                (*, L, E)
        dK = scale dS^T Q                              (*, S, E)
        dmask = dS  (a float mask that requires grad)  (mask's shape)

    each summed back over the leading dims that broadcasting stretched (the sum over the
    query heads of one key/value group, for grouped-query attention). Two more outputs can
    carry a gradient in double backward (or when the caller uses them): ``lse``, with
    ``dlse_i/ds_ij = p_ij``, adds ``P * G_lse``; the probabilities ``Pd`` (returned when
    ``need_probs``, for ``nn.MultiheadAttention(need_weights=True)``) add ``G_P`` to
    ``dL/dPd`` and ``rowsum(G_P * Pd)`` to ``D``.

    Forward-mode (jvp), the same chain forwards: ``dS = scale (dQ K^T + Q dK^T) + dmask``,
    ``dlse = rowsum(P * dS)``, ``dP = P * (dS - dlse)``, ``dPd = dP * M / (1 - p_drop)``,
    ``dO = dPd V + Pd dV``.

    Keeps: ``Q``, ``K``, ``V``, a given mask (bool: 1 byte per entry; the causal mask is
    rebuilt, not kept), ``O``, ``lse`` (one per row, float32 for half/bfloat16 inputs) and,
    with dropout, the dropout mask as bool (1 byte per entry; a bool mask rather than the
    RNG state, which would need generator bookkeeping under torch.compile, vmap and CUDA
    graphs), never ``P``: backward recomputes ``P = exp(S - lse)`` (one more ``Q K^T``).
    That is what native's CPU flash kernel keeps; its math backend keeps ``P``, the float
    dropout noise and ``Pd`` as well. ``O``, ``lse`` and the dropout mask are outputs of this
    Function, so double backward through them is right (pytorch issue 104040).

    The causal mask enters as in native's math backend, added to the scores (``-inf``
    above the diagonal) for the row max and as a 0/1 factor after the exponential (see
    :func:`_exp`), so a NaN or ``+inf`` score above the diagonal (a non-finite key) makes its
    row NaN, as there; native's fused kernels skip those keys instead.

    ``safe`` picks what a fully masked row gives: True, ``P = 0`` and ``O = 0`` (native
    SDPA's ``_safe_softmax``: ``lse = -inf`` is replaced by 0); False, NaN (plain softmax,
    as ``nn.MultiheadAttention`` with ``need_weights=True``). The dropout mask is drawn as
    native's math backend draws it on CPU (``bernoulli_`` on a tensor like ``P``), so under
    the same seed it is native's mask there; native CUDA SDPA draws inside its fused
    kernels (Philox), which no plain-torch op reproduces: the same rule, other draws.
    """

    #: each gradient's formula, by forward argument (shown by manualgrad.explain)
    formulas = {
        "query": (
            "dL/dQ = scale dS K, dS = P * (dP - rowsum(G * O)), dP = G V^T (* M/(1-p))  (*, L, E)"
        ),
        "key": "dL/dK = scale dS^T Q  (*, S, E)",
        "value": "dL/dV = P^T G  (*, S, Ev)",
        "mask": "dL/dmask = dS  (*, L, S)",
    }

    generate_vmap_rule = True

    @staticmethod
    def forward(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        mask: Tensor | None,
        dropout_p: float,
        scale: float,
        causal: bool,
        safe: bool,
        need_probs: bool,
    ):
        scores = _scores(query, key, mask, scale)  # S  (*, L, S), float32 at least
        below = _below(scores) if causal else None  # 1 on and below the diagonal  (L, S)
        if scores.shape[-1] == 0:  # no keys: amax has nothing to reduce; P is empty
            peak = scores.new_zeros(scores.shape[:-1] + (1,))
        elif below is None:
            peak = scores.amax(-1, keepdim=True)  # row max m  (*, L, 1)
        else:  # the max over the keys a row attends
            peak = (scores + _above(scores)).amax(-1, keepdim=True)
        peak = peak.masked_fill(peak == _NEG_INF, 0.0)  # a fully masked row: exp(-inf - 0) = 0
        exps = _exp(scores.sub_(peak), below)  # exp(S - m), in place  (*, L, S)
        total = exps.sum(-1, keepdim=True)  # (*, L, 1)
        lse = (peak + total.log()).squeeze(-1)  # m + log sum exp(S - m)  (*, L)
        if safe:  # a fully masked row: P = 0 and lse = 0, so P = exp(S - lse) = 0 again
            lse = lse.masked_fill(lse == _NEG_INF, 0.0)
            total = total.masked_fill(total == 0, 1.0)
        probs = exps.div_(total).to(query.dtype)  # P  (*, L, S); 0 / 0 = NaN unless safe
        if dropout_p > 0:  # M (*, L, S) drawn as native dropout draws it (for p = 1: none)
            keep = _draw_mask(probs, dropout_p)
            dropped = _masked(probs, keep, dropout_p)  # Pd = P * M / (1 - p); P * 0 for p = 1
        else:
            keep = torch.zeros((), dtype=torch.bool, device=query.device)  # unused
            dropped = probs
        out = torch.matmul(dropped, value)  # O  (*, L, Ev)
        return (out, lse, keep, dropped) if need_probs else (out, lse, keep)

    @staticmethod
    def setup_context(ctx, inputs, output):
        query, key, value, mask, dropout_p, scale, causal, safe, need_probs = inputs
        out, lse, keep = output[:3]
        ctx.mark_non_differentiable(keep)
        ctx.set_materialize_grads(False)
        keep = keep if dropout_p > 0 else None  # no dropout: nothing to keep
        ctx.save_for_backward(query, key, value, mask, out, lse, keep)
        ctx.save_for_forward(query, key, value, mask, out, lse, keep)
        ctx.dropout_p, ctx.scale, ctx.causal, ctx.need_probs = dropout_p, scale, causal, need_probs

    @staticmethod
    def backward(ctx, grad_out, grad_lse, _grad_keep, grad_probs=None):
        query, key, value, mask, out, lse, keep = ctx.saved_tensors
        need_q, need_k, need_v, need_mask = ctx.needs_input_grad[:4]
        probs = _probs(query, key, mask, lse, ctx.scale, ctx.causal)  # P, recomputed  (*, L, S)
        drop = _dropout(keep, ctx.dropout_p)  # t -> t * M / (1 - p)
        dropped = drop(probs)  # Pd  (*, L, S)
        grad_q = grad_k = grad_v = grad_mask = grad_s = None
        if need_v and grad_out is not None:
            grad_v = _sum_to(dropped.transpose(-2, -1) @ grad_out, value.shape)  # Pd^T G
        if need_q or need_k or need_mask:  # dS  (*, L, S)
            grad_s = _grad_scores(probs, dropped, drop, value, out, grad_out, grad_lse, grad_probs)
        if grad_s is not None:
            if need_q:
                grad_q = _sum_to(ctx.scale * (grad_s @ key), query.shape)  # scale dS K
            if need_k:
                grad_k = _sum_to(ctx.scale * (grad_s.transpose(-2, -1) @ query), key.shape)
            if need_mask:
                grad_mask = _sum_to(grad_s, mask.shape).to(mask.dtype)  # dS
        return grad_q, grad_k, grad_v, grad_mask, None, None, None, None, None

    @staticmethod
    def jvp(ctx, query_t, key_t, value_t, mask_t, *_flags):
        query, key, value, mask, out, lse, keep = ctx.saved_tensors
        probs = _probs(query, key, mask, lse, ctx.scale, ctx.causal)  # P  (*, L, S)
        drop = _dropout(keep, ctx.dropout_p)  # t -> t * M / (1 - p)
        scores_t = torch.zeros((), dtype=probs.dtype, device=probs.device)  # dS  (*, L, S)
        if query_t is not None:
            scores_t = scores_t + ctx.scale * (query_t @ key.transpose(-2, -1))  # dQ K^T
        if key_t is not None:
            scores_t = scores_t + ctx.scale * (query @ key_t.transpose(-2, -1))  # Q dK^T
        if mask_t is not None:
            scores_t = scores_t + mask_t
        lse_t = (probs * scores_t).sum(-1)  # dlse  (*, L)
        probs_t = probs * (scores_t - lse_t.unsqueeze(-1))  # dP  (*, L, S)
        dropped_t = drop(probs_t)  # dPd
        out_t = dropped_t @ value  # dPd V  (*, L, Ev)
        if value_t is not None:
            dropped = drop(probs)
            out_t = out_t + dropped @ value_t  # Pd dV
        lse_t = lse_t.to(lse.dtype)
        return (out_t, lse_t, None, dropped_t) if ctx.need_probs else (out_t, lse_t, None)


def _scores(query: Tensor, key: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """``S = scale Q K^T + mask  (*, L, S)``, in float32 at least (a bool mask: -inf where
    False). The causal mask is not in it: see :func:`_exp`."""
    acc = torch.promote_types(query.dtype, torch.float32)
    scores = ((query * scale) @ key.transpose(-2, -1)).to(acc)  # (*, L, S)
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        if torch.broadcast_shapes(mask.shape, scores.shape) != scores.shape:
            return torch.where(mask, scores, _NEG_INF)  # a mask with more batch dims
        return scores.masked_fill(mask.logical_not(), _NEG_INF)
    return scores + mask


def _below(scores: Tensor) -> Tensor:
    """The causal mask, top-left aligned, as a float factor ``(L, S)``: 1 where query ``i``
    may attend key ``j`` (``j <= i``), 0 above the diagonal. Made afresh, not kept."""
    length, source = scores.shape[-2:]
    return torch.ones(length, source, dtype=scores.dtype, device=scores.device).tril_()


def _above(scores: Tensor) -> Tensor:
    """The causal mask as an additive one ``(L, S)``: -inf above the diagonal, else 0."""
    length, source = scores.shape[-2:]
    full = torch.full((length, source), _NEG_INF, dtype=scores.dtype, device=scores.device)
    return full.triu_(1)


def _exp(shifted: Tensor, below: Tensor | None) -> Tensor:
    """``exp(S - c)`` for a row shift ``c`` at least the row's max over attended keys, in
    place. Causal (``below`` given): ``exp(min(S - c, 0)) * below``, the masked keys made 0
    by a product rather than by ``-inf`` scores (``exp(-inf)`` takes a slow path on CPU).
    The clamp changes no attended key, where ``S - c <= 0`` already, and keeps a masked
    one from overflowing into ``inf * 0``."""
    if below is None:
        return shifted.exp_()
    return shifted.clamp_max_(0.0).exp_() * below  # not in place: exp's backward reads it


def _probs(query, key, mask, lse: Tensor, scale: float, causal: bool) -> Tensor:
    """``P = exp(S - lse)  (*, L, S)``, in the query's dtype: the softmax, recomputed."""
    scores = _scores(query, key, mask, scale)
    below = _below(scores) if causal else None
    return _exp(scores - lse.unsqueeze(-1), below).to(query.dtype)


def _grad_scores(probs, dropped, drop, value, out, grad_out, grad_lse, grad_probs):
    """``dS = P * (dP - D) + P * G_lse  (*, L, S)`` from whichever upstream gradients
    arrived (None if none did): ``dL/dPd = G V^T + G_P``, ``dP = dL/dPd * M / (1 - p)``,
    ``D = rowsum(G * O) + rowsum(G_P * Pd)``."""
    grad_s = grad_dropped = rowsum = None
    if grad_out is not None:
        grad_dropped = grad_out @ value.transpose(-2, -1)  # G V^T  (*, L, S)
        rowsum = (grad_out * out).sum(-1)  # D = rowsum(G * O)  (*, L)
    if grad_probs is not None:
        extra = (grad_probs * dropped).sum(-1)  # rowsum(G_P * Pd)  (*, L)
        rowsum = extra if rowsum is None else rowsum + extra
        grad_dropped = grad_probs if grad_dropped is None else grad_dropped + grad_probs
    if grad_dropped is not None:
        grad_p = drop(grad_dropped)  # dP = dL/dPd * M / (1 - p)
        grad_s = probs * (grad_p - rowsum.unsqueeze(-1))  # P * (dP - D)
    if grad_lse is not None:
        from_lse = probs * grad_lse.unsqueeze(-1).to(probs.dtype)  # dlse/dS = P
        grad_s = from_lse if grad_s is None else grad_s + from_lse
    return grad_s


def _dropout(keep: Tensor | None, p: float) -> Callable[[Tensor], Tensor]:
    """``t -> t * M / (1 - p)``, dropout's own product (the identity without dropout)."""
    if p == 0 or keep is None:
        return lambda t: t
    return lambda t: _masked(t, keep, p)


def _sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum a gradient over the dims broadcasting added or stretched, back to ``shape``."""
    return grad if grad.shape == shape else grad.sum_to_size(shape)


_attention = ManualOp(ManualAttentionFunction)


def _check(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None,
    dropout_p: float,
    is_causal: bool,
    enable_gqa: bool,
) -> None:
    """Raise the RuntimeError native SDPA would, with a message that names the problem."""
    if min(query.dim(), key.dim(), value.dim()) < 2:
        raise RuntimeError(
            "scaled_dot_product_attention: expected query, key, and value to all be at least "
            f"2 dimensional, but got query.dim: {query.dim()} key.dim: {key.dim()} and "
            f"value.dim: {value.dim()} instead."
        )
    if not (query.dtype == key.dtype == value.dtype):
        raise RuntimeError(
            "scaled_dot_product_attention: expected query, key, and value to have the same "
            f"dtype, but got query.dtype: {query.dtype} key.dtype: {key.dtype} and "
            f"value.dtype: {value.dtype} instead."
        )
    if not query.is_floating_point():
        raise RuntimeError(
            f"scaled_dot_product_attention: expected floating-point query, got {query.dtype}"
        )
    if not (query.device == key.device == value.device):
        raise RuntimeError(
            "scaled_dot_product_attention: expected query, key and value on one device, got "
            f"{query.device}, {key.device} and {value.device}"
        )
    if key.shape[-1] != query.shape[-1]:
        raise RuntimeError(
            f"scaled_dot_product_attention: key's last dimension ({key.shape[-1]}) must "
            f"match query's ({query.shape[-1]})"
        )
    if key.shape[-2] != value.shape[-2]:
        raise RuntimeError(
            f"scaled_dot_product_attention: key has {key.shape[-2]} positions (dim -2) but "
            f"value has {value.shape[-2]}"
        )
    if attn_mask is not None:
        if is_causal:
            raise RuntimeError(
                "_scaled_dot_product_attention: Explicit attn_mask should not be set when "
                "is_causal=True"
            )
        if attn_mask.dtype not in (torch.bool, torch.float32, query.dtype):
            raise RuntimeError(
                "scaled_dot_product_attention: expected attn_mask dtype to be bool or float "
                f"or to match query dtype, but got attn_mask.dtype: {attn_mask.dtype} and "
                f"query.dtype: {query.dtype} instead."
            )
    if dropout_p > 1:  # a negative dropout_p means none, as native's math backend reads it
        raise RuntimeError(f"dropout probability has to be between 0 and 1, but got {dropout_p}")
    if enable_gqa and query.dim() >= 3 and key.dim() >= 3:
        heads, kv_heads = query.shape[-3], key.shape[-3]
        if kv_heads != value.shape[-3] or kv_heads == 0 or heads % kv_heads:
            raise RuntimeError(
                "scaled_dot_product_attention: number of heads in key and value must divide "
                f"the number of heads in query (enable_gqa=True), got query {heads}, key "
                f"{kv_heads} and value {value.shape[-3]} heads (dim -3)"
            )


def _grouped(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None):
    """Grouped-query attention as a broadcast: ``Q (*, Hq, L, E)`` viewed as
    ``(*, Hk, g, L, E)`` with ``g = Hq / Hk`` (query head ``h`` reads key/value head
    ``h // g``, as ``repeat_interleave`` does), ``K``, ``V`` and a mask given a size-1 group
    dim. The Function's backward then sums ``dK``, ``dV`` over each group. Views only."""
    kv_heads = key.shape[-3]
    group = query.shape[-3] // kv_heads
    query = query.unflatten(-3, (kv_heads, group))  # (*, Hk, g, L, E)
    key, value = key.unsqueeze(-3), value.unsqueeze(-3)  # (*, Hk, 1, S, E)
    if mask is not None and mask.dim() >= 3:
        heads = mask.shape[-3]
        mask = mask.unflatten(-3, (kv_heads, group) if heads != 1 else (1, 1))
    return query, key, value, mask


def _attend(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None,
    dropout_p: float,
    scale: float,
    safe: bool,
    need_weights: bool,
) -> tuple[Tensor, Tensor | None]:
    """The hand-derived attention (see :class:`ManualAttentionFunction`), ``(O, Pd or
    None)``, for callers that already hold a canonical mask (bool True: attend, or float),
    such as ``ManualMultiheadAttention``. Autocast: the inputs are cast as native's would
    be and the Function runs with autocast off."""
    dtype = autocast_dtype(query.device.type)
    if dtype is None:
        outputs = _attention(query, key, value, mask, dropout_p, scale, False, safe, need_weights)
    else:
        query, key, value = (
            t.to(dtype) if t.dtype != torch.float64 else t for t in (query, key, value)
        )
        with torch.autocast(query.device.type, enabled=False):
            outputs = _attention(
                query, key, value, mask, dropout_p, scale, False, safe, need_weights
            )
    return outputs[0], (outputs[3] if need_weights else None)


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """``softmax(Q K^T * scale + mask) V``, with dropout on the probabilities, hand-derived.

    Same signature and semantics as :func:`torch.nn.functional.scaled_dot_product_attention`
    (its math backend): ``Q (*, L, E)``, ``K (*, S, E)``, ``V (*, S, Ev)`` -> ``(*, L, Ev)``;
    ``attn_mask`` bool (True: take part) or additive float, broadcastable to ``(*, L, S)``;
    ``is_causal`` (a top-left lower-triangular mask; not with ``attn_mask``); ``dropout_p``
    applied always, as native does; ``scale`` (default ``1 / sqrt(E)``); ``enable_gqa``
    (key/value heads, dim -3, shared by groups of query heads). A fully masked row gives 0.
    See :class:`ManualAttentionFunction` for the derivation of the backward.
    """
    dtype = autocast_dtype(query.device.type)
    if dtype is not None:  # autocast runs attention in low precision, mask included
        query, key, value, attn_mask = (
            t.to(dtype)
            if t is not None and t.is_floating_point() and t.dtype != torch.float64
            else t
            for t in (query, key, value, attn_mask)
        )
    _check(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa)  # as autocast left them
    mask = attn_mask
    if mask is not None and mask.is_floating_point() and mask.dtype != query.dtype:
        mask = mask.to(query.dtype)  # native adds it into the scores in place
    grouped = enable_gqa and query.dim() >= 3 and key.dim() >= 3
    grouped = grouped and query.shape[-3] != key.shape[-3]
    if grouped:
        query, key, value, mask = _grouped(query, key, value, mask)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    dropout_p = float(dropout_p) if dropout_p > 0 else 0.0
    if dtype is None:
        out = _attention(query, key, value, mask, dropout_p, scale, is_causal, True, False)[0]
    else:
        with torch.autocast(query.device.type, enabled=False):
            out = _attention(query, key, value, mask, dropout_p, scale, is_causal, True, False)[0]
    if grouped:
        out = out.flatten(-4, -3)  # (*, Hk, g, L, Ev) -> (*, Hq, L, Ev)
    return out
