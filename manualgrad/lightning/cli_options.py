"""What the command line does with its options before anything is built: it tries the
optimizer and scheduler options (so a bad one is reported by its option name), it says which
option of the model or data class is wrong in one short message, and it points a resumed fit
at the run folder its checkpoint came from."""

from __future__ import annotations

import importlib
import re
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import torch
from jsonargparse import Namespace

__all__ = ["check_optimizer_options", "continue_in_checkpoint_run", "short_class_error"]


def check_optimizer_options(config: Namespace, error: Callable[[str], NoReturn]) -> None:
    """Build the configured optimizer on a dummy parameter, and the scheduler on that
    optimizer. On a ``ValueError`` or ``TypeError``, call ``error`` (the parser's) with the
    message, naming the argument to blame: the one whose default, in its place, makes the
    class build (``model.optimizer.lr: Invalid learning rate: -0.1 (torch.optim.SGD)``)."""
    model = config.get("model")
    init_args = model.get("init_args", model) if isinstance(model, Namespace) else None
    if not isinstance(init_args, Namespace):
        return
    optimizer = _try_class("model.optimizer", init_args.get("optimizer"), _on_a_parameter, error)
    if optimizer is not None:
        scheduler = init_args.get("lr_scheduler")
        _try_class("model.lr_scheduler", scheduler, lambda cls, kw: cls(optimizer, **kw), error)


def _try_class(key: str, spec, build: Callable, error: Callable[[str], NoReturn]):
    """``build(cls, kwargs)`` for the class and arguments ``spec`` configures (None when it
    configures none); on a ``ValueError`` or ``TypeError``, ``error`` naming the argument."""
    if not isinstance(spec, Namespace) or not spec.get("class_path"):
        return None
    module, _, name = spec.class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    init_args = spec.get("init_args")
    kwargs = init_args.as_dict() if isinstance(init_args, Namespace) else {}
    try:
        return build(cls, kwargs)
    except (ValueError, TypeError) as failure:
        option = key
        for arg in kwargs:
            try:
                build(cls, {k: v for k, v in kwargs.items() if k != arg})
            except (ValueError, TypeError):
                continue
            option = f"{key}.{arg}"
            break
        error(f"{option}: {failure} ({spec.class_path})")


def _on_a_parameter(cls, kwargs: dict):
    """An optimizer of class ``cls`` over one dummy parameter (for checking its options)."""
    return cls([torch.nn.Parameter(torch.zeros(1))], **kwargs)


# jsonargparse's report on a bad option of the model's or data's class; newer versions wrap it
# in the union of that class and None, whose second half ("not None either") says nothing.
_UNION = re.compile(
    r'Parser key "(?P<key>[\w.]+)":\n  Does not validate against any of the Union subtypes\n'
    r".*?\n  Errors:\n    - (?P<item>Problem with given class_path .*?)\n"
    r"    - Expected a <class 'NoneType'>\n  Given value type.*",
    re.S,
)
_CLASS = re.compile(
    r'Parser key "(?P<key>[\w.]+)":\n  (?P<item>Problem with given class_path .*)', re.S
)
_ITEM = re.compile(r"Problem with given class_path '(?P<cls>[\w.]+)':\n(?P<inner>.*)", re.S)
_ARGUMENT = re.compile(r'Parser key "(?P<arg>[\w.]+)":\n(?P<what>.*)', re.S)
_UNKNOWN = re.compile(r"Option '(?P<a>\w+)' is not accepted|No action for key \"(?P<b>\w+)\"")


def short_class_error(message: str) -> str:
    """jsonargparse's ``message`` about a bad argument of a configured class (the model, the
    data) as one short message naming the option, ``model.layers``, and the class; any
    other message as it is."""
    found = _UNION.fullmatch(message)
    if found:  # newer jsonargparse: the class's own report is the union's first item
        key, item = found["key"], found["item"].replace("\n    ", "\n")
    else:
        found = _CLASS.fullmatch(message)
        if not found:
            return message
        key, item = found["key"], found["item"].replace("\n  ", "\n")
    found = _ITEM.fullmatch(item)
    if not found:
        return message
    cls, inner = found["cls"], textwrap.dedent(found["inner"]).strip()
    name = cls.rpartition(".")[2]
    unknown = _UNKNOWN.search(inner)
    if unknown:
        arg = unknown["a"] or unknown["b"]
        return (
            f"unrecognized option {key}.{arg}: {name} takes no argument {arg!r} "
            f"(--{key}.help {name} lists them)"
        )
    argument = _ARGUMENT.fullmatch(inner)
    if argument:
        what = textwrap.dedent(argument["what"]).strip()
        return f'Parser key "{key}.{argument["arg"]}" ({cls}):\n' + textwrap.indent(what, "  ")
    return f'Parser key "{key}" ({cls}):\n' + textwrap.indent(inner, "  ")


def continue_in_checkpoint_run(config: Namespace) -> None:
    """``fit --ckpt_path SAVE_DIR/NAME/VERSION/checkpoints/X.ckpt`` with the logger's version
    left unset: set it to VERSION, so the resumed run continues the same TensorBoard run and
    checkpoint folder."""
    logger = config.get("trainer", Namespace()).get("logger")
    args = logger.get("init_args") if isinstance(logger, Namespace) else None
    ckpt_path = config.get("ckpt_path")
    if not (ckpt_path and isinstance(args, Namespace) and "save_dir" in args and "name" in args):
        return
    if args.get("version") is not None:
        return
    checkpoints = Path(ckpt_path).resolve().parent
    run_dir = checkpoints.parent
    if (
        checkpoints.name == "checkpoints"
        and run_dir.parent == Path(args.save_dir or ".").joinpath(args.name or "").resolve()
    ):
        args.version = run_dir.name
        # The folder holds the checkpoints of the run being resumed, as it should.
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not")
