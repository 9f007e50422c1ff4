"""Prove a converted model right: its hand-derived gradients next to native autograd's."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from manualgrad import registry
from manualgrad.convert import as_native
from manualgrad.ops._apply import hand_derived_function

__all__ = [
    "TOLERANCES",
    "GradientDiff",
    "GradientReport",
    "check_gradients",
    "compare",
    "hand_derived_nodes",
    "backward_coverage",
    "Coverage",
]

#: (rtol, atol) per dtype; a gradient passes when max |manual - native| <= atol + rtol * scale,
#: where scale is its largest native entry. The two runs differ in the order of their sums
#: (and, where a manual forward is written differently, in its rounding), nothing more.
TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-7),
    torch.bfloat16: (2e-2, 1e-4),
    torch.float16: (5e-3, 1e-5),
}


# Backward nodes with no math in them: they only move, view, cast or route a gradient
# (residual additions included: their backward hands the gradient on unchanged).
_STRUCTURAL = frozenset(
    """
    AccumulateGrad AddBackward0 AliasBackward0 AsStridedBackward0 CatBackward0
    CloneBackward0 CopyBackwards ExpandBackward0 PermuteBackward0 ReshapeAliasBackward0
    SelectBackward0 SliceBackward0 SplitBackward0 SplitWithSizesBackward0 SqueezeBackward0
    SqueezeBackward1 SqueezeBackward2 StackBackward0 TBackward0 ToCopyBackward0
    TransposeBackward0 TransposeBackward1 UnbindBackward0 UnsafeSplitBackward0
    UnsafeViewBackward0 UnsqueezeBackward0 ViewBackward0
    """.split()
)


@dataclass(frozen=True)
class Coverage:
    """The backward graph below an output: its hand-derived nodes and the native nodes
    with math in them, each by name (views, reshapes, casts, residual additions and
    AccumulateGrad are neither)."""

    hand_derived: dict[str, int]
    native: dict[str, int]

    @property
    def complete(self) -> bool:
        """Every node with math in it is hand-derived (and there is at least one)."""
        return bool(self.hand_derived) and not self.native

    def __str__(self) -> str:
        total = sum(self.hand_derived.values())
        native = ", ".join(f"{k} x{v}" for k, v in sorted(self.native.items())) or "none"
        nodes = total + sum(self.native.values())
        return f"hand-derived {total} of {nodes} backward nodes; native: {native}"


def backward_coverage(output: Tensor) -> Coverage:
    """Walk the backward graph below ``output`` and sort its nodes (see :class:`Coverage`)."""
    hand, native, seen, stack = Counter(), Counter(), set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        fn_cls = hand_derived_function(getattr(type(node), "_forward_cls", None))
        if fn_cls is not None:
            hand[fn_cls.__name__] += 1
        elif type(node).__name__ not in _STRUCTURAL:
            native[type(node).__name__] += 1
        stack.extend(next_node for next_node, _ in node.next_functions)
    return Coverage(dict(hand), dict(native))


def hand_derived_nodes(output: Tensor) -> Counter:
    """The hand-derived backward nodes in the graph below ``output``, by Function name."""
    return Counter(backward_coverage(output).hand_derived)


@dataclass(frozen=True)
class GradientDiff:
    """One parameter (or input): how far its hand-derived gradient is from autograd's."""

    name: str
    shape: tuple[int, ...]
    max_abs: float  # max |manual - native|
    max_rel: float  # max_abs / scale
    scale: float  # max |native|
    passed: bool


