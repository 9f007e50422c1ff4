"""The ``manualgrad`` command: Lightning's CLI with the tutorial as its default experiment.

``manualgrad fit`` with no arguments trains the tutorial's neuron on ``y = 3x + 2``;
``--config experiments/<name>.yaml`` picks another experiment, and any option can be
overridden on the command line (``manualgrad fit --help`` lists them).
"""

from __future__ import annotations

import csv
import os
import warnings

import torch
from jsonargparse import lazy_instance
from pytorch_lightning import LightningDataModule
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger

from manualgrad.lightning.callbacks import GradientAudit
from manualgrad.lightning.data import LinearData, TutorialData
from manualgrad.lightning.module import Regressor

__all__ = ["ManualgradCLI", "main", "run"]


class ManualgradCLI(LightningCLI):
    """LightningCLI plus a checkpoint group (last checkpoint kept), the gradient audit
    group (off by default), and a closing report after ``fit``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(GradientAudit, "gradient_audit")
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "model.optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}},
                "data": lazy_instance(TutorialData),
            }
        )

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


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it lies below it."""
    relative = os.path.relpath(os.path.abspath(path))
    return path if relative.startswith(os.pardir) else relative


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
    """The ``manualgrad`` console script and ``python -m manualgrad``."""
    run()
