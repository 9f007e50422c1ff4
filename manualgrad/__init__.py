"""manualgrad: hand-derived backward passes for real PyTorch training.

``import manualgrad`` needs torch only; the Lightning parts live in
``manualgrad.lightning`` and are imported from there.
"""

from manualgrad import functional
from manualgrad.check import GradientReport, backward_coverage, check_gradients, hand_derived_nodes
from manualgrad.convert import (
    ConversionReport,
    conversion_report,
    replace_linear,
    replace_modules,
    restore_linear,
    restore_modules,
)
from manualgrad.explain import Explanation, explain
from manualgrad.ops.activations import (
    ManualGELU,
    ManualGELUFunction,
    ManualReLU,
    ManualReLUFunction,
    ManualSigmoid,
    ManualSigmoidFunction,
    ManualSiLU,
    ManualSiLUFunction,
    ManualTanh,
    ManualTanhFunction,
)
from manualgrad.ops.attention import ManualAttentionFunction
from manualgrad.ops.cross_entropy import (
    ManualCrossEntropyFunction,
    ManualCrossEntropyLoss,
    ManualNLLLoss,
    ManualNLLLossFunction,
)
from manualgrad.ops.dropout import (
    ManualDropout,
    ManualDropoutFunction,
    ManualDropoutInplaceFunction,
)
from manualgrad.ops.embedding import ManualEmbedding, ManualEmbeddingFunction
from manualgrad.ops.hf_conv1d import ManualConv1DFunction
from manualgrad.ops.layer_norm import ManualLayerNorm, ManualLayerNormFunction
from manualgrad.ops.linear import ManualLinear, ManualLinearFunction
from manualgrad.ops.mse import ManualMSEFunction, ManualMSELoss
from manualgrad.ops.multihead import ManualMultiheadAttention
from manualgrad.ops.softmax import (
    ManualLogSoftmax,
    ManualLogSoftmaxFunction,
    ManualSoftmax,
    ManualSoftmaxFunction,
)
from manualgrad.ops.transformer import ManualTransformerDecoderLayer, ManualTransformerEncoderLayer

__all__ = [
    "ConversionReport",
    "Explanation",
    "GradientReport",
    "ManualAttentionFunction",
    "ManualConv1DFunction",
    "ManualCrossEntropyFunction",
    "ManualCrossEntropyLoss",
    "ManualDropout",
    "ManualDropoutFunction",
    "ManualDropoutInplaceFunction",
    "ManualEmbedding",
    "ManualEmbeddingFunction",
    "ManualGELU",
    "ManualGELUFunction",
    "ManualLayerNorm",
    "ManualLayerNormFunction",
    "ManualLinear",
    "ManualLinearFunction",
    "ManualLogSoftmax",
    "ManualLogSoftmaxFunction",
    "ManualMSEFunction",
    "ManualMSELoss",
    "ManualMultiheadAttention",
    "ManualNLLLoss",
    "ManualNLLLossFunction",
    "ManualReLU",
    "ManualReLUFunction",
    "ManualSiLU",
    "ManualSiLUFunction",
    "ManualSigmoid",
    "ManualSigmoidFunction",
    "ManualSoftmax",
    "ManualSoftmaxFunction",
    "ManualTanh",
    "ManualTanhFunction",
    "ManualTransformerDecoderLayer",
    "ManualTransformerEncoderLayer",
    "backward_coverage",
    "check_gradients",
    "conversion_report",
    "explain",
    "functional",
    "hand_derived_nodes",
    "replace_linear",
    "replace_modules",
    "restore_linear",
    "restore_modules",
]

__version__ = "0.1.0"
