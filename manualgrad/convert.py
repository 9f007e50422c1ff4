"""Convert the modules of an existing model to their manual classes, and back.

Conversion changes the class of each selected module in place (``module.__class__ =
ManualLinear``), which is possible because every manual class is a subclass of its native
class that only overrides ``forward`` (the table in :mod:`manualgrad.registry`). Everything
else about the module is untouched: the very same Parameter objects (an optimizer made
before the swap keeps training the model, tied weights stay tied), buffers, state_dict
keys, hooks, train/eval mode, device (meta included) and dtype. A module registered under
several names is one object, so it is converted once and stays shared.
``torch.nn.utils.parametrize`` parametrizations keep working: the generated
``ParametrizedLinear`` class is rebuilt over the manual class.

Only modules whose type is exactly a native class of the table are converted. A subclass
may have its own ``forward``, or none that is ever called: ``nn.MultiheadAttention.out_proj``
is such a subclass, and MHA reads its weight directly, so converting it would change
nothing. Those are left native and reported with the reason; :func:`conversion_report`
describes a model at any time, and :func:`replace_modules` logs the same summary to the
``manualgrad`` logger.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from torch import nn
from torch.nn.utils import parametrize

from manualgrad import registry
from manualgrad.ops.transformer import native_activation_reason

__all__ = [
    "ConversionReport",
    "ModuleStatus",
    "as_native",
    "conversion_report",
    "replace_linear",
    "replace_modules",
    "restore_linear",
    "restore_modules",
]

_log = logging.getLogger("manualgrad")
_MHA_REASON = (
    "nn.MultiheadAttention reads this weight directly and never calls its forward, "
    "so converting it would change nothing"
)
_EXCLUDED = "excluded by filter_fn"
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)

FilterFn = Callable[[nn.Module, str], bool]


@dataclass(frozen=True)
class ModuleStatus:
    """One module of a model: its names, its class, whether its forward is hand-derived."""

    names: tuple[str, ...]  # every name it is registered under; "" is the model itself
    type_name: str
    converted: bool
    reason: str  # why it is not converted ("" when it is)

    @property
    def name(self) -> str:
        return self.names[0]


LinearStatus = ModuleStatus  # the name before modules other than nn.Linear were converted


@dataclass(frozen=True)
class ConversionReport:
    """Every module of a model that computes something (containers aside), each listed once.

    ``converted`` names the modules whose forward runs a hand-derived backward; ``skipped``
    maps each other one to the reason. Printing gives one line per module.
    """

    modules: tuple[ModuleStatus, ...]

    @property
    def converted(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modules if m.converted)

    @property
    def skipped(self) -> dict[str, str]:
        return {m.name: m.reason for m in self.modules if not m.converted}

    def __str__(self) -> str:
        n = len(self.converted)
        lines = [f"{n} of {len(self.modules)} modules use a hand-derived backward"]
        for m in self.modules:
            names = " = ".join(repr(name) for name in m.names)
            state = "manual" if m.converted else f"native: {m.reason}"
            state += f"; {m.reason}" if m.converted and m.reason else ""
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


@contextlib.contextmanager
def as_native(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Temporarily give each manual module among ``modules`` (subclasses of a manual class
    too) its native class, from the table in :mod:`manualgrad.registry`; on exit every
    module has its own class again."""
    saved = [(m, type(m)) for m in modules]
    try:
        for m, _ in saved:
            natives = (registry.native_class(c) for c in _base_type(m).__mro__)
            native = next((n for n in natives if n is not None), None)
            if native is not None:
                _set_base_type(m, native)
        yield
    finally:
        for m, cls in saved:
            m.__class__ = cls


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


def _native_family(base: type) -> type | None:
    """The native class of the table that ``base`` is, or subclasses, or None."""
    for native in registry.MANUAL_CLASSES:
        if issubclass(base, native):
            return native
    return None


def _reason(module: nn.Module, parents: list[nn.Module], excluded: bool) -> str:
    """Why ``module`` (not manual) runs on native autograd."""
    base = _base_type(module)
    family = _native_family(base)
    if family is nn.Linear and any(isinstance(p, nn.MultiheadAttention) for p in parents):
        return _MHA_REASON
    if isinstance(module, nn.modules.lazy.LazyModuleMixin):
        return f"uninitialized {base.__name__}: run one forward first"
    if family is None:
        return f"no hand-derived op for {base.__name__}"
    if base is not family:
        return (
            f"{base.__name__} subclasses nn.{family.__name__} and may have its own forward; "
            f"only modules whose type is exactly nn.{family.__name__} are converted"
        )
    return _EXCLUDED if excluded else f"plain nn.{family.__name__}, not converted"


def _partly_native(module: nn.Module) -> str:
    """What of a manual module's own forward runs on native autograd, and why ("" if
    nothing): a Transformer layer's activation function without a hand-derived form."""
    if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        return native_activation_reason(module)
    return ""


def _projection_of_manual(module: nn.Module, parents: list[nn.Module]) -> bool:
    """Whether ``module`` is the ``out_proj`` of a manual MultiheadAttention: its own
    forward never runs, but the manual attention reads its weight through ManualLinear."""
    return isinstance(module, nn.Linear) and any(
        isinstance(p, nn.MultiheadAttention) and registry.is_manual(p) for p in parents
    )


def _listed(module: nn.Module) -> bool:
    """Whether the report lists ``module``: it computes something itself."""
    if isinstance(module, _CONTAINERS):
        return False
    return not any(True for _ in module.children()) or _native_family(type(module)) is not None


