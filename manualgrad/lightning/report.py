"""What the command line shows and writes at the end of a run: the fit report (what was
learned, where the logs are) and the predictions table."""

from __future__ import annotations

import csv
import os

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor

from manualgrad.lightning.data import LinearData
from manualgrad.lightning.gpt import TinyGPT
from manualgrad.lightning.model import Classifier, Regressor

__all__ = ["fit_report", "shown_path", "write_predictions"]


def shown_path(path: str | os.PathLike) -> str:
    """``path`` as a user would type it: relative to the working directory when it lies
    below it, otherwise as given."""
    path = os.fspath(path)
    relative = os.path.relpath(os.path.abspath(path))
    return path if relative.startswith(os.pardir) else relative


def fit_report(
    trainer: pl.Trainer, model: pl.LightningModule, datamodule: pl.LightningDataModule | None
) -> str:
    """What a user wants to read after ``fit``: what was learned and where the logs are."""
    lines = [""]
    if isinstance(model, Regressor) and model.layers == [1, 1]:
        weight, bias = model.net[0].weight.item(), model.net[0].bias.item()
        truth = ""
        if isinstance(datamodule, LinearData):
            truth = f" (data: y = {datamodule.slope:g} x + {datamodule.intercept:g})"
        lines.append(f"Learned weight = {weight:.4f}, bias = {bias:.4f}{truth}")
    metrics = trainer.callback_metrics
    if isinstance(model, (Classifier, TinyGPT)):
        if "val/acc" in metrics:
            what = " (exact sequence, greedy decoding)" if isinstance(model, TinyGPT) else ""
            lines.append(f"Final validation accuracy{what} = {metrics['val/acc'].item():.2%}")
        if "val/loss" in metrics:
            lines.append(f"Final validation cross-entropy = {metrics['val/loss'].item():.6g}")
    elif "val/loss" in metrics:
        lines.append(f"Final validation MSE = {metrics['val/loss'].item():.6g}")
    logger = trainer.logger
    if isinstance(logger, TensorBoardLogger):
        lines.append(f"Logs, config and checkpoints: {shown_path(logger.log_dir)}")
        lines.append(f"View the curves: tensorboard --logdir {shown_path(logger.root_dir)}")
    return "\n".join(lines)


def write_predictions(predictions: list[Tensor], model: pl.LightningModule, log_dir: str) -> str:
    """Write ``predictions`` (the predict batches' outputs, in order) to
    ``log_dir/predictions.csv``, one row per input row, and return the file's path.

    A :class:`~manualgrad.lightning.Classifier`'s rows hold the predicted ``class`` and the
    ``probability_k`` of each class (the softmax of its logits); any other model's rows hold
    its outputs, ``prediction_0``, ``prediction_1``, ...
    """
    outputs = torch.cat(predictions).reshape(-1, predictions[0].shape[-1])  # (N, outputs)
    if isinstance(model, Classifier):
        probabilities = outputs.softmax(dim=-1)  # (N, classes)
        header = ["class", *(f"probability_{k}" for k in range(outputs.shape[1]))]
        classes = outputs.argmax(dim=-1).tolist()
        rows = [[c, *p] for c, p in zip(classes, probabilities.tolist(), strict=True)]
    else:
        header = [f"prediction_{k}" for k in range(outputs.shape[1])]
        rows = outputs.tolist()
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, "predictions.csv")
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path
