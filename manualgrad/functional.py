"""Functional forms of the hand-derived ops, with torch's signatures.

``manualgrad.functional.linear`` and ``manualgrad.functional.mse_loss`` stand in for
``torch.nn.functional.linear`` and ``torch.nn.functional.mse_loss``.
"""

from manualgrad.ops.linear import linear
from manualgrad.ops.mse import mse_loss

__all__ = ["linear", "mse_loss"]
