"""Plumbing of :func:`manualgrad.explain` (a first reader may skip it): the rows it
reports, and how each is formed from a recorded call and the gradients its backward node
received and returned, with the local check against native autograd."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from manualgrad.check import _STRUCTURAL, compare
from manualgrad.ops._apply import ManualOp, hand_derived_function

__all__ = ["NO_REFERENCE", "ExplainRow", "Gradient", "SavedTensor", "native_reference"]

#: how a row's note begins when native autograd could not differentiate its reference
NO_REFERENCE = "native reference failed"


@dataclass(frozen=True)
class SavedTensor:
    """A tensor a backward node kept from the forward."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int


@dataclass(frozen=True)
class Gradient:
    """A gradient a node received (``of`` an output) or formed (``of`` an input)."""

    of: str  # the forward argument's name ("input", "weight"), or "output", "output[1]"
    shape: tuple[int, ...]
    norm: float
    formula: str | None = None  # formed gradients only: what the Function declares
    label: str = ""  # the tensor's name in the model ("weight", "y_hat"), when it has one
    value: Tensor | None = field(default=None, repr=False, compare=False)  # one-element only
    formed: bool = True  # False: the backward returned None (a zero gradient)


@dataclass(frozen=True)
class ExplainRow:
    """One backward node, in the order the backward ran it."""

    op: str  # the hand-derived Function's name, or the native node's
    module: str  # qualified name of the module it ran in ("<model>" the model itself, "-")
    hand_derived: bool
    incoming: tuple[Gradient, ...]
    produced: tuple[Gradient, ...]
    saved: tuple[SavedTensor, ...]
    max_abs_diff: float | None  # against native autograd's VJP (None: not checked)
    max_rel_diff: float | None
    ok: bool
    note: str = ""
    local: tuple[float | None, ...] = ()  # tiny cases: each formed gradient's local derivative


@dataclass
class Call:
    """One recorded hand-derived call."""

    op: ManualOp
    args: tuple  # copies of the tensor arguments as they were before the call
    arg_ids: tuple[int, ...]  # id() of each argument itself (to name it)
    outputs: tuple
    module: str
    rng: tuple[Tensor, list[int], list[Tensor]]
    saved: tuple[SavedTensor, ...]
    incoming: tuple = ()
    produced: tuple = ()


def _bytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _same(a: object, b: Tensor) -> bool:
    return isinstance(a, Tensor) and (
        a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.dtype == b.dtype)
    )


def forward_arg_names(fn_cls: type) -> list[str]:
    return list(inspect.signature(fn_cls.forward).parameters)


def on_cuda(t: object) -> bool:
    return isinstance(t, Tensor) and t.device.type == "cuda"


def is_tiny(call: Call) -> bool:
    tensors = [t for t in call.args + call.outputs if isinstance(t, Tensor)]
    return all(t.numel() == 1 for t in tensors)


def saved_of_call(node, args: tuple, outputs: tuple, arg_names: list[str]):
    """What a hand-derived node keeps, each named for the output or argument it is."""
    for j, t in enumerate(node.saved_tensors):
        if t is None:
            continue
        name = next((_out(k, outputs) for k, o in enumerate(outputs) if _same(o, t)), None)
        if name is None:
            name = next((arg_names[i] for i, a in enumerate(args) if _same(a, t)), f"saved[{j}]")
        yield SavedTensor(name, tuple(t.shape), str(t.dtype).removeprefix("torch."), _bytes(t))


def _out(k: int, outputs: tuple) -> str:
    return "output" if len(outputs) == 1 else f"output[{k}]"


def hook_nodes(loss: Tensor, order: list) -> dict:
    """A hook on every node below ``loss`` with math in it, appending ``(node, grads in,
    grads out)`` to ``order`` as the backward runs it; returns what each native node keeps."""
    seen, stack, saved = set(), [loss.grad_fn], {}
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(n for n, _ in node.next_functions)
        hand = hand_derived_function(getattr(type(node), "_forward_cls", None)) is not None
        if not hand and type(node).__name__ in _STRUCTURAL:
            continue
        if not hand:
            saved[node] = tuple(_native_saved(node))
        node.register_hook(lambda gi, go, node=node: order.append((node, gi, go)))
    return saved


def _native_saved(node):
    for attr in dir(node):
        if attr.startswith("_saved_") and not attr.endswith("_raw"):
            try:
                t = getattr(node, attr)
            except RuntimeError:
                continue
            if isinstance(t, Tensor):
                dtype = str(t.dtype).removeprefix("torch.")
                yield SavedTensor(attr.removeprefix("_saved_"), tuple(t.shape), dtype, _bytes(t))


def _grad(of: str, g: Tensor | None, formula: str | None = None, label: str = "") -> Gradient:
    g = g.to_dense() if g is not None and g.layout != torch.strided else g
    if g is None:  # the backward returned None: a zero gradient
        return Gradient(of, (), 0.0, formula, label, formed=False)
    norm = g.detach().double().norm().item()
    value = g.detach() if g.numel() == 1 else None
    return Gradient(of, tuple(g.shape), norm, formula, label, value)


