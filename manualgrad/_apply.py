"""How a hand-derived Function is run: one place for that choice, shared by every op.

A Function needs three faces, and :class:`ManualOp` picks one per call:

- plain eager: the C-level ``apply``. ``Function.apply`` (Python) binds default
  arguments with ``inspect.signature`` on every call, which costs about a third of a
  small layer's step; our wrappers pass every argument positionally, so the C-level
  apply, which still calls ``setup_context``, is equivalent and cheaper.
- under torch.func transforms (vmap, grad, jacrev, jacfwd): ``Function.apply``, which
  is where functorch hooks in.
- while torch.compile traces: a twin class without the custom ``jvp``, because Dynamo
  refuses any Function that defines one (it has no forward-mode story yet). The twin
  inherits the same ``forward``/``setup_context``/``backward``, so the hand-derived
  rule is still the one that runs.
"""

from __future__ import annotations

import torch
from torch.autograd import Function

__all__ = ["ManualOp", "autocast_dtype"]


class ManualOp:
    """Runs ``fn_cls`` through whichever ``apply`` fits the calling context."""

    def __init__(self, fn_cls: type[Function]) -> None:
        self.function = fn_cls
        self.traceable = type(
            fn_cls.__name__ + "Traceable",
            (fn_cls,),
            {"jvp": staticmethod(Function.jvp), "__doc__": fn_cls.__doc__},
        )
        self._c_apply = super(Function, fn_cls).apply  # type: ignore[misc]

    def __call__(self, *args):
        if torch.compiler.is_compiling():
            return self.traceable.apply(*args)
        if torch._C._are_functorch_transforms_active():
            return self.function.apply(*args)
        return self._c_apply(*args)


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast would cast to on ``device_type``, or None when it is off."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None