def _rows(model: nn.Module, excluded: set[int]) -> list[tuple[nn.Module, ModuleStatus]]:
    rows = []
    for module, names, parents in _aliases(model).values():
        if not _listed(module):
            continue
        converted = registry.is_manual(module) or _projection_of_manual(module, parents)
        reason = (
            _partly_native(module)
            if converted
            else _reason(module, parents, id(module) in excluded)
        )
        rows.append((module, ModuleStatus(tuple(names), type(module).__name__, converted, reason)))
    return rows


def conversion_report(model: nn.Module) -> ConversionReport:
    """Describe which modules of ``model`` use a hand-derived backward.

    "Converted" means the module's forward runs a hand-derived Function. A module whose
    weight your own code reads directly (``F.linear(x, self.fc.weight)``) never calls that
    forward; :func:`manualgrad.check_gradients` shows which modules really ran.
    """
    registry.load_lazy()
    return ConversionReport(tuple(status for _, status in _rows(model, set())))


def _swap(
    model: nn.Module, pairs: dict[type, type], filter_fn: FilterFn | None
) -> tuple[int, set[int]]:
    """Give every module whose type (before parametrizations) is a key of ``pairs`` the
    matching value as its type.

    A module registered under several names is swapped once, if ``filter_fn`` accepts it
    under any of them. Returns how many were swapped and the ids of those turned down.
    """
    swapped, excluded = 0, set()
    for module, names, _ in _aliases(model).values():
        target = pairs.get(_base_type(module))
        if target is None:
            continue
        if filter_fn is None or any(filter_fn(module, name) for name in names):
            _set_base_type(module, target)
            swapped += 1
        else:
            excluded.add(id(module))
    return swapped, excluded


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _convert(
    model: nn.Module, pairs: dict, filter_fn: FilterFn | None, caller: str, scope: type, what: str
) -> None:
    """Swap native classes for manual ones, then log what the swap leaves native among the
    modules of type ``scope`` (``what`` names them in the message)."""
    swapped, excluded = _swap(model, pairs, filter_fn)
    rows = [status for module, status in _rows(model, excluded) if isinstance(module, scope)]
    left: dict[str, list[str]] = {}  # reason -> names left native, filter_fn's aside
    for m in rows:
        if m.reason and m.reason != _EXCLUDED:  # a manual module may be partly native
            left.setdefault(m.reason, []).append(m.name or "<model>")
    msg = f"{caller}: converted {_plural(swapped, 'module')}; "
    msg += f"{sum(m.converted for m in rows)} of {len(rows)} {what} are manual"
    for reason, names in left.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        msg += f"; left native: {shown} ({reason})"
    _log.log(logging.WARNING if left else logging.INFO, msg)


def replace_modules(model: nn.Module, filter_fn: FilterFn | None = None) -> nn.Module:
    """Give every module of ``model`` whose type is exactly a native class of
    :mod:`manualgrad.registry` its manual class, in place.

    Args:
        model: any module; it is changed in place and returned. The modules keep their
            identity (the class changes, the object does not), so a model that is itself,
            say, an ``nn.Linear`` is returned as its own replacement, now a ``ManualLinear``.
        filter_fn: ``filter_fn(module, fully_qualified_name) -> bool`` picks which modules to
            convert (torchao's convention; the model itself is named ``""``). Default: all.

    Only modules whose type is exactly a native class (parametrized ones included) are
    converted; the others are left native with a reason. A one-line summary goes to the
    ``manualgrad`` logger (a warning when some module was left native);
    :func:`conversion_report` gives the full list.

    Examples::

        >>> model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
        >>> model = manualgrad.replace_modules(model)
        >>> type(model[0]).__name__
        'ManualLinear'
    """
    registry.load_lazy()  # the table reads below: rows of optional libraries imported by now
    _convert(
        model, dict(registry.MANUAL_CLASSES), filter_fn, "replace_modules", nn.Module, "modules"
    )
    return model


def restore_modules(model: nn.Module, filter_fn: FilterFn | None = None) -> nn.Module:
    """Inverse of :func:`replace_modules`: every module whose type is exactly a manual class
    (parametrized ones included) gets its native class back, in place, keeping its
    parameters, hooks and parametrizations. ``filter_fn`` as in :func:`replace_modules`.
    Returns ``model``.
    """
    registry.load_lazy()
    pairs = {manual: native for native, manual in registry.MANUAL_CLASSES.items()}
    swapped, _ = _swap(model, pairs, filter_fn)
    _log.info("restore_modules: restored %s to their native classes", _plural(swapped, "module"))
    return model


def replace_linear(model: nn.Module, filter_fn: FilterFn | None = None) -> nn.Module:
    """:func:`replace_modules` for ``nn.Linear`` alone: every module whose type is exactly
    ``nn.Linear`` becomes a :class:`~manualgrad.ManualLinear`, in place. Returns ``model``.
    """
    pairs = {nn.Linear: registry.MANUAL_CLASSES[nn.Linear]}
    _convert(model, pairs, filter_fn, "replace_linear", nn.Linear, "nn.Linear modules")
    return model


def restore_linear(model: nn.Module, filter_fn: FilterFn | None = None) -> nn.Module:
    """Inverse of :func:`replace_linear`: every module whose type is exactly
    :class:`~manualgrad.ManualLinear` becomes an ``nn.Linear`` again, in place."""
    swapped, _ = _swap(model, {registry.MANUAL_CLASSES[nn.Linear]: nn.Linear}, filter_fn)
    _log.info("restore_linear: restored %s to nn.Linear", _plural(swapped, "module"))
    return model