def native_row(node, module, grad_inputs, grad_outputs, native_saved) -> ExplainRow:
    incoming = tuple(_grad(f"output[{k}]", g) for k, g in enumerate(grad_outputs) if g is not None)
    produced = tuple(_grad(f"input[{k}]", g) for k, g in enumerate(grad_inputs) if g is not None)
    module = module if isinstance(module, str) else "-"
    fn = hand_derived_function(getattr(type(node), "_forward_cls", None))
    if fn is not None:  # a hand-derived Function applied directly, not through its ManualOp
        note = "hand-derived, not recorded (applied outside its ManualOp): not checked"
        return ExplainRow(fn.__name__, module, True, incoming, produced, (), None, None, True, note)
    saved = native_saved.get(node, ())
    name = type(node).__name__
    return ExplainRow(name, module, False, incoming, produced, saved, None, None, True, "native")


def hand_derived_row(call: Call, node, grad_inputs, grad_outputs, labels, tiny) -> ExplainRow:
    fn = call.op.function
    arg_names = forward_arg_names(fn)
    formulas = getattr(fn, "formulas", None)
    positions = [i for i, a in enumerate(call.args) if isinstance(a, Tensor)]
    live = [e is not None for e, _ in node.next_functions]  # which tensor inputs need grad
    incoming = tuple(
        _grad(_out(k, call.outputs), g, label=labels.get(id(call.outputs[k]), ""))
        for k, g in enumerate(grad_outputs)
        if g is not None
    )
    produced, manual = [], {}
    for pos, g, needed in zip(positions, grad_inputs, live, strict=True):
        if not needed:
            continue
        name = arg_names[pos]
        formula = None if formulas is None else formulas.get(name)
        produced.append(_grad(name, g, formula, labels.get(call.arg_ids[pos], "")))
        manual[pos] = g
    note = "" if formulas is not None else f"no formula declared ({fn.__name__}.formulas)"
    try:
        native, local = _native_vjp(call, manual, grad_outputs, tiny)
    except Exception as error:  # the reference could not run: say so, do not crash
        return ExplainRow(
            fn.__name__,
            call.module,
            True,
            incoming,
            tuple(produced),
            call.saved,
            None,
            None,
            False,
            f"{NO_REFERENCE}: {error}",
        )
    diffs = []
    for pos, g in manual.items():
        n = native.get(pos)
        like = call.args[pos]
        g = torch.zeros_like(like) if g is None else g
        n = torch.zeros_like(like) if n is None else n
        g = g.to_dense() if g.layout != torch.strided else g
        n = n.to_dense() if n.layout != torch.strided else n
        diffs.append(compare(arg_names[pos], g, n))
    max_abs = max((d.max_abs for d in diffs), default=0.0)
    max_rel = max((d.max_rel for d in diffs), default=0.0)
    ok = all(d.passed for d in diffs)
    local_values = tuple(local.get(pos) for pos in manual) if tiny else ()
    return ExplainRow(
        fn.__name__,
        call.module,
        True,
        incoming,
        tuple(produced),
        call.saved,
        max_abs,
        max_rel,
        ok,
        note,
        local_values,
    )


def native_reference(fn_cls: type) -> Callable:
    """What native autograd differentiates to check ``fn_cls``: its ``native`` attribute
    when it declares one, else its own ``forward`` (written in native torch ops)."""
    return getattr(fn_cls, "native", None) or fn_cls.forward


def _native_vjp(call: Call, manual: dict, grad_outputs: tuple, tiny: bool):
    """Native autograd's gradients of the recorded call's arguments (by position), given
    the gradients its outputs received; for tiny calls also each local derivative."""
    leaves = {pos: call.args[pos].detach().clone().requires_grad_() for pos in manual}
    args = [
        leaves[i].clone() if i in leaves else (a.clone() if isinstance(a, Tensor) else a)
        for i, a in enumerate(call.args)
    ]  # clones: an in-place forward writes into them, not into the leaves
    cpu_state, cuda, cuda_states = call.rng
    with torch.random.fork_rng(devices=cuda), torch.enable_grad():
        torch.set_rng_state(cpu_state)  # a dropout draws the mask it drew
        for device, state in zip(cuda, cuda_states, strict=True):
            torch.cuda.set_rng_state(state, device)
        # each saved tensor copied when saved: a forward that then writes into it in place
        # (for speed) still differentiates to what it computed
        with torch.autograd.graph.saved_tensors_hooks(torch.clone, _unpacked):
            outs = native_reference(call.op.function)(*args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    pairs = [
        (o, g)
        for o, g in zip(outs, grad_outputs, strict=False)
        if g is not None and isinstance(o, Tensor) and o.requires_grad
    ]
    wanted = list(leaves.values())
    local = {}
    if tiny and len(pairs) == 1 and wanted:
        ones = torch.ones_like(pairs[0][0])
        jac = torch.autograd.grad(pairs[0][0], wanted, ones, retain_graph=True, allow_unused=True)
        local = {pos: None if j is None else j.item() for pos, j in zip(leaves, jac, strict=True)}
    if not pairs or not wanted:
        return {}, local
    grads = torch.autograd.grad(
        [o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True
    )
    return dict(zip(leaves, grads, strict=True)), local


def _unpacked(t: Tensor) -> Tensor:
    return t


def forward_step(call: Call, labels: dict) -> tuple:
    """(op, output label, ((argument label, value), ...), output value) of a tiny call."""
    names = forward_arg_names(call.op.function)
    args = tuple(
        (labels.get(i, n), a.item() if isinstance(a, Tensor) else a)
        for n, a, i in zip(names, call.args, call.arg_ids, strict=False)
        if a is not None
    )
    out = call.outputs[0]
    return (call.op.function.__name__, labels.get(id(out), "output"), args, out.item())
