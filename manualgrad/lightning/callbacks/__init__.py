"""The callbacks, all in one place: the gradient audit, the clean stop on Ctrl+C or SIGTERM,
and the check for NaN and inf."""

from manualgrad.lightning.callbacks.audit import GradientAudit, native_twin
from manualgrad.lightning.callbacks.nonfinite import NonFiniteCheck, NonFiniteError
from manualgrad.lightning.callbacks.stop import GracefulStop

__all__ = ["GracefulStop", "GradientAudit", "NonFiniteCheck", "NonFiniteError", "native_twin"]
