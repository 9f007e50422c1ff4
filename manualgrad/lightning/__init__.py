"""Lightning parts of manualgrad: the training module, data modules, gradient audit, CLI.

Importing this subpackage imports Lightning and TensorBoard; ``import manualgrad`` alone
does not.
"""

from manualgrad.lightning.callbacks import GradientAudit, native_twin
from manualgrad.lightning.data import (
    CSVData,
    LinearData,
    RegressionData,
    SineData,
    TutorialData,
)
from manualgrad.lightning.guards import GracefulStop, NonFiniteCheck, NonFiniteError
from manualgrad.lightning.module import Regressor, build_network

__all__ = [
    "CSVData",
    "GracefulStop",
    "GradientAudit",
    "LinearData",
    "NonFiniteCheck",
    "NonFiniteError",
    "RegressionData",
    "Regressor",
    "SineData",
    "TutorialData",
    "build_network",
    "native_twin",
]