@dataclass(frozen=True)
class GradientReport:
    """What :func:`check_gradients` found; ``print(report)`` shows it as a table."""

    rows: tuple[GradientDiff, ...]
    backward_calls: dict[str, int]  # hand-derived Function -> nodes in the manual graph
    native_nodes: dict[str, int]  # native backward nodes with math in them, by name
    module_calls: dict[str, int]  # manual module name -> forward calls in the manual run
    loss_manual: float
    loss_native: float

    @property
    def max_abs(self) -> float:
        return max((r.max_abs for r in self.rows), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((r.max_rel for r in self.rows), default=0.0)

    @property
    def coverage(self) -> Coverage:
        """How much of the backward was hand-derived (see :func:`backward_coverage`)."""
        return Coverage(self.backward_calls, self.native_nodes)

    @property
    def passed(self) -> bool:
        """Every gradient within tolerance, and a hand-derived backward actually ran."""
        return sum(self.backward_calls.values()) > 0 and all(r.passed for r in self.rows)

    def __str__(self) -> str:
        calls = ", ".join(f"{k} x{v}" for k, v in self.backward_calls.items()) or "none"
        lines = [
            f"check_gradients: {'PASSED' if self.passed else 'FAILED'}; "
            f"max abs diff {self.max_abs:.3g}, max rel diff {self.max_rel:.3g}",
            f"{self.coverage}",
            f"hand-derived backward nodes: {calls}; "
            f"loss manual {self.loss_manual:.8g}, native {self.loss_native:.8g}",
        ]
        idle = [name for name, n in self.module_calls.items() if n == 0]
        if idle:
            lines.append(f"manual modules whose forward never ran: {', '.join(idle)}")
        width = max([len("parameter")] + [len(r.name) for r in self.rows])
        lines.append(f"{'parameter':<{width}}  {'shape':<14} {'max abs':>9} {'max rel':>9}  ok")
        for r in self.rows:
            shape = str(tuple(r.shape))
            lines.append(
                f"{r.name:<{width}}  {shape:<14} {r.max_abs:>9.3g} {r.max_rel:>9.3g}  "
                f"{'yes' if r.passed else 'NO'}"
            )
        return "\n".join(lines)


def compare(
    name: str, manual: Tensor, native: Tensor, rtol: float | None = None, atol: float | None = None
) -> GradientDiff:
    """How far ``manual`` is from ``native``, and whether that is within tolerance
    (:data:`TOLERANCES` for ``native``'s dtype unless ``rtol``/``atol`` are given).
    NaNs agree with NaNs and equal infinities with each other."""
    default_rtol, default_atol = TOLERANCES.get(native.dtype, TOLERANCES[torch.float32])
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    manual, native = manual.detach().double(), native.detach().double()
    err = torch.where(manual == native, 0.0, (manual - native).abs())  # equal infs agree
    err = err.masked_fill(manual.isnan() & native.isnan(), 0.0).nan_to_num(nan=math.inf)
    finite = native[native.isfinite()].abs()
    max_abs = err.max().item() if err.numel() else 0.0
    scale = finite.max().item() if finite.numel() else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    passed = max_abs <= atol + rtol * scale
    return GradientDiff(name, tuple(native.shape), max_abs, max_rel, scale, passed)


def check_gradients(
    model: nn.Module,
    *example_inputs: Any,
    target: Any = None,
    loss_fn: Callable[..., Tensor] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
) -> GradientReport:
    """Run ``model`` once with its hand-derived backward and once with native autograd.

    The native run gives every manualgrad module (``ManualLinear``, ``ManualMSELoss``, ...: the
    table in :mod:`manualgrad.registry`, in ``model`` and in ``loss_fn`` when it is a module)
    its native class for the duration,
    on the same batch, parameters and random state (dropout draws the same masks). The
    gradient of every parameter that requires one, and of every input tensor that
    requires one, is compared.

    Args:
        model: the converted model (see :func:`manualgrad.replace_modules`).
        *example_inputs: the positional arguments of ``model``.
        target: passed to ``loss_fn(output, target)`` when given.
        loss_fn: reduces the output to a scalar: ``loss_fn(output, target)``, or
            ``loss_fn(output)`` without a target. Default: the output contracted with a
            fixed random tensor, i.e. a random upstream gradient.
        rtol, atol: a gradient passes when ``max |manual - native| <= atol + rtol * scale``
            (``scale``: its largest native entry). Defaults by dtype: float32 ``1e-5, 1e-7``,
            float64 ``1e-10, 1e-12``.
        seed: seeds the random state of both runs.

    Nothing about the model changes: gradients come from ``torch.autograd.grad`` (``.grad``
    is untouched), buffers (BatchNorm statistics) are restored, train/eval mode is kept, and
    the global random state is restored. Forward hooks run once per run.

    Returns:
        A :class:`GradientReport`: per parameter ``max_abs`` and ``max_rel`` (``max_abs``
        over the largest native entry), ``passed``, the hand-derived backward nodes that ran,
        and manual modules whose forward never ran. ``print(report)`` shows a table.

    Examples::

        >>> model = manualgrad.replace_modules(nn.Sequential(nn.Linear(3, 8), nn.Tanh()))
        >>> report = manualgrad.check_gradients(model, torch.randn(16, 3))
        >>> report.passed
        True
    """
    roots = [model] + ([loss_fn] if isinstance(loss_fn, nn.Module) else [])
    manual = [m for r in roots for m in r.modules() if registry.is_manual(m)]
    manual = list({id(m): m for m in manual}.values())
    if not manual:
        raise ValueError(
            "check_gradients: the model has no manualgrad module; "
            "convert it first with manualgrad.replace_modules(model)"
        )
    names = {id(m): n or "<model>" for n, m in model.named_modules() if registry.is_manual(m)}
    if isinstance(loss_fn, nn.Module):
        names.update({id(m): n for n, m in loss_fn.named_modules(prefix="loss_fn")})
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    inputs = [
        (f"input[{i}]", x)
        for i, x in enumerate(example_inputs)
        if isinstance(x, Tensor) and x.requires_grad
    ]
    wrt = params + inputs
    if not wrt:
        raise ValueError("check_gradients: no parameter or input requires a gradient")
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    calls = Counter({id(m): 0 for m in manual})

    def count(module, args, output):
        calls[id(module)] += 1

    def run() -> tuple[Tensor, Tensor, tuple[Tensor | None, ...]]:
        """Returns the loss, what the coverage is read from (the loss, or the output when
        the loss is the check's own contraction) and the gradients."""
        torch.manual_seed(seed)
        output = model(*example_inputs)
        covered = output
        if loss_fn is not None:
            loss = covered = loss_fn(output) if target is None else loss_fn(output, target)
        elif isinstance(output, Tensor):
            gen = torch.Generator(device=output.device).manual_seed(seed)
            upstream = torch.randn(output.shape, generator=gen, device=output.device)
            loss = (output * upstream.to(output.dtype)).sum()
        else:
            raise TypeError(
                f"check_gradients: the model returned {type(output).__name__}, not a "
                "Tensor; pass loss_fn to reduce it to a scalar"
            )
        if loss.numel() != 1:
            raise RuntimeError(
                f"check_gradients: loss_fn must return a scalar, got shape {tuple(loss.shape)}"
            )
        grads = torch.autograd.grad(loss, [t for _, t in wrt], allow_unused=True)
        return loss, covered, grads

    devices = sorted({t.device.index or 0 for _, t in wrt if t.device.type == "cuda"})
    hooks = [m.register_forward_hook(count) for m in manual]
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            loss_m, covered, grads_m = run()
            coverage = backward_coverage(covered)
            del covered
            for h in hooks:
                h.remove()
            with as_native(manual):
                loss_n, _, grads_n = run()
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)

    rows = []
    for (name, t), gm, gn in zip(wrt, grads_m, grads_n, strict=True):
        gm = torch.zeros_like(t) if gm is None else gm
        gn = torch.zeros_like(t) if gn is None else gn
        rows.append(compare(name, gm, gn, rtol, atol))
    module_calls = {names[id(m)]: calls[id(m)] for m in manual}
    return GradientReport(
        tuple(rows),
        coverage.hand_derived,
        coverage.native,
        module_calls,
        loss_m.item(),
        loss_n.item(),
    )
