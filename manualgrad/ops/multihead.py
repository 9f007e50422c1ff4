"""Multi-head attention whose every backward is hand-derived: functional form and module.

The projections go through :func:`manualgrad.ops.linear.linear` (``in_proj`` and
``out_proj``), the attention through :class:`~manualgrad.ops.attention.ManualAttentionFunction`;
what is left between them is views, transposes and concatenations (data movement).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from manualgrad.ops import attention
from manualgrad.ops.linear import linear

__all__ = ["multi_head_attention_forward", "ManualMultiheadAttention"]


def _canonical_mask(
    mask: Tensor | None,
    name: str,
    other_type: torch.dtype | None,
    other_name: str,
    target_type: torch.dtype,
    check_other: bool = True,
) -> Tensor | None:
    """A bool mask (True: masked out) as an additive float mask (``-inf`` where True), with
    native's errors and deprecation warning; a float mask is returned as it is."""
    if mask is None:
        return None
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise AssertionError(f"only bool and floating types of {name} are supported")
    if check_other and other_type is not None and mask.dtype != other_type:
        warnings.warn(
            f"Support for mismatched {name} and {other_name} is deprecated. "
            "Use same type for both instead.",
            stacklevel=3,
        )
    if mask.is_floating_point():
        return mask
    return torch.zeros_like(mask, dtype=target_type).masked_fill_(mask, float("-inf"))


def _shape_check(query, key, value, key_padding_mask, attn_mask, num_heads) -> bool:
    """Native's AssertionErrors for bad shapes; whether the input is batched."""
    if query.dim() not in (2, 3):
        raise AssertionError(
            "query should be unbatched 2D or batched 3D tensor but received "
            f"{query.dim()}-D query tensor"
        )
    batched = query.dim() == 3
    kind = "batched (3-D)" if batched else "unbatched (2-D)"
    if key.dim() != query.dim() or value.dim() != query.dim():
        raise AssertionError(
            f"For {kind} `query`, expected `key` and `value` to be {query.dim()}-D but found "
            f"{key.dim()}-D and {value.dim()}-D tensors respectively"
        )
    if key_padding_mask is not None and key_padding_mask.dim() != query.dim() - 1:
        raise AssertionError(
            f"For {kind} `query`, expected `key_padding_mask` to be `None` or "
            f"{query.dim() - 1}-D but found {key_padding_mask.dim()}-D tensor instead"
        )
    if attn_mask is not None:
        if attn_mask.dim() not in (2, 3):
            raise AssertionError(
                f"For {kind} `query`, expected `attn_mask` to be `None`, 2-D or 3-D but found "
                f"{attn_mask.dim()}-D tensor instead"
            )
        expected = (num_heads, query.shape[0], key.shape[0])
        if not batched and attn_mask.dim() == 3 and attn_mask.shape != expected:
            raise AssertionError(
                f"Expected `attn_mask` shape to be {expected} but got {attn_mask.shape}"
            )
    return batched


def _in_projection(query, key, value, in_proj_weight, in_proj_bias, separate):
    """``q, k, v  (L|S, N, E)``: one packed ManualLinear for self-attention, two when key is
    value, else three; the weight slices are views (their backward is a concatenation)."""
    if separate is not None:
        w_q, w_k, w_v = separate
        b_q, b_k, b_v = (None,) * 3 if in_proj_bias is None else in_proj_bias.chunk(3)
        return linear(query, w_q, b_q), linear(key, w_k, b_k), linear(value, w_v, b_v)
    embed_dim = query.shape[-1]
    if key is value and query is key:
        proj = linear(query, in_proj_weight, in_proj_bias)  # (L, N, 3E)
        return proj.unflatten(-1, (3, embed_dim)).unbind(-2)
    w_q, w_kv = in_proj_weight.split([embed_dim, 2 * embed_dim])
    b_q, b_kv = (
        (None, None) if in_proj_bias is None else in_proj_bias.split([embed_dim, 2 * embed_dim])
    )
    if key is value:
        k, v = linear(key, w_kv, b_kv).unflatten(-1, (2, embed_dim)).unbind(-2)  # (S, N, E)
        return linear(query, w_q, b_q), k, v
    w_k, w_v = w_kv.chunk(2)
    b_k, b_v = (None, None) if b_kv is None else b_kv.chunk(2)
    return linear(query, w_q, b_q), linear(key, w_k, b_k), linear(value, w_v, b_v)


def _heads(x: Tensor, static: Tensor | None, bsz: int, num_heads: int) -> Tensor:
    """``(S, N, E) -> (N, H, S, E/H)``, a view; or ``static  (N*H, S, E/H)`` viewed so."""
    if static is not None:
        return static.view(bsz, num_heads, static.shape[1], static.shape[2])
    return x.unflatten(-1, (num_heads, -1)).permute(1, 2, 0, 3)


