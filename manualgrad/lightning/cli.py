"""The ``manualgrad`` command: Lightning's CLI with the tutorial as its default experiment.

``manualgrad fit`` with no arguments trains the tutorial's neuron on ``y = 3x + 2``;
``--config experiments/<name>.yaml`` picks another experiment, and any option can be
overridden on the command line (``manualgrad fit --help`` lists them). The model is a
:class:`~manualgrad.lightning.Regressor` unless ``--model Classifier`` (or a config's
``model.class_path``) says otherwise.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import NoReturn

from jsonargparse import lazy_instance
from pytorch_lightning import LightningDataModule, LightningModule
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from manualgrad.lightning.callbacks import (
    GracefulStop,
    GradientAudit,
    NonFiniteCheck,
    NonFiniteError,
)
from manualgrad.lightning.cli_options import (
    check_optimizer_options,
    continue_in_checkpoint_run,
    short_class_error,
)
from manualgrad.lightning.data import TutorialData
from manualgrad.lightning.report import fit_report, shown_path, write_predictions

__all__ = ["ManualgradCLI", "main", "run"]


class ManualgradParser(LightningArgumentParser):
    """Lightning's parser; on an error it prints a one-line usage, not all 70 options, and
    names a bad option of the model or data class in a short message."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        super().error(short_class_error(message), ex)

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

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        parser = super().init_parser(**kwargs)
        # ManualgradParser only overrides how errors read; Lightning 2.4 has no parser_class.
        parser.__class__ = ManualgradParser
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(GradientAudit, "gradient_audit")
        parser.add_lightning_class_args(NonFiniteCheck, "nonfinite")
        sgd = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "model": {
                    "class_path": "manualgrad.lightning.Regressor",
                    "init_args": {"optimizer": sgd},
                },
                "data": lazy_instance(TutorialData),
            }
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        check_optimizer_options(config, self._parser(self.subcommand).error)
        if self.subcommand == "fit":
            continue_in_checkpoint_run(config)
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

    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            print(fit_report(self.trainer, self.model, self.datamodule), flush=True)

    def after_predict(self) -> None:
        """Write the predictions, one row per input row in order, beside the run's logs."""
        predictions = self.trainer.predict_loop.predictions
        if self.trainer.is_global_zero and predictions:
            path = write_predictions(predictions, self.model, self.trainer.log_dir or ".")
            rows = sum(len(p) for p in predictions)
            print(f"\nPredictions for {rows} rows: {shown_path(path)}", flush=True)


#: (message, category) of warnings that say nothing about the user's run, ignored in `run`
QUIET_WARNINGS = (
    # The datasets are small in-memory tensors: loader worker processes would only add
    # start-up time.
    (r".*does not have many workers", UserWarning),
    # Lightning 2.6 still builds torch's deprecated pytree LeafSpec (torch 2.13).
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", Warning),
    # Lightning 2.6 calls jsonargparse methods deprecated since jsonargparse 4.49.
    (r"(?s)\s*(By default only one JsonargparseDep|.*was deprecated in v4\.)", DeprecationWarning),
    # A Python caller that passes `args` means them, whatever else is on its command line.
    (r"LightningCLI's args parameter is intended", Warning),
)


def run(args: list[str] | None = None) -> ManualgradCLI:
    """Run the CLI on ``args`` (default: the command line) and return it (trainer, model...)."""
    with warnings.catch_warnings():
        for message, category in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message, category)
        return ManualgradCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
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
            parser_kwargs={"prog": "manualgrad"},
            args=args,
        )


def main() -> None:
    """The ``manualgrad`` console script and ``python -m manualgrad``.

    Bad input ends in one error line and exit status 1 (2 for command-line errors, which the
    parser reports), not a traceback; ``JSONARGPARSE_DEBUG=true`` shows the traceback.
    Ctrl+C or SIGTERM during fit ends with exit status 130 or 143 (see ``GracefulStop``).
    ``manualgrad explain`` is :mod:`manualgrad.lightning.explain_cli`.
    """
    if sys.argv[1:2] == ["explain"]:
        from manualgrad.lightning.explain_cli import main as explain

        sys.exit(explain(sys.argv[2:]))
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
