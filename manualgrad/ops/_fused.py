"""Plumbing (a first reader may skip it): a hand-derived formula fused into one kernel.

A backward written in torch ops makes one pass over memory per op in it: GELU's erf form
is about ten, LayerNorm's three-term form about thirteen, where native autograd runs one
fused kernel (``gelu_backward``, ``native_layer_norm_backward``). On large tensors that is
the whole gap. :func:`fused` keeps the formula as it is written, a plain function of
tensors, and on large eager CPU tensors runs it compiled by ``torch.compile`` (inductor
fuses its elementwise ops and reductions into one loop): the same formula, the same ops,
one pass. So it is still the hand-derived rule that runs; only the loop is generated.

The compiled form is used only where it is both safe and faster, else the formula runs as
plain torch ops:

- eager code only: under torch.compile the formula is traced into the caller's graph
  (which fuses it anyway), and under a torch.func transform (vmap of a backward, say) the
  transform must see the plain ops;
- grad mode off: with ``create_graph=True`` (double backward) autograd must record the
  plain ops of the formula;
- large, dense, real floating tensors on the CPU, at least :data:`MIN_NUMEL` elements in
  the first one: a compiled call costs tens of microseconds in Python and guards, and its
  OpenMP loop then competes for the cores, which small tensors do not repay. CUDA is left
  to the plain formula until it is measured there.

``MANUALGRAD_FUSE=0`` in the environment (or :data:`ENABLED` set to False) turns it off.
A formula that cannot be compiled (no C++ compiler, say) warns once and runs unfused.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from manualgrad.ops import _torch_private

__all__ = ["ENABLED", "FUSED", "MIN_NUMEL", "fused"]

#: whether large eager CPU tensors take the compiled formula
ENABLED: bool = os.environ.get("MANUALGRAD_FUSE", "1") != "0"

#: the size (elements of the first tensor argument) from which the compiled formula is used
MIN_NUMEL: int = 1 << 18

#: every fused formula, by op file and name (``"activations.ManualTanhFunction.chain"``, ...)
FUSED: dict[str, Callable[..., Tensor]] = {}

_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def fused(formula: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``formula`` (tensors and constants in, a tensor or tuple out), run compiled on large
    eager CPU tensors (see above), as written everywhere else. ``.formula`` is the plain
    function; ``.state`` holds the compiled one once made (``"compiled"``), how many calls
    it ran (``"compiled_calls"``) and whether compiling failed (``"failed"``)."""
    state: dict[str, object] = {"compiled": None, "compiled_calls": 0, "failed": False}

    @functools.wraps(formula)
    def run(first: Tensor, *args):
        if (
            not torch.compiler.is_compiling()  # first: while tracing, nothing else is looked at
            and ENABLED
            and not state["failed"]
            and type(first) is Tensor  # no subclasses, no functorch wrappers
            and first.numel() >= MIN_NUMEL
            and first.device.type == "cpu"
            and first.dtype in _FLOATS
            and first.layout is torch.strided
            and not torch.is_grad_enabled()
            and not _torch_private.functorch_active()
        ):
            return _run_compiled(state, formula, first, *args)
        return formula(first, *args)

    run.formula = formula
    run.state = state
    FUSED[f"{formula.__module__.rpartition('.')[2]}.{formula.__qualname__}"] = run
    return run


def _run_compiled(state: dict, formula: Callable, *args):
    compiled = state["compiled"]
    if compiled is None:
        compiled = state["compiled"] = torch.compile(formula, dynamic=True, fullgraph=True)
    try:
        result = compiled(*args)
    except Exception as error:  # noqa: BLE001  (any compiler failure: run the plain formula)
        state["failed"] = True
        warnings.warn(
            f"manualgrad could not compile the hand-derived formula {formula.__qualname__} "
            f"({type(error).__name__}: {error}); it runs unfused from now on",
            stacklevel=3,
        )
        return formula(*args)
    state["compiled_calls"] += 1
    return result
