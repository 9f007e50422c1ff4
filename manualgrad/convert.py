"""Convert the Linear layers of an existing model to :class:`ManualLinear`, and back.

Conversion changes the class of each selected module in place (``module.__class__ =
ManualLinear``), which is possible because :class:`ManualLinear` is an ``nn.Linear`` that
only overrides ``forward``. Everything else about the module is untouched: the very same
Parameter objects (an optimizer made before the swap keeps training the model, tied weights
stay tied), buffers, state_dict keys, hooks, train/eval mode, device (meta included) and
dtype. A module registered under several names is one object, so it is converted once and
stays shared. ``torch.nn.utils.parametrize`` parametrizations keep working: the generated
``ParametrizedLinear`` class is rebuilt over ``ManualLinear``.

Only modules whose type is exactly ``nn.Linear`` are converted. A subclass may have its
own ``forward``, or none that is ever called: ``nn.MultiheadAttention.out_proj`` is such a
subclass, and MHA reads its weight directly, so converting it would change nothing. Those
are left native and reported with the reason; :func:`conversion_report` describes a model
at any time, and :func:`replace_linear` logs the same summary to the ``manualgrad`` logger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from torch.nn.utils import parametrize

from manualgrad.linear import ManualLinear

__all__ = [
    "LinearStatus",
    "ConversionReport",
    "conversion_report",
    "replace_linear",
    "restore_linear",
]

_log = logging.getLogger("manualgrad")
_MHA_REASON = (
    "nn.MultiheadAttention reads this weight directly and never calls its forward, "
    "so converting it would change nothing"
)

_EXCLUDED = "excluded by filter_fn"

FilterFn = Callable[[nn.Module, str], bool]


@dataclass(frozen=True)
class LinearStatus:
    """One ``nn.Linear`` instance of a model: its names, its class, whether it is manual."""

    names: tuple[str, ...]  # every name it is registered under; "" is the model itself
    type_name: str
    converted: bool
    reason: str  # why it is not converted ("" when it is)

    @property
    def name(self) -> str:
        return self.names[0]


@dataclass(frozen=True)
class ConversionReport:
    """Every ``nn.Linear`` (subclasses included) of a model, each listed once.

    ``converted`` names the modules whose forward runs the hand-derived backward;
    ``skipped`` maps each other one to the reason. Printing gives one line per module.
    """

    modules: tuple[LinearStatus, ...]

    @property
    def converted(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modules if m.converted)

    @property
    def skipped(self) -> dict[str, str]:
        return {m.name: m.reason for m in self.modules if not m.converted}

    def __str__(self) -> str:
        n = len(self.converted)
        lines = [f"{n} of {len(self.modules)} nn.Linear modules use the hand-derived backward"]
        for m in self.modules:
            names = " = ".join(repr(name) for name in m.names)
            state = "manual" if m.converted else f"native: {m.reason}"
            lines.append(f"  {names} ({m.type_name}) {state}")
        return "\n".join(lines)


def _base_type(module: nn.Module) -> type:
    """The module's class before any ``torch.nn.utils.parametrize`` wrapping."""
    return parametrize.type_before_parametrizations(module)


def _set_base_type(module: nn.Module, base: type[nn.Module]) -> None:
    """Give ``module`` the class ``base``, keeping a parametrization's generated class."""
    if parametrize.is_parametrized(module):
        # parametrize made a per-instance subclass holding one property per parametrized
        # tensor; rebuild it over the new base (remove_parametrizations restores bases[0]).
        attrs = {
            k: v for k, v in vars(type(module)).items() if k not in ("__dict__", "__weakref__")
        }
        module.__class__ = type(f"Parametrized{base.__name__}", (base,), attrs)
    else:
        module.__class__ = base


def _aliases(model: nn.Module) -> dict[int, tuple[nn.Module, list[str], list[nn.Module]]]:
    """id -> (module, every name it is registered under, every parent), in model order."""
    by_name = dict(model.named_modules(remove_duplicate=False))
    found: dict[int, tuple[nn.Module, list[str], list[nn.Module]]] = {}
    for name, module in by_name.items():
        _, names, parents = found.setdefault(id(module), (module, [], []))
        names.append(name)
        if name:
            parents.append(by_name[name.rpartition(".")[0]])
    return found


