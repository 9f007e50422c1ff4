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

One mix is left to eager: torch.compile tracing a torch.func transform (say
``torch.compile(torch.func.grad(f))``). Dynamo then inlines ``forward`` and lets the
transform differentiate its ops with their built-in rules, silently dropping the
hand-derived backward and jvp (pytorch issues 193279 and 192985), and under ``vmap`` with
parameters that require grad it crashes. So there the op runs outside the graph, through
``Function.apply``: a graph break, which ``fullgraph=True`` reports as an error instead of
a wrong gradient.
"""

from __future__ import annotations

import sys

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
        if torch.compiler.is_compiling():  # both checks are constant-folded while tracing
            if torch._C._are_functorch_transforms_active():
                return _this_module._apply_outside_graph(self.function, *args)
            return self.traceable.apply(*args)
        if torch._C._are_functorch_transforms_active():
            return self.function.apply(*args)
        return self._c_apply(*args)


def _apply(fn_cls: type[Function], *args):
    return fn_cls.apply(*args)


def __getattr__(name: str):
    # ``_apply_outside_graph`` is made on first use, while torch.compile traces and Dynamo
    # is loaded anyway: ``torch.compiler.disable`` at import would load Dynamo, about a
    # second, on every ``import manualgrad``.
    if name == "_apply_outside_graph":
        reason = (
            "manualgrad runs this op outside the graph: under a torch.func transform, "
            "torch.compile would drop its hand-derived backward/jvp (pytorch issues 193279, "
            "192985); apply the transform outside torch.compile to keep one graph"
        )
        globals()[name] = torch.compiler.disable(_apply, reason=reason)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_this_module = sys.modules[__name__]


# Whether a device type has autocast at all ("meta" has not): looked up once per type, as
# torch.amp.is_autocast_available is slow-ish and, in torch 2.11, a graph break.
_HAS_AUTOCAST = {"cpu": True, "cuda": True}


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast would cast to on ``device_type``, or None when it is off."""
    available = _HAS_AUTOCAST.get(device_type)
    if available is None:
        available = _HAS_AUTOCAST[device_type] = torch.amp.is_autocast_available(device_type)
    if available and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None
