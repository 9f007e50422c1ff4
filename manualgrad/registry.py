"""The one table: which native ``torch.nn`` class each manual class stands for.

Conversion (:func:`~manualgrad.replace_modules`), the gradient check
(:func:`~manualgrad.check_gradients`), the Lightning gradient audit and the Lightning
backends all read this table and nothing else. Adding an op is one file in
``manualgrad/ops/`` plus one line here (and one in :mod:`manualgrad.functional`).

A manual class is a subclass of its native class that overrides ``forward`` only, so a
module's class can be swapped in place both ways and it keeps its parameters, buffers,
hooks and state_dict.
"""

from __future__ import annotations

from torch import nn

from manualgrad.ops.activations import ManualGELU, ManualReLU, ManualSigmoid, ManualSiLU, ManualTanh
from manualgrad.ops.cross_entropy import ManualCrossEntropyLoss, ManualNLLLoss
from manualgrad.ops.dropout import ManualDropout
from manualgrad.ops.embedding import ManualEmbedding
from manualgrad.ops.layer_norm import ManualLayerNorm
from manualgrad.ops.linear import ManualLinear
from manualgrad.ops.mse import ManualMSELoss
from manualgrad.ops.softmax import ManualLogSoftmax, ManualSoftmax

__all__ = ["MANUAL_CLASSES", "is_manual", "manual_class", "native_class", "register"]

#: native class -> the manual class that stands for it
MANUAL_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    nn.CrossEntropyLoss: ManualCrossEntropyLoss,
    nn.Dropout: ManualDropout,
    nn.Embedding: ManualEmbedding,
    nn.GELU: ManualGELU,
    nn.LayerNorm: ManualLayerNorm,
    nn.Linear: ManualLinear,
    nn.LogSoftmax: ManualLogSoftmax,
    nn.MSELoss: ManualMSELoss,
    nn.NLLLoss: ManualNLLLoss,
    nn.ReLU: ManualReLU,
    nn.SiLU: ManualSiLU,
    nn.Sigmoid: ManualSigmoid,
    nn.Softmax: ManualSoftmax,
    nn.Tanh: ManualTanh,
}


def register(native: type[nn.Module], manual: type[nn.Module]) -> None:
    """Add a row to the table: ``manual`` (a subclass of ``native`` that overrides only
    ``forward``) stands for ``native`` from now on."""
    if not (isinstance(manual, type) and issubclass(manual, native) and manual is not native):
        raise TypeError(f"{manual!r} must be a subclass of {native.__name__}")
    MANUAL_CLASSES[native] = manual


def manual_class(native: type) -> type[nn.Module] | None:
    """The manual class standing for exactly ``native`` (not its subclasses), or None."""
    return MANUAL_CLASSES.get(native)


def native_class(manual: type) -> type[nn.Module] | None:
    """The native class that exactly ``manual`` stands for, or None."""
    for native, cls in MANUAL_CLASSES.items():
        if cls is manual:
            return native
    return None


def is_manual(module: nn.Module) -> bool:
    """Whether ``module`` is (a subclass of) a manual class: its forward is hand-derived."""
    return isinstance(module, tuple(MANUAL_CLASSES.values()))