def multi_head_attention_forward(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    embed_dim_to_check: int,
    num_heads: int,
    in_proj_weight: Tensor | None,
    in_proj_bias: Tensor | None,
    bias_k: Tensor | None,
    bias_v: Tensor | None,
    add_zero_attn: bool,
    dropout_p: float,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    training: bool = True,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    use_separate_proj_weight: bool = False,
    q_proj_weight: Tensor | None = None,
    k_proj_weight: Tensor | None = None,
    v_proj_weight: Tensor | None = None,
    static_k: Tensor | None = None,
    static_v: Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Functional form of :class:`ManualMultiheadAttention`.

    Same signature, semantics and errors as :func:`torch.nn.functional.multi_head_attention_forward`
    (sequence-first ``(L, N, E)`` or unbatched ``(L, E)`` inputs); every backward is
    hand-derived (see :class:`~manualgrad.ops.attention.ManualAttentionFunction`).
    """
    batched = _shape_check(query, key, value, key_padding_mask, attn_mask, num_heads)
    if not batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    tgt_len, bsz, embed_dim = query.shape
    src_len = key.shape[0]
    key_padding_mask = _canonical_mask(
        key_padding_mask,
        "key_padding_mask",
        None if attn_mask is None else attn_mask.dtype,
        "attn_mask",
        query.dtype,
    )
    if is_causal and attn_mask is None:
        raise RuntimeError(
            "Need attn_mask if specifying the is_causal hint. You may use the Transformer "
            "module method `generate_square_subsequent_mask` to create this mask."
        )
    if is_causal and key_padding_mask is None and not need_weights:
        attn_mask = None  # the hint alone: attention builds the causal mask itself
    else:
        attn_mask = _canonical_mask(attn_mask, "attn_mask", None, "", query.dtype, False)
        if key_padding_mask is not None:
            is_causal = False  # the merged mask is no longer causal
    if embed_dim != embed_dim_to_check:
        raise AssertionError(
            f"was expecting embedding dimension of {embed_dim_to_check}, but got {embed_dim}"
        )
    head_dim = embed_dim // num_heads
    if head_dim * num_heads != embed_dim:
        raise AssertionError(f"embed_dim {embed_dim} not divisible by num_heads {num_heads}")
    if use_separate_proj_weight:
        if key.shape[:2] != value.shape[:2]:
            raise AssertionError(
                f"key's sequence and batch dims {key.shape[:2]} do not match value's "
                f"{value.shape[:2]}"
            )
        for name, w in (("q", q_proj_weight), ("k", k_proj_weight), ("v", v_proj_weight)):
            if w is None:
                raise AssertionError(
                    f"use_separate_proj_weight is True but {name}_proj_weight is None"
                )
        separate = (q_proj_weight, k_proj_weight, v_proj_weight)
    else:
        if key.shape != value.shape:
            raise AssertionError(f"key shape {key.shape} does not match value shape {value.shape}")
        if in_proj_weight is None:
            raise AssertionError("use_separate_proj_weight is False but in_proj_weight is None")
        separate = None
    q, k, v = _in_projection(query, key, value, in_proj_weight, in_proj_bias, separate)

    if attn_mask is not None:  # (L, S) or (N*H, L, S)
        expected = (
            (tgt_len, src_len) if attn_mask.dim() == 2 else (bsz * num_heads, tgt_len, src_len)
        )
        if attn_mask.dim() not in (2, 3):
            raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")
        if attn_mask.shape != expected:
            raise RuntimeError(
                f"The shape of the {attn_mask.dim()}D attn_mask is {attn_mask.shape}, but "
                f"should be {expected}."
            )
    if bias_k is not None and bias_v is not None:
        if static_k is not None or static_v is not None:
            raise AssertionError("bias cannot be added to static key or value.")
        k = torch.cat([k, bias_k.expand(1, bsz, embed_dim)])  # (S + 1, N, E)
        v = torch.cat([v, bias_v.expand(1, bsz, embed_dim)])
        attn_mask = _pad_key(attn_mask)
        key_padding_mask = _pad_key(key_padding_mask)
    elif bias_k is not None or bias_v is not None:
        raise AssertionError("bias_k and bias_v must both be set or both be None")

    q = _heads(q, None, bsz, num_heads)  # (N, H, L, hd)
    for name, static in (("static_k", static_k), ("static_v", static_v)):
        if static is not None and (
            static.shape[0] != bsz * num_heads or static.shape[2] != head_dim
        ):
            raise AssertionError(
                f"expecting {name} of shape ({bsz * num_heads}, S, {head_dim}), got "
                f"{tuple(static.shape)}"
            )
    k = _heads(k, static_k, bsz, num_heads)  # (N, H, S, hd)
    v = _heads(v, static_v, bsz, num_heads)
    if add_zero_attn:  # one more key and value, all zeros
        zeros = k.new_zeros(bsz, num_heads, 1, head_dim)
        k, v = torch.cat([k, zeros], dim=2), torch.cat([v, zeros.to(v.dtype)], dim=2)
        attn_mask = _pad_key(attn_mask)
        key_padding_mask = _pad_key(key_padding_mask)
    src_len = k.shape[2]

    if attn_mask is not None:  # (N, H, L, S) or (1, 1, L, S)
        heads = (1, 1) if attn_mask.dim() == 2 else (bsz, num_heads)
        attn_mask = attn_mask.reshape(*heads, tgt_len, src_len)
    if key_padding_mask is not None:
        if key_padding_mask.shape != (bsz, src_len):
            raise AssertionError(
                f"Expected key_padded_mask.shape to be {(bsz, src_len)}, but got "
                f"{tuple(key_padding_mask.shape)}"
            )
        kpm = key_padding_mask.view(bsz, 1, 1, src_len)
        attn_mask = kpm if attn_mask is None else attn_mask + kpm
    if not training:
        dropout_p = 0.0

    if need_weights:
        if is_causal and attn_mask is None:
            raise AssertionError("FIXME: is_causal not implemented for need_weights")
        scale = 1.0 / math.sqrt(head_dim)
        out, weights = attention._attend(q, k, v, attn_mask, dropout_p, scale, False, True)
        if average_attn_weights:
            weights = _head_mean(weights)  # (N, L, S)
    else:
        out = attention.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)
        weights = None
    out = out.permute(2, 0, 1, 3).reshape(tgt_len * bsz, embed_dim)  # (L*N, E)
    out = linear(out, out_proj_weight, out_proj_bias).view(tgt_len, bsz, -1)  # (L, N, E)
    if not batched:
        out = out.squeeze(1)
        weights = None if weights is None else weights.squeeze(0)
    return out, weights


def _pad_key(mask: Tensor | None) -> Tensor | None:
    """One more key position, not masked (0 added to its score)."""
    return None if mask is None else nn.functional.pad(mask, (0, 1))


def _head_mean(weights: Tensor) -> Tensor:
    """``(N, H, L, S) -> (N, L, S)``, the mean over heads as a ManualLinear with the constant
    weight ``1/H`` (so its backward, ``G / H`` to every head, is hand-derived too)."""
    heads = weights.shape[1]
    mean = torch.full((1, heads), 1.0 / heads, dtype=weights.dtype, device=weights.device)
    return linear(weights.permute(0, 2, 3, 1), mean).squeeze(-1)  # (N, L, S, 1) -> (N, L, S)


class ManualMultiheadAttention(nn.MultiheadAttention):
    r"""Drop-in for :class:`torch.nn.MultiheadAttention` whose every backward is hand-derived.

    ``MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W_O`` with
    ``head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)``: the in- and out-projections are
    :class:`~manualgrad.ops.linear.ManualLinearFunction`, the attention
    :class:`~manualgrad.ops.attention.ManualAttentionFunction`. A subclass of
    ``nn.MultiheadAttention``: same constructor, parameters, initialisation under the same
    seed and state_dict. It always takes native's general ("slow") path; native's inference
    fast path computes the same values.

    Args:
        embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim,
        batch_first, device, dtype: as :class:`torch.nn.MultiheadAttention`.

    Shape:
        - query ``(L, E)``, ``(L, N, E)`` or ``(N, L, E)`` with ``batch_first``; key and value
          ``(S, kdim)`` / ``(S, vdim)`` likewise.
        - Output ``(L, E)`` / ``(L, N, E)`` / ``(N, L, E)``; weights (``need_weights=True``)
          ``(N, L, S)`` averaged over heads, ``(N, H, L, S)`` if not (no ``N`` unbatched).

    Examples::

        >>> mha = ManualMultiheadAttention(16, 4, batch_first=True)
        >>> x = torch.randn(2, 5, 16)
        >>> out, _ = mha(x, x, x, need_weights=False, is_causal=True,
        ...              attn_mask=nn.Transformer.generate_square_subsequent_mask(5))
        >>> out.shape
        torch.Size([2, 5, 16])
    """

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        if self.batch_first and batched:  # sequence first, keeping "key is value" true
            if key is value:
                if query is key:
                    query = key = value = query.transpose(1, 0)
                else:
                    query, key = (x.transpose(1, 0) for x in (query, key))
                    value = key
            else:
                query, key, value = (x.transpose(1, 0) for x in (query, key, value))
        separate = not self._qkv_same_embed_dim
        out, weights = multi_head_attention_forward(
            query,
            key,
            value,
            self.embed_dim,
            self.num_heads,
            self.in_proj_weight,
            self.in_proj_bias,
            self.bias_k,
            self.bias_v,
            self.add_zero_attn,
            self.dropout,
            self.out_proj.weight,
            self.out_proj.bias,
            training=self.training,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            use_separate_proj_weight=separate,
            q_proj_weight=self.q_proj_weight if separate else None,
            k_proj_weight=self.k_proj_weight if separate else None,
            v_proj_weight=self.v_proj_weight if separate else None,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
        )
        if self.batch_first and batched:
            out = out.transpose(1, 0)
        return out, weights
