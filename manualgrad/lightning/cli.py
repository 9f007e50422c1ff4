"""The ``manualgrad`` command: Lightning's CLI with the tutorial as its default experiment.

``manualgrad fit`` with no arguments trains the tutorial's neuron on ``y = 3x + 2``;
``--config experiments/<name>.yaml`` picks another experiment, and any option can be
overridden on the command line (``manualgrad fit --help`` lists them).
"""

from __future__ import annotations

import csv
import importlib
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from jsonargparse import Namespace, lazy_instance
from pytorch_lightning import LightningDataModule
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from manualgrad.lightning.callbacks import GradientAudit
from manualgrad.lightning.data import LinearData, TutorialData
from manualgrad.lightning.guards import GracefulStop, NonFiniteCheck, NonFiniteError
from manualgrad.lightning.guards import _relative as _shown
from manualgrad.lightning.module import Regressor

__all__ = ["ManualgradCLI", "main", "run"]


class ManualgradParser(LightningArgumentParser):
    """Lightning's parser; on an error it prints a one-line usage, not all 70 options."""

    def format_usage(self) -> str:
        usage = super().format_usage()
        if usage.count("\n") <= 3:
            return usage
        prog = self.prog.replace(" [options]", "")
        return f"usage: {prog} [--config FILE] [--OPTION VALUE ...]\n"


