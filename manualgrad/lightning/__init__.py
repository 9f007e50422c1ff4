"""Lightning parts of manualgrad: the models, data modules, callbacks (gradient audit, clean
stop, NaN/inf check) and the ``manualgrad`` command line.

Importing this subpackage imports Lightning and TensorBoard; ``import manualgrad`` alone
does not.
"""

from manualgrad.lightning.callbacks import (
    GracefulStop,
    GradientAudit,
    NonFiniteCheck,
    NonFiniteError,
    native_twin,
)
from manualgrad.lightning.data import (
    CSVData,
    LinearData,
    RegressionData,
    SineData,
    SpiralData,
    SplitData,
    TutorialData,
)
from manualgrad.lightning.gpt import TinyGPT
from manualgrad.lightning.model import Classifier, Regressor, build_network
from manualgrad.lightning.sequence_data import SortData

__all__ = [
    "CSVData",
    "Classifier",
    "GracefulStop",
    "GradientAudit",
    "LinearData",
    "NonFiniteCheck",
    "NonFiniteError",
    "RegressionData",
    "Regressor",
    "SineData",
    "SortData",
    "SpiralData",
    "SplitData",
    "TinyGPT",
    "TutorialData",
    "build_network",
    "native_twin",
]
