"""Functional forms of the hand-derived ops, with torch's signatures: the one list of them.

``manualgrad.functional.X`` stands in for ``torch.nn.functional.X`` (``linear``,
``mse_loss``, ``relu``, ``softmax``, ``cross_entropy``, ``layer_norm``, ...): the same
arguments, defaults, errors and warnings, with a hand-derived backward.
"""

from manualgrad.ops.activations import gelu, relu, sigmoid, silu, tanh
from manualgrad.ops.attention import scaled_dot_product_attention
from manualgrad.ops.cross_entropy import cross_entropy, nll_loss
from manualgrad.ops.dropout import dropout
from manualgrad.ops.embedding import embedding
from manualgrad.ops.hf_conv1d import hf_conv1d
from manualgrad.ops.layer_norm import layer_norm
from manualgrad.ops.linear import linear
from manualgrad.ops.mse import mse_loss
from manualgrad.ops.multihead import multi_head_attention_forward
from manualgrad.ops.softmax import log_softmax, softmax

__all__ = [
    "cross_entropy",
    "dropout",
    "embedding",
    "gelu",
    "hf_conv1d",
    "layer_norm",
    "linear",
    "log_softmax",
    "mse_loss",
    "multi_head_attention_forward",
    "nll_loss",
    "relu",
    "scaled_dot_product_attention",
    "sigmoid",
    "silu",
    "softmax",
    "tanh",
]
