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

import importlib
import sys

from torch import nn

from manualgrad.ops.activations import ManualGELU, ManualReLU, ManualSigmoid, ManualSiLU, ManualTanh
from manualgrad.ops.cross_entropy import ManualCrossEntropyLoss, ManualNLLLoss
from manualgrad.ops.dropout import ManualDropout
from manualgrad.ops.embedding import ManualEmbedding
from manualgrad.ops.layer_norm import ManualLayerNorm
from manualgrad.ops.linear import ManualLinear
from manualgrad.ops.mse import ManualMSELoss
from manualgrad.ops.multihead import ManualMultiheadAttention
from manualgrad.ops.softmax import ManualLogSoftmax, ManualSoftmax
from manualgrad.ops.transformer import ManualTransformerDecoderLayer, ManualTransformerEncoderLayer

__all__ = [
    "LAZY_CLASSES",
    "MANUAL_CLASSES",
    "is_manual",
    "load_lazy",
    "manual_class",
    "native_class",
    "register",
]

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
    nn.MultiheadAttention: ManualMultiheadAttention,
    nn.NLLLoss: ManualNLLLoss,
    nn.ReLU: ManualReLU,
    nn.SiLU: ManualSiLU,
    nn.Sigmoid: ManualSigmoid,
    nn.Softmax: ManualSoftmax,
    nn.Tanh: ManualTanh,
    nn.TransformerDecoderLayer: ManualTransformerDecoderLayer,
    nn.TransformerEncoderLayer: ManualTransformerEncoderLayer,
}

#: rows whose native class belongs to an optional library, which ``import manualgrad`` must
#: not import: native "module:class" -> manual "module:class". A row joins the table when
#: its native module is already imported (a model holding such a module has imported it);
#: every reader of the table asks first, through :func:`load_lazy`. The manual class's
#: module imports the library only then.
LAZY_CLASSES: dict[str, str] = {
    "transformers.pytorch_utils:Conv1D": "manualgrad.ops.hf_conv1d:ManualConv1D",
}


def load_lazy() -> None:
    """Add to the table each row of :data:`LAZY_CLASSES` whose library is imported by now
    (and not in the table yet: a few dictionary look-ups per call once it is)."""
    for native_path, manual_path in LAZY_CLASSES.items():
        native_module, _, native_name = native_path.partition(":")
        # not imported: no model can hold one yet; a version without the class: none can
        native = getattr(sys.modules.get(native_module), native_name, None)
        if native is None or native in MANUAL_CLASSES:
            continue
        manual_module, _, manual_name = manual_path.partition(":")
        register(native, getattr(importlib.import_module(manual_module), manual_name))


def register(native: type[nn.Module], manual: type[nn.Module]) -> None:
    """Add a row to the table: ``manual`` (a subclass of ``native`` that overrides only
    ``forward``) stands for ``native`` from now on."""
    if not (isinstance(manual, type) and issubclass(manual, native) and manual is not native):
        raise TypeError(f"{manual!r} must be a subclass of {native.__name__}")
    MANUAL_CLASSES[native] = manual


def manual_class(native: type) -> type[nn.Module] | None:
    """The manual class standing for exactly ``native`` (not its subclasses), or None."""
    load_lazy()
    return MANUAL_CLASSES.get(native)


def native_class(manual: type) -> type[nn.Module] | None:
    """The native class that exactly ``manual`` stands for, or None."""
    load_lazy()
    for native, cls in MANUAL_CLASSES.items():
        if cls is manual:
            return native
    return None


def is_manual(module: nn.Module) -> bool:
    """Whether ``module`` is (a subclass of) a manual class: its forward is hand-derived."""
    load_lazy()
    return isinstance(module, tuple(MANUAL_CLASSES.values()))