def _status(module: nn.Module, names: list[str], parents: list[nn.Module], excluded: bool):
    base = _base_type(module)
    converted = isinstance(module, ManualLinear)
    if converted:
        reason = ""
    elif any(isinstance(p, nn.MultiheadAttention) for p in parents):
        reason = _MHA_REASON
    elif isinstance(module, nn.LazyLinear):
        reason = "uninitialized LazyLinear: run one forward first, then it is an nn.Linear"
    elif base is not nn.Linear:
        reason = (
            f"{base.__name__} subclasses nn.Linear and may have its own forward; "
            "only modules whose type is exactly nn.Linear are converted"
        )
    elif excluded:
        reason = _EXCLUDED
    else:
        reason = "plain nn.Linear, not converted"
    return LinearStatus(tuple(names), type(module).__name__, converted, reason)


def _report(model: nn.Module, excluded: set[int]) -> ConversionReport:
    modules = tuple(
        _status(module, names, parents, id(module) in excluded)
        for module, names, parents in _aliases(model).values()
        if isinstance(module, nn.Linear)
    )
    return ConversionReport(modules)


def conversion_report(model: nn.Module) -> ConversionReport:
    """Describe which ``nn.Linear`` modules of ``model`` use the hand-derived backward.

    "Converted" means the module's forward runs :class:`ManualLinearFunction`. A module
    whose weight your own code reads directly (``F.linear(x, self.fc.weight)``) never
    calls that forward; :func:`manualgrad.check_gradients` shows which modules really ran.
    """
    return _report(model, set())


def _swap(
    model: nn.Module, source: type, target: type, filter_fn: FilterFn | None
) -> tuple[int, set[int]]:
    """Give every module of type ``source`` (before parametrizations) the type ``target``.

    A module registered under several names is swapped once, if ``filter_fn`` accepts it
    under any of them. Returns how many were swapped and the ids of those turned down.
    """
    swapped, excluded = 0, set()
    for module, names, _ in _aliases(model).values():
        if _base_type(module) is not source:
            continue
        if filter_fn is None or any(filter_fn(module, name) for name in names):
            _set_base_type(module, target)
            swapped += 1
        else:
            excluded.add(id(module))
    return swapped, excluded


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def replace_linear(model: nn.Module, filter_fn: FilterFn | None = None) -> nn.Module:
    """Make every ``nn.Linear`` of ``model`` a :class:`ManualLinear`, in place.

    Args:
        model: any module; it is changed in place and returned. The modules keep their
            identity (the class changes, the object does not), so a model that is itself an
            ``nn.Linear`` is returned as its own replacement, now a ``ManualLinear``.
        filter_fn: ``filter_fn(module, fully_qualified_name) -> bool`` picks which modules to
            convert (torchao's convention; the model itself is named ``""``). Default: all.

    Only modules whose type is exactly ``nn.Linear`` (parametrized ones included) are
    converted; the others are left native with a reason. A one-line summary goes to the
    ``manualgrad`` logger (a warning when some Linear subclass was left native);
    :func:`conversion_report` gives the full list.

    Examples::

        >>> model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
        >>> model = manualgrad.replace_linear(model)
        >>> type(model[0]).__name__
        'ManualLinear'
    """
    swapped, excluded = _swap(model, nn.Linear, ManualLinear, filter_fn)
    report = _report(model, excluded)
    left: dict[str, list[str]] = {}  # reason -> names of Linear subclasses left native
    for m in report.modules:
        if not m.converted and m.reason != _EXCLUDED:
            left.setdefault(m.reason, []).append(m.name or "<model>")
    msg = f"replace_linear: converted {_plural(swapped, 'module')}; "
    msg += f"{len(report.converted)} of {len(report.modules)} nn.Linear modules are manual"
    for reason, names in left.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        msg += f"; left native: {shown} ({reason})"
    _log.log(logging.WARNING if left else logging.INFO, msg)
    return model


def restore_linear(model: nn.Module, filter_fn: FilterFn | None = None) -> nn.Module:
    """Inverse of :func:`replace_linear`: every module whose type is exactly
    :class:`ManualLinear` (parametrized ones included) becomes an ``nn.Linear`` again,
    in place, keeping its parameters, hooks and parametrizations. ``filter_fn`` as in
    :func:`replace_linear`. Returns ``model``.
    """
    swapped, _ = _swap(model, ManualLinear, nn.Linear, filter_fn)
    _log.info("restore_linear: restored %s to nn.Linear", _plural(swapped, "module"))
    return model
