"""Transformer layers whose every backward node with math in it is hand-derived.

A Transformer layer computes nothing of its own but residual additions: its math lives in
its submodules (attention, Linear, LayerNorm, Dropout, an activation module) and in the one
thing that need not be a module, ``self.activation``, a plain function when given as a
string or a function (``"relu"``, ``F.gelu``, ``torch.tanh``). :func:`replace_modules
<manualgrad.replace_modules>` converts the submodules; the classes here add the rest:

- ``self.activation`` given as a function runs as its hand-derived functional form
  (``F.relu`` -> :func:`manualgrad.functional.relu`, ``F.gelu`` -> ``gelu``, a
  ``functools.partial`` of one with keyword arguments too). A function with no hand-derived
  form is called as it is, so its backward stays native;
  :func:`manualgrad.conversion_report` says so next to the layer, and why.
- The residual additions ``x + f(x)`` stay native: their backward hands the gradient on to
  both addends unchanged (``AddBackward0``, structural in :mod:`manualgrad.check`).
- The encoder layer's inference fast path (``torch._transformer_encoder_layer_fwd``, taken
  by native in eval mode when no gradient is needed) is not taken: every forward runs the
  submodules, so the same code runs in training and evaluation, and outputs agree with
  native's fast path to rounding. A nested-tensor input, which only that fast path accepts
  (``nn.TransformerEncoder`` makes one from a padding mask in inference), goes to the
  native forward unchanged: no gradient is formed there.

The containers (``nn.TransformerEncoder``, ``nn.TransformerDecoder``, ``nn.Transformer``)
need no class of their own: their forward only builds masks (no gradient), calls the layers
and the optional final norm (a LayerNorm submodule, converted).

Constructed directly, a manual layer holds native submodules (its constructor is native's);
``replace_modules`` on a model converts the layers and their submodules in one go.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from manualgrad.ops.activations import gelu, relu, sigmoid, silu, tanh

__all__ = ["ManualTransformerEncoderLayer", "ManualTransformerDecoderLayer"]

#: activation functions a layer may be given -> their hand-derived functional forms
_HAND_DERIVED_ACTIVATIONS: tuple[tuple[Callable, Callable], ...] = (
    (F.relu, relu),
    (torch.relu, relu),
    (F.gelu, gelu),
    (F.tanh, tanh),
    (torch.tanh, tanh),
    (F.sigmoid, sigmoid),
    (torch.sigmoid, sigmoid),
    (F.silu, silu),
)


def _manual_activation(activation: Callable) -> Callable | None:
    """The hand-derived form of a layer's activation function (itself when it is one of
    manualgrad's), or None: a module, which conversion handles, or a function manualgrad
    has no hand-derived form for."""
    if isinstance(activation, nn.Module):
        return None
    partial = isinstance(activation, functools.partial) and not activation.args
    fn = activation.func if partial else activation
    for native, manual in _HAND_DERIVED_ACTIVATIONS:
        if fn is manual:
            return activation
        if fn is native:
            return functools.partial(manual, **activation.keywords) if partial else manual
    return None


def native_activation_reason(layer: nn.Module) -> str:
    """Why a manual layer's activation may run on native autograd, or "" when it does not."""
    activation = layer.activation
    if isinstance(activation, nn.Module) or _manual_activation(activation) is not None:
        return ""
    name = getattr(activation, "__qualname__", None) or type(activation).__name__
    return (
        f"its activation function {name} has no hand-derived form: it runs as given, on "
        "native autograd unless it calls manualgrad itself (give a manualgrad module or a "
        "function of manualgrad.functional instead)"
    )


def _activate(layer: nn.Module, x: Tensor) -> Tensor:
    """``layer.activation(x)``, hand-derived where manualgrad has the function."""
    manual = _manual_activation(layer.activation)
    return layer.activation(x) if manual is None else manual(x)


def _feed_forward(layer: nn.Module, x: Tensor, dropout: nn.Module) -> Tensor:
    """``dropout(linear2(dropout(activation(linear1(x)))))``, as native's ``_ff_block``."""
    return dropout(layer.linear2(layer.dropout(_activate(layer, layer.linear1(x)))))


def _attend(
    attn: nn.MultiheadAttention,
    dropout: nn.Module,
    x: Tensor,
    memory: Tensor,
    mask: Tensor | None,
    key_padding_mask: Tensor | None,
    is_causal: bool,
) -> Tensor:
    """One attention block without its residual, as native's ``_sa_block``/``_mha_block``.
    The masks go to the attention module as given: it canonicalises them (bool to
    additive) exactly as the native layer would before it."""
    out = attn(
        x,
        memory,
        memory,
        attn_mask=mask,
        key_padding_mask=key_padding_mask,
        need_weights=False,
        is_causal=is_causal,
    )[0]
    return dropout(out)


