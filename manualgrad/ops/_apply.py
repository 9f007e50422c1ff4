"""Plumbing (a first reader may skip it): how a hand-derived Function is run, one place
for that choice, shared by every op.

A Function needs three faces, and :class:`ManualOp` picks one per call:

- plain eager: an *old-style* twin (``forward(ctx, *args)``, no ``setup_context``) whose
  forward calls the Function's own ``forward`` and then its ``setup_context``. For a class
  that defines ``setup_context``, ``Function.apply`` binds default arguments with
  ``inspect.signature`` on every call (in Python up to torch 2.13, in C from 2.14): about a
  third of a small layer's step. An old-style class is not bound, and needs no private
  API: ``Function.apply`` is the public path.
- under torch.func transforms (vmap, grad, jacrev, jacfwd): ``Function.apply`` on the
  ``setup_context`` class itself, which is where functorch hooks in (it refuses
  old-style Functions).
- while torch.compile traces: a twin class without the custom ``jvp``, because Dynamo
  refuses any Function that defines one (it has no forward-mode story yet).

All three share the very same ``forward``, ``setup_context``, ``backward`` and (but for
the traced twin) ``jvp`` staticmethods, so the hand-derived rule is the one that runs,
whichever face is taken. Whether a transform is active comes from
:mod:`manualgrad.ops._torch_private`, the one guarded place for private torch APIs.

One mix is left to eager: torch.compile tracing a torch.func transform (say
``torch.compile(torch.func.grad(f))``). Dynamo then inlines ``forward`` and lets the
transform differentiate its ops with their built-in rules, silently dropping the
hand-derived backward and jvp (pytorch issues 193279 and 192985), and under ``vmap`` with
parameters that require grad it crashes. So there the op runs outside the graph, through
``Function.apply``: a graph break, which ``fullgraph=True`` reports as an error instead of
a wrong gradient.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable, Iterator

import torch
from torch.autograd import Function

from manualgrad.ops import _torch_private

__all__ = [
    "ManualOp",
    "autocast_dtype",
    "hand_derived_function",
    "recording",
    "warn_traceable",
]


#: every Function run through a :class:`ManualOp`: the hand-derived ones
HAND_DERIVED: set[type[Function]] = set()


def hand_derived_function(fn_cls: object) -> type[Function] | None:
    """The hand-derived Function that a backward node's ``_forward_cls`` stands for (the
    op itself, the op behind one of its twins, or a subclass of an op), or None for a
    native node."""
    fn_cls = getattr(fn_cls, "hand_derived", fn_cls)
    if isinstance(fn_cls, type) and any(c in HAND_DERIVED for c in fn_cls.__mro__):
        return fn_cls
    return None


def _old_style_twin(fn_cls: type[Function]) -> type[Function]:
    """``fn_cls`` as an old-style Function: ``forward(ctx, *args)`` runs ``fn_cls.forward``
    then ``fn_cls.setup_context``; backward and jvp are inherited unchanged."""
    forward, setup_context = fn_cls.forward, fn_cls.setup_context

    def forward_with_ctx(ctx, *args):
        output = forward(*args)
        setup_context(ctx, args, output)
        return output

    return type(
        fn_cls.__name__ + "Eager",
        (fn_cls,),
        {
            "forward": staticmethod(forward_with_ctx),
            # The base class's setup_context is what marks a Function as old-style.
            "setup_context": staticmethod(Function.setup_context),
            "__doc__": fn_cls.__doc__,
            "hand_derived": fn_cls,
        },
    )


class ManualOp:
    """Runs ``fn_cls`` through whichever face fits the calling context (see above)."""

    def __init__(self, fn_cls: type[Function]) -> None:
        HAND_DERIVED.add(fn_cls)
        self.function = fn_cls
        self.eager = _old_style_twin(fn_cls)
        self.traceable = type(
            fn_cls.__name__ + "Traceable",
            (fn_cls,),
            {"jvp": staticmethod(Function.jvp), "__doc__": fn_cls.__doc__, "hand_derived": fn_cls},
        )

    def __call__(self, *args):
        active = _torch_private.functorch_active()
        if torch.compiler.is_compiling():  # both checks are constant-folded while tracing
            if active:
                return _this_module._apply_outside_graph(self.function, *args)
            return self.traceable.apply(*args)
        if active:
            return self.function.apply(*args)
        if _recorder is not None:  # manualgrad.explain is recording this forward
            return _recorder(self, args)
        return self.eager.apply(*args)


#: what :func:`recording` installed (None: plain eager runs as it is; one global check)
_recorder: Callable[[ManualOp, tuple], object] | None = None


@contextlib.contextmanager
def recording(recorder: Callable[[ManualOp, tuple], object]) -> Iterator[None]:
    """While in the block, every plain-eager call of a :class:`ManualOp` is handed to
    ``recorder(op, args)``, which must run ``op.eager.apply(*args)`` and return its result
    (:func:`manualgrad.explain` records each call's Function, arguments and outputs). Calls
    under torch.func transforms or torch.compile are not recorded."""
    global _recorder
    previous, _recorder = _recorder, recorder
    try:
        yield
    finally:
        _recorder = previous


def _apply(fn_cls: type[Function], *args):
    return fn_cls.apply(*args)


def _warn(message: str) -> bool:
    warnings.warn(message, stacklevel=5)
    return True


def warn_traceable(message: str) -> None:
    """``warnings.warn(message)`` that torch.compile runs once while tracing (as it does for
    torch's own ops) instead of breaking the graph; in eager code, a plain warning on
    every call, which Python's warning filters then show once per place."""
    if torch.compiler.is_compiling():
        _this_module._warn_while_tracing(message)
    else:
        _warn(message)


def __getattr__(name: str):
    # Made on first use, while torch.compile traces and Dynamo is loaded anyway: either
    # call at import would load Dynamo, about a second, on every ``import manualgrad``.
    if name == "_apply_outside_graph":
        reason = (
            "manualgrad runs this op outside the graph: under a torch.func transform, "
            "torch.compile would drop its hand-derived backward/jvp (pytorch issues 193279, "
            "192985); apply the transform outside torch.compile to keep one graph"
        )
        globals()[name] = torch.compiler.disable(_apply, reason=reason)
        return globals()[name]
    if name == "_warn_while_tracing":
        globals()[name] = torch.compiler.assume_constant_result(_warn)
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
