"""manualgrad: hand-derived backward passes for real PyTorch training.

``import manualgrad`` needs torch only; the Lightning parts live in
``manualgrad.lightning`` and are imported from there.
"""

from manualgrad import functional
from manualgrad.check import GradientReport, check_gradients
from manualgrad.convert import ConversionReport, conversion_report, replace_linear, restore_linear
from manualgrad.linear import ManualLinear, ManualLinearFunction
from manualgrad.mse import ManualMSEFunction, ManualMSELoss

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
    "replace_linear",
    "restore_linear",
]

__version__ = "0.1.0"
