"""manualgrad: hand-derived backward passes for real PyTorch training.

``import manualgrad`` needs torch only; the Lightning parts live in
``manualgrad.lightning`` and are imported from there.
"""

from manualgrad import functional
from manualgrad.check import GradientReport, check_gradients, hand_derived_nodes
from manualgrad.convert import (
    ConversionReport,
    conversion_report,
    replace_linear,
    replace_modules,
    restore_linear,
    restore_modules,
)
from manualgrad.ops.linear import ManualLinear, ManualLinearFunction
from manualgrad.ops.mse import ManualMSEFunction, ManualMSELoss

__all__ = [
    "ConversionReport",
    "GradientReport",
    "ManualLinear",
    "ManualLinearFunction",
    "ManualMSEFunction",
    "ManualMSELoss",
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
