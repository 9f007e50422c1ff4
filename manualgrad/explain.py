"""Explain a backward pass op by op: what each hand-derived Function received, formed and
kept, and a local check of its derivation against native autograd.

:func:`explain` runs one forward and backward. While the forward runs, every hand-derived
call is recorded (``manualgrad.ops._apply.recording``: the Function, a copy of its
arguments, its outputs, the module it ran in); hooks on the backward nodes then catch the
gradient each node received and the gradients it returned. After the backward, each
node's vector-Jacobian product is formed again by native autograd, from the same inputs and
the same incoming gradient, through the Function's *native reference*: its ``forward``
(written in native torch ops, so autograd can differentiate it), or its ``native``
attribute where the forward alone does not say what native computes (a staticmethod with
the forward's arguments). The difference names the op whose derivation is wrong, not the
parameters downstream of it.

Each Function declares the formula of each gradient once, beside its derivation, in a
``formulas`` class attribute keyed by the name of the forward argument:
``formulas = {"input": "dL/dX = G W  (*, in)", ...}``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from manualgrad.explain_rows import (
    Call,
    ExplainRow,
    Gradient,
    SavedTensor,
    forward_arg_names,
    forward_step,
    hand_derived_row,
    hook_nodes,
    is_tiny,
    native_row,
    on_cuda,
    saved_of_call,
)
from manualgrad.ops._apply import ManualOp, recording

__all__ = ["Explanation", "ExplainRow", "Gradient", "SavedTensor", "explain", "explain_step"]


@dataclass(frozen=True)
class Explanation:
    """What :func:`explain` found; ``print(explanation)`` shows the table (and, for tiny
    tensors, the chain rule with its numbers)."""

    rows: tuple[ExplainRow, ...]
    loss: float
    forward: tuple[tuple[str, str, tuple[tuple[str, Any], ...], Any], ...]  # tiny cases only
    gradients: dict[str, Tensor]  # the final gradient of each parameter and input

    @property
    def passed(self) -> bool:
        """Every hand-derived node's local check is within tolerance, and there is one."""
        return any(r.hand_derived for r in self.rows) and all(r.ok for r in self.rows)

    @property
    def failed(self) -> tuple[ExplainRow, ...]:
        return tuple(r for r in self.rows if not r.ok)

    def __str__(self) -> str:
        from manualgrad.explain_render import render

        return render(self)


def explain(
    model: nn.Module,
    *inputs: Any,
    target: Any = None,
    loss_fn: Callable[..., Tensor] | None = None,
) -> Explanation:
    """Run ``model`` forward and backward once and explain the backward, node by node.

    Args:
        model: a model with manualgrad modules (see :func:`manualgrad.replace_modules`), or
            any module calling the functional forms.
        *inputs: the positional arguments of ``model``.
        target: passed to ``loss_fn(output, target)`` when given.
        loss_fn: reduces the output to a scalar (as for :func:`manualgrad.check_gradients`);
            default: the output contracted with a fixed random tensor.

    Nothing about the model changes: gradients come from ``torch.autograd.grad`` (``.grad``
    is untouched), buffers and the global random state are restored.

    Returns:
        An :class:`Explanation`: ``.rows`` in backward order, ``.passed``, ``str()`` a table.

    Examples::

        >>> neuron = manualgrad.ManualLinear(1, 1)
        >>> e = manualgrad.explain(neuron, x, target=y, loss_fn=manualgrad.ManualMSELoss())
        >>> e.passed, [r.op for r in e.rows]
        (True, ['ManualMSEFunction', 'ManualLinearFunction'])
    """
    roots = {"": model} | ({"loss_fn": loss_fn} if isinstance(loss_fn, nn.Module) else {})
    wrt = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    wrt += [(f"input[{i}]", x) for i, x in enumerate(inputs) if _needs_grad(x)]
    if not wrt:
        raise ValueError("explain: no parameter or input requires a gradient")

    def compute() -> tuple[Any, Tensor]:
        output = model(*inputs)
        if loss_fn is not None:
            return output, loss_fn(output) if target is None else loss_fn(output, target)
        if not isinstance(output, Tensor):
            raise TypeError(
                f"explain: the model returned {type(output).__name__}, not a Tensor; pass "
                "loss_fn to reduce it to a scalar"
            )
        gen = torch.Generator(device=output.device).manual_seed(0)
        upstream = torch.randn(output.shape, generator=gen, device=output.device)
        return output, (output * upstream.to(output.dtype)).sum()

    labels = {id(x): ("x" if len(inputs) == 1 else f"x{i}") for i, x in enumerate(inputs)}
    if isinstance(target, Tensor):
        labels[id(target)] = "y"
    labels |= {id(p): _SYMBOLS.get(n, n) for n, p in model.named_parameters()}
    return explain_step(compute, roots, wrt, labels)


