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
from manualgrad.ops.layer_norm import ManualLayerNorm, ManualLayerNormFunction
from manualgrad.ops.linear import ManualLinear, ManualLinearFunction
from manualgrad.ops.mse import ManualMSEFunction, ManualMSELoss
from manualgrad.ops.softmax import (
    ManualLogSoftmax,
    ManualLogSoftmaxFunction,
    ManualSoftmax,
    ManualSoftmaxFunction,
)

__all__ = [
    "ConversionReport",
    "GradientReport",
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
    "backward_coverage",
    "check_gradients",
    "conversion_report",
    "functional",
    "hand_derived_nodes",
    "replace_linear",
    "replace_modules",
    "restore_linear",
    "restore_modules",
]

__version__ = "0.1.0"