class ManualgradCLI(LightningCLI):
    """LightningCLI plus a checkpoint group (last checkpoint kept), the gradient audit
    group (off by default), the non-finite loss check (stop by default), a clean stop on
    Ctrl+C or SIGTERM, and a closing report after ``fit``.

    Before anything is built, the optimizer and scheduler options are tried on a dummy
    parameter, so that a bad one (a negative learning rate) is reported by its option name.
    ``fit --ckpt_path RUN/checkpoints/X.ckpt`` continues logging into ``RUN`` (the run
    folder the checkpoint came from) unless ``--trainer.logger.version`` says otherwise.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(GradientAudit, "gradient_audit")
        parser.add_lightning_class_args(NonFiniteCheck, "nonfinite")
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "model.optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}},
                "data": lazy_instance(TutorialData),
            }
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        model = config.get("model")
        if isinstance(model, Namespace):
            optimizer = self._try_class("model.optimizer", model.get("optimizer"), _on_a_parameter)
            if optimizer is not None:
                scheduler = model.get("lr_scheduler")
                self._try_class(
                    "model.lr_scheduler", scheduler, lambda cls, kw: cls(optimizer, **kw)
                )
        if self.subcommand == "fit":
            _continue_in_checkpoint_run(config)
        else:
            # Nothing is saved outside fit, so the checkpoint callback's state restored from
            # the fit (its folder, now another run's) is unused: Lightning's note that the
            # folder changed says nothing about this run.
            warnings.filterwarnings("ignore", message=r"The dirpath has changed from")

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:
            # jsonargparse wraps what a configured class raised (CSVData's FileNotFoundError
            # for a missing file...) in a note that it could not build it: pass on the
            # class's own error.
            if isinstance(error.__cause__, Exception):
                raise error.__cause__ from None
            raise

    def _try_class(self, key: str, spec, build: Callable):
        """``build(cls, kwargs)`` for the class and arguments ``spec`` configures; on a
        ``ValueError`` or ``TypeError``, a parser error naming the argument to blame: the one
        whose default, in its place, makes the class build."""
        if not isinstance(spec, Namespace) or not spec.get("class_path"):
            return None
        module, _, name = spec.class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        init_args = spec.get("init_args")
        kwargs = init_args.as_dict() if isinstance(init_args, Namespace) else {}
        try:
            return build(cls, kwargs)
        except (ValueError, TypeError) as error:
            option = key
            for arg in kwargs:
                try:
                    build(cls, {k: v for k, v in kwargs.items() if k != arg})
                except (ValueError, TypeError):
                    continue
                option = f"{key}.{arg}"
                break
            self._parser(self.subcommand).error(f"{option}: {error} ({spec.class_path})")

    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            print(fit_report(self.trainer, self.model, self.datamodule), flush=True)

    def after_predict(self) -> None:
        """Write the predictions, one row per input row in order, beside the run's logs."""
        predictions = self.trainer.predict_loop.predictions
        if not (self.trainer.is_global_zero and predictions):
            return
        table = torch.cat(predictions).reshape(-1, predictions[0].shape[-1])  # (N, outputs)
        log_dir = self.trainer.log_dir or "."
        os.makedirs(log_dir, exist_ok=True)
        path = os.path.join(log_dir, "predictions.csv")
        with open(path, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow([f"prediction_{i}" for i in range(table.shape[1])])
            writer.writerows(table.tolist())
        print(f"\nPredictions for {len(table)} rows: {_shown(path)}", flush=True)


def fit_report(trainer, model, datamodule) -> str:
    """What a user wants to read after ``fit``: what was learned and where the logs are."""
    lines = [""]
    if isinstance(model, Regressor) and model.layers == [1, 1]:
        weight, bias = model.net[0].weight.item(), model.net[0].bias.item()
        truth = ""
        if isinstance(datamodule, LinearData):
            truth = f" (data: y = {datamodule.slope:g} x + {datamodule.intercept:g})"
        lines.append(f"Learned weight = {weight:.4f}, bias = {bias:.4f}{truth}")
    val_loss = trainer.callback_metrics.get("val/loss")
    if val_loss is not None:
        lines.append(f"Final validation MSE = {val_loss.item():.6g}")
    logger = trainer.logger
    if isinstance(logger, TensorBoardLogger):
        lines.append(f"Logs, config and checkpoints: {_shown(logger.log_dir)}")
        lines.append(f"View the curves: tensorboard --logdir {_shown(logger.root_dir)}")
    return "\n".join(lines)


def _on_a_parameter(cls, kwargs: dict):
    """An optimizer of class ``cls`` over one dummy parameter (for checking its options)."""
    return cls([torch.nn.Parameter(torch.zeros(1))], **kwargs)


def _continue_in_checkpoint_run(config: Namespace) -> None:
    """``fit --ckpt_path SAVE_DIR/NAME/VERSION/checkpoints/X.ckpt`` with the logger's version
    left unset: log into VERSION again, so the resumed run continues the same TensorBoard run
    and checkpoint folder."""
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


def run(args: list[str] | None = None) -> ManualgradCLI:
    """Run the CLI on ``args`` (default: the command line) and return it (trainer, model...)."""
    with warnings.catch_warnings():
        # Warnings that say nothing about the user's run. The datasets are small in-memory
        # tensors, so loader worker processes would only add start-up time; and Lightning
        # 2.6 still builds torch's deprecated pytree LeafSpec (a FutureWarning on torch 2.13).
        warnings.filterwarnings(
            "ignore", message=r".*does not have many workers", category=UserWarning
        )
        warnings.filterwarnings(
            "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated"
        )
        # Lightning 2.6 calls jsonargparse methods deprecated since jsonargparse 4.49.
        jsonargparse_deprecations = (
            r"(?s)\s*(By default only one JsonargparseDep|.*was deprecated in v4\.)"
        )
        warnings.filterwarnings("ignore", jsonargparse_deprecations, DeprecationWarning)
        # A Python caller that passes `args` means them, whatever else is on its command line.
        warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
        return ManualgradCLI(
            Regressor,
            LightningDataModule,
            subclass_mode_data=True,
            seed_everything_default=0,
            trainer_defaults={
                "callbacks": [GracefulStop()],
                "max_epochs": 200,
                "log_every_n_steps": 1,
                "logger": lazy_instance(TensorBoardLogger, save_dir=".", default_hp_metric=False),
            },
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_class=ManualgradParser,
            parser_kwargs={"prog": "manualgrad"},
            args=args,
        )


def main() -> None:
    """The ``manualgrad`` console script and ``python -m manualgrad``.

    Bad input ends in one error line and exit status 1 (2 for command-line errors, which the
    parser reports), not a traceback; ``JSONARGPARSE_DEBUG=true`` shows the traceback.
    Ctrl+C or SIGTERM during fit ends with exit status 130 or 143 (see ``GracefulStop``).
    """
    try:
        run()
    except NonFiniteError as error:
        hint = "lower the learning rate (--model.optimizer.lr), or skip such steps"
        _fail(f"{error}\nTo go on, {hint} (--nonfinite.action skip).", after_progress_bar=True)
    except (ValueError, OSError, MisconfigurationException) as error:
        if os.environ.get("JSONARGPARSE_DEBUG"):
            raise
        _fail(f"{error}\n(JSONARGPARSE_DEBUG=true shows the traceback)")


def _fail(message: str, after_progress_bar: bool = False) -> None:
    if rank_zero_only.rank == 0:  # under DDP every process fails alike; say it once
        start = "\n" if after_progress_bar else ""  # the bar's line is left unfinished
        print(f"{start}manualgrad: error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)