#: the tutorial's symbols for a lone layer's parameters (``w``, ``b``)
_SYMBOLS = {"weight": "w", "bias": "b"}


def _needs_grad(x: object) -> bool:
    return isinstance(x, Tensor) and x.requires_grad


def explain_step(
    compute: Callable[[], tuple[Any, Tensor]],
    roots: dict[str, nn.Module],
    wrt: list[tuple[str, Tensor]],
    labels: dict[int, str] | None = None,
) -> Explanation:
    """:func:`explain` for any step: ``compute()`` returns ``(output, loss)``; the modules
    in ``roots`` (prefix -> module) name the ops; the gradients of ``wrt`` (name, tensor)
    are formed. The Lightning command explains a LightningModule's training step with it."""
    labels = dict(labels or {})
    calls: list[Call] = []
    stack: list[str] = []
    node_modules: dict[object, str] = {}
    names = {}
    for prefix, root in roots.items():
        for name, m in root.named_modules(prefix=prefix):
            names.setdefault(id(m), name or "<model>")

    def push(module, args):
        stack.append(names[id(module)])

    def pop(module, args, output):
        name = stack.pop()
        node = getattr(output, "grad_fn", None)
        if node is not None and node not in node_modules:
            node_modules[node] = name  # innermost module first: its hook runs first

    def record(op: ManualOp, args: tuple):
        copies = tuple(a.detach().clone() if isinstance(a, Tensor) else a for a in args)
        cuda = sorted({a.device.index or 0 for a in args if on_cuda(a)})
        rng = (torch.get_rng_state(), cuda, [torch.cuda.get_rng_state(d) for d in cuda])
        out = op.eager.apply(*args)
        outputs = out if isinstance(out, tuple) else (out,)
        node = next((o.grad_fn for o in outputs if isinstance(o, Tensor) and o.grad_fn), None)
        if node is not None:
            arg_names = forward_arg_names(op.function)
            saved = tuple(saved_of_call(node, args, outputs, arg_names))
            call = Call(
                op, copies, tuple(map(id, args)), outputs, stack[-1] if stack else "-", rng, saved
            )
            node_modules[node] = call
            calls.append(call)
        return out

    modules = [m for root in roots.values() for m in root.modules()]
    hooks = [m.register_forward_pre_hook(push) for m in modules]
    hooks += [m.register_forward_hook(pop, always_call=True) for m in modules]
    buffers = [(b, b.detach().clone()) for root in roots.values() for b in root.buffers()]
    devices = sorted({t.device.index or 0 for _, t in wrt if on_cuda(t)})
    order: list[tuple[object, tuple, tuple]] = []
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            with recording(record):
                output, loss = compute()
            for h in hooks:
                h.remove()
            if loss.numel() != 1:
                raise RuntimeError(f"explain: the loss must be a scalar, got {tuple(loss.shape)}")
            if isinstance(output, Tensor):
                labels.setdefault(id(output), "y_hat")
            labels[id(loss)] = "L"
            native_saved = hook_nodes(loss, order)
            grads = torch.autograd.grad(loss, [t for _, t in wrt], allow_unused=True)
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for b, copy in buffers:
                b.copy_(copy)
    for i, call in enumerate(calls):
        for o in call.outputs:
            if isinstance(o, Tensor) and id(o) not in labels:
                labels[id(o)] = f"h{i + 1}"
    tiny = all(is_tiny(c) for c in calls)
    rows = []
    for node, grad_inputs, grad_outputs in order:
        entry = node_modules.get(node)
        if isinstance(entry, Call):
            rows.append(hand_derived_row(entry, node, grad_inputs, grad_outputs, labels, tiny))
        else:
            rows.append(native_row(node, entry, grad_inputs, grad_outputs, native_saved))
    tiny = tiny and all(r.hand_derived for r in rows)
    forward = tuple(forward_step(c, labels) for c in calls) if tiny else ()
    gradients = {n: g for (n, _), g in zip(wrt, grads, strict=True) if g is not None}
    return Explanation(tuple(rows), loss.item(), forward, gradients)
