"""manualgrad: hand-derived backward passes for real PyTorch training.

``import manualgrad`` needs torch only; the Lightning parts live in
``manualgrad.lightning`` and are imported from there.
"""

from manualgrad import functional
from manualgrad.linear import ManualLinear, ManualLinearFunction
from manualgrad.mse import ManualMSEFunction, ManualMSELoss

__all__ = [
    "ManualLinear",
    "ManualLinearFunction",
    "ManualMSEFunction",
    "ManualMSELoss",
    "functional",
]

__version__ = "0.1.0"
