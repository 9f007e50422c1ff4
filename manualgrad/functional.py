"""Functional forms of the hand-derived ops, with torch's signatures: the one list of them.

``manualgrad.functional.X`` stands in for ``torch.nn.functional.X`` (``linear``,
``mse_loss``, ``relu``, ``softmax``, ``cross_entropy``, ``layer_norm``, ...): the same
arguments, defaults, errors and warnings, with a hand-derived backward.
"""

from manualgrad.ops.activations import gelu, relu, sigmoid, silu, tanh
from manualgrad.ops.cross_entropy import cross_entropy, nll_loss
from manualgrad.ops.dropout import dropout
from manualgrad.ops.embedding import embedding
from manualgrad.ops.layer_norm import layer_norm
from manualgrad.ops.linear import linear
from manualgrad.ops.mse import mse_loss
from manualgrad.ops.softmax import log_softmax, softmax

__all__ = [
    "cross_entropy",
    "dropout",
    "embedding",
    "gelu",
    "layer_norm",
    "linear",
    "log_softmax",
    "mse_loss",
    "nll_loss",
    "relu",
    "sigmoid",
    "silu",
    "softmax",
    "tanh",
]
