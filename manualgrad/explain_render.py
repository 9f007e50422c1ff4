"""How an :class:`~manualgrad.explain.Explanation` reads: a table of the backward nodes in
the order they ran, and for tiny tensors the chain rule with its numbers."""

from __future__ import annotations

import math

from manualgrad.explain_rows import NO_REFERENCE as _NO_REFERENCE

__all__ = ["render", "chain_rule"]


def _num(v: float) -> str:
    return f"{v:.6g}"


def _factor(v: float) -> str:
    """A number as a factor after the first: negative ones in parentheses."""
    return f"({_num(v)})" if v < 0 else _num(v)


def _diff(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _shape(shape: tuple[int, ...]) -> str:
    return str(tuple(shape))


def _bytes(n: int) -> str:
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def render(e) -> str:
    hand = sum(r.hand_derived for r in e.rows)
    status = "PASSED" if e.passed else "FAILED"
    lines = [
        f"manualgrad explain: {status} (loss {_num(e.loss)})",
        f"{len(e.rows)} backward nodes, in the order they ran: {hand} hand-derived, each checked "
        "alone (its vector-Jacobian product",
        f"by native autograd, from the same inputs and incoming gradient), "
        f"{len(e.rows) - hand} native",
    ]
    width = max([len("op")] + [len(r.op) for r in e.rows])
    mwidth = max([len("module")] + [len(r.module) for r in e.rows])
    lines.append(
        f"{'#':>3}  {'op':<{width}}  {'module':<{mwidth}}  {'gradient in':<22} "
        f"{'max abs':>9} {'max rel':>9}  ok"
    )
    for i, r in enumerate(e.rows, 1):
        grad_in = ", ".join(f"{_shape(g.shape)} |{g.norm:.3g}|" for g in r.incoming) or "-"
        ok = "native" if not r.hand_derived else ("yes" if r.ok else _verdict(r))
        lines.append(
            f"{i:>3}  {r.op:<{width}}  {r.module:<{mwidth}}  {grad_in:<22} "
            f"{_diff(r.max_abs_diff):>9} {_diff(r.max_rel_diff):>9}  {ok}"
        )
        pad = " " * 7
        for g in r.produced:
            if not g.formed:
                lines.append(f"{pad}-> {g.of}: none (a zero gradient)")
                continue
            formula = g.formula or ("" if not r.hand_derived else "no formula declared")
            lines.append(f"{pad}-> {g.of} {_shape(g.shape)} |{g.norm:.3g}|  {formula}".rstrip())
        if r.saved:
            kept = ", ".join(
                f"{s.name} {_shape(s.shape)} {s.dtype} {_bytes(s.bytes)}" for s in r.saved
            )
            lines.append(f"{pad}saved: {kept}")
        if r.note and r.note != "native" and not r.note.startswith("no formula"):
            lines.append(f"{pad}note: {r.note}")
    for r in e.failed:
        if _verdict(r) == "unchecked":  # not shown wrong: it could not be checked
            lines.append(f"UNCHECKED: {r.op} in module {r.module}: {r.note}")
            continue
        lines.append(
            f"WRONG DERIVATION: {r.op} in module {r.module}: its gradients differ from native "
            f"autograd's by up to {_diff(r.max_abs_diff)} (relative {_diff(r.max_rel_diff)})"
        )
    if e.forward:
        lines += ["", *chain_rule(e)]
    return "\n".join(lines)


def _verdict(r) -> str:
    """A failed row: shown wrong ("NO"), or not checked at all (its reference failed)."""
    return "unchecked" if r.note.startswith(_NO_REFERENCE) else "NO"


def chain_rule(e) -> list[str]:
    """The chain rule with the values the Functions computed (tiny tensors only)."""
    lines = ["The chain rule, with the values of the tensors the Functions produced:", "  forward"]
    for op, out, args, value in e.forward:
        shown = ", ".join(f"{n} = {_num(v) if isinstance(v, float) else repr(v)}" for n, v in args)
        lines.append(f"    {out} = {op}({shown}) = {_num(value)}")
    lines.append(
        "  backward: each gradient is the gradient arriving times the op's local derivative"
    )
    first = True
    for r in e.rows:
        arriving = next((g for g in r.incoming if g.value is not None), None)
        if arriving is None:
            continue
        of = arriving.label or "output"
        g = arriving.value.item()
        if first:
            lines.append(f"    dL/d{of} = {_num(g)}")
            first = False
        for grad, local in zip(r.produced, r.local or [None] * len(r.produced), strict=True):
            if grad.value is None:
                continue
            wrt = grad.label or grad.of
            value = grad.value.item()
            text = f"    dL/d{wrt} = dL/d{of} * d{of}/d{wrt}"
            if local is not None:
                text += f" = {_num(g)} * {_factor(local)}"
                expected = g * local
                if not math.isclose(value, expected, rel_tol=1e-5, abs_tol=1e-7):
                    text += f" = {_num(expected)}, but {r.op}'s backward gave {_num(value)}: WRONG"
                else:
                    text += f" = {_num(value)}"
            else:
                text += f" = {_num(value)}"
            if grad.formula:
                text += f"    [{r.op}: {grad.formula}]"
            lines.append(text)
    return lines