class ManualTransformerEncoderLayer(nn.TransformerEncoderLayer):
    r"""Drop-in for :class:`torch.nn.TransformerEncoderLayer`: self-attention and a
    feed-forward block, each with a residual connection and a LayerNorm.

    ``norm_first=False`` (post-norm): ``x = norm1(x + sa(x)); x = norm2(x + ff(x))``;
    ``norm_first=True`` (pre-norm): ``x = x + sa(norm1(x)); x = x + ff(norm2(x))``, with
    ``sa(x) = dropout1(self_attn(x, x, x))`` and
    ``ff(x) = dropout2(linear2(dropout(activation(linear1(x)))))``.

    The gradient of a residual ``y = x + f(x)`` is ``dL/dx = G + (df/dx)^T G``: the
    upstream gradient ``G`` reaches ``x`` both directly and through ``f``'s own
    (hand-derived) backward. The layer's own code adds nothing else; see the module
    docstring for what is hand-derived and what is not.

    Args, Shape: as :class:`torch.nn.TransformerEncoderLayer` (same constructor,
    state_dict and initialisation under the same seed).

    Examples::

        >>> layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32)
        >>> layer = manualgrad.replace_modules(layer)
        >>> layer(torch.randn(5, 3, 16)).shape
        torch.Size([5, 3, 16])
    """

    def forward(
        self,
        src: Tensor,
        src_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        if src.is_nested:  # only native's inference fast path takes nested tensors
            return super().forward(src, src_mask, src_key_padding_mask, is_causal)
        attend = functools.partial(_attend, self.self_attn, self.dropout1)
        x = src
        if self.norm_first:
            h = self.norm1(x)
            x = x + attend(h, h, src_mask, src_key_padding_mask, is_causal)
            x = x + _feed_forward(self, self.norm2(x), self.dropout2)
        else:
            x = self.norm1(x + attend(x, x, src_mask, src_key_padding_mask, is_causal))
            x = self.norm2(x + _feed_forward(self, x, self.dropout2))
        return x


class ManualTransformerDecoderLayer(nn.TransformerDecoderLayer):
    r"""Drop-in for :class:`torch.nn.TransformerDecoderLayer`: self-attention, attention
    over the encoder's output ``memory``, and a feed-forward block, each with a residual
    connection and a LayerNorm.

    Post-norm: ``x = norm1(x + sa(x)); x = norm2(x + mha(x, m)); x = norm3(x + ff(x))``;
    pre-norm: ``x = x + sa(norm1(x)); x = x + mha(norm2(x), m); x = x + ff(norm3(x))``.
    As for :class:`ManualTransformerEncoderLayer`, each residual passes ``G`` on unchanged
    besides through its branch, and ``memory`` collects ``dL/dm`` from the key and value
    projections of ``multihead_attn``.

    Args, Shape: as :class:`torch.nn.TransformerDecoderLayer` (same constructor,
    state_dict and initialisation under the same seed).

    Examples::

        >>> layer = manualgrad.replace_modules(nn.TransformerDecoderLayer(16, 2, 32))
        >>> layer(torch.randn(4, 3, 16), torch.randn(6, 3, 16)).shape
        torch.Size([4, 3, 16])
    """

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        tgt_is_causal: bool = False,
        memory_is_causal: bool = False,
    ) -> Tensor:
        self_attend = functools.partial(_attend, self.self_attn, self.dropout1)
        cross_attend = functools.partial(_attend, self.multihead_attn, self.dropout2)
        sa_masks = (tgt_mask, tgt_key_padding_mask, tgt_is_causal)
        mha_masks = (memory_mask, memory_key_padding_mask, memory_is_causal)
        x = tgt
        if self.norm_first:
            h = self.norm1(x)
            x = x + self_attend(h, h, *sa_masks)
            x = x + cross_attend(self.norm2(x), memory, *mha_masks)
            x = x + _feed_forward(self, self.norm3(x), self.dropout3)
        else:
            x = self.norm1(x + self_attend(x, x, *sa_masks))
            x = self.norm2(x + cross_attend(x, memory, *mha_masks))
            x = self.norm3(x + _feed_forward(self, x, self.dropout3))
        return x
