"""Data modules: the tutorial's line, a sine for an MLP, and a CSV table of your own."""

from __future__ import annotations

import csv
import math
import os

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from manualgrad.lightning.loading import EpochShuffle, ResumableLoader

__all__ = ["RegressionData", "LinearData", "TutorialData", "SineData", "CSVData"]


class RegressionData(pl.LightningDataModule):
    """Inputs ``x (N, features)`` and targets ``y (N, targets)``, split once into train and
    validation rows by a seeded shuffle.

    Subclasses implement :meth:`load`. ``test`` runs on the validation rows (the held-out
    part); ``predict`` runs on every row in its original order.

    Args:
        batch_size: rows per batch and process; at least the number of training rows means
            full-batch gradient descent. Under DDP each of ``N`` processes takes
            ``batch_size`` rows per step, so a step sees ``N * batch_size`` rows.
        val_fraction: share of rows held out for validation (at least one row).
        seed: seeds the data itself (for synthetic data), the split, and the shuffling.
    """

    def __init__(self, batch_size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
        self.batch_size, self.val_fraction, self.seed = batch_size, val_fraction, seed
        self._splits: dict[str, TensorDataset] | None = None

    def load(self) -> tuple[Tensor, Tensor]:
        """Return ``x (N, features)`` and ``y (N, targets)`` as float32 tensors."""
        raise NotImplementedError

    @property
    def num_features(self) -> int:
        return self._data()["all"].tensors[0].shape[1]

    @property
    def num_targets(self) -> int:
        return self._data()["all"].tensors[1].shape[1]

    def _data(self) -> dict[str, TensorDataset]:
        if self._splits is None:
            x, y = self.load()  # (N, features), (N, targets)
            n_val = max(1, round(len(x) * self.val_fraction))
            if len(x) - n_val < 1:
                raise ValueError(f"{len(x)} rows are too few to split into train and validation")
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
            train, val = order[n_val:], order[:n_val]
            self._splits = {
                "all": TensorDataset(x, y),
                "train": TensorDataset(x[train], y[train]),
                "val": TensorDataset(x[val], y[val]),
            }
        return self._splits

    def setup(self, stage: str) -> None:
        self._data()

    def _loader(self, split: str) -> DataLoader:
        # In-memory tensors: worker processes would only add start-up time.
        return DataLoader(self._data()[split], batch_size=self.batch_size, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        """Shuffled by ``(seed, epoch)``; each of several processes (DDP) takes its share of
        every epoch's order, ``batch_size`` rows per step; resumable in mid-epoch."""
        dataset = self._data()["train"]
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        sampler = EpochShuffle(len(dataset), self.seed, num_replicas=replicas, rank=rank)
        return ResumableLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("val")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("all")


class LinearData(RegressionData):
    """The tutorial's data: ``y = slope * x + intercept + N(0, noise^2)``, ``x ~ U(low, high)``.

    Args:
        slope: the true weight.
        intercept: the true bias.
        noise: standard deviation of the Gaussian noise added to ``y``.
        size: number of samples, before the train/validation split.
        low: smallest ``x``.
        high: largest ``x``.
        batch_size: rows per batch; at least the training rows means full-batch descent.
        val_fraction: share of the rows held out for validation.
        seed: seeds the data, the train/validation split and the shuffling.
    """

    def __init__(
        self,
        slope: float = 3.0,
        intercept: float = 2.0,
        noise: float = 0.1,
        size: int = 100,
        low: float = 0.0,
        high: float = 5.0,
        batch_size: int = 100,
        val_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, val_fraction, seed)
        self.save_hyperparameters()
        self.slope, self.intercept, self.noise = slope, intercept, noise
        self.size, self.low, self.high = size, low, high

    def load(self) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        x = self.low + (self.high - self.low) * torch.rand(self.size, 1, generator=generator)
        noise = self.noise * torch.randn(self.size, 1, generator=generator)  # (N, 1)
        return x, self.slope * x + self.intercept + noise  # (N, 1) each


class TutorialData(LinearData):
    """The tutorial's data exactly, :class:`LinearData` with its defaults; the CLI's default.

    It takes no options on purpose. When the command line or a config switches the data
    class, jsonargparse keeps every option the old and new class share (``noise``,
    ``size``, ...); starting from a class without options means ``--data SineData``
    starts from SineData's own defaults. To change the line, use ``--data LinearData``.
    """

    def __init__(self) -> None:
        super().__init__()


class SineData(RegressionData):
    """A nonlinear task for an MLP: ``y = sin(x) + N(0, noise^2)``, ``x ~ U(low, high)``.

    Args:
        noise: standard deviation of the Gaussian noise added to ``y``; it is also the
            floor of the validation MSE (``noise^2``).
        size: number of samples, before the train/validation split.
        low: smallest ``x``.
        high: largest ``x``.
        batch_size: rows per batch; at least the training rows means full-batch descent.
        val_fraction: share of the rows held out for validation.
        seed: seeds the data, the train/validation split and the shuffling.
    """

    def __init__(
        self,
        noise: float = 0.05,
        size: int = 1000,
        low: float = -math.pi,
        high: float = math.pi,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, val_fraction, seed)
        self.save_hyperparameters()
        self.noise, self.size, self.low, self.high = noise, size, low, high

    def load(self) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        x = self.low + (self.high - self.low) * torch.rand(self.size, 1, generator=generator)
        return x, torch.sin(x) + self.noise * torch.randn(self.size, 1, generator=generator)


class CSVData(RegressionData):
    """Your own table: one numeric target column and numeric feature columns.

    A missing file raises ``FileNotFoundError`` at once. The file is read in ``setup``,
    before the first step: a missing column, an empty or non-numeric cell, or a NaN/inf
    raises ``ValueError`` naming the file, the line and the column.

    Args:
        path: the CSV file, with a header row of column names.
        target: the column to predict.
        features: the input columns; by default every column except the target.
        delimiter: the field separator.
        batch_size: rows per batch; at least the training rows means full-batch descent.
        val_fraction: share of the rows held out for validation.
        seed: seeds the train/validation split and the shuffling.
    """

    def __init__(
        self,
        path: str,
        target: str,
        features: list[str] | None = None,
        delimiter: str = ",",
        batch_size: int = 32,
        val_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, val_fraction, seed)
        _check_file(path)
        self.save_hyperparameters()
        self.path, self.target, self.features, self.delimiter = path, target, features, delimiter
        self.feature_names: list[str] | None = None

    def load(self) -> tuple[Tensor, Tensor]:
        self.feature_names, x, y = _read_csv(self.path, self.target, self.features, self.delimiter)
        return x, y


def _check_file(path: str | os.PathLike) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CSV file not found: {path!s} (data.path)")


def _read_csv(
    path: str | os.PathLike, target: str, features: list[str] | None, delimiter: str
) -> tuple[list[str], Tensor, Tensor]:
    _check_file(path)
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.reader(file, delimiter=delimiter)
        header = [name.strip() for name in next(reader, [])]
        if not header:
            raise ValueError(f"{path!s}: empty file; expected a header row of column names")
        names = [n for n in header if n != target] if features is None else list(features)
        for name in [target, *names]:
            if name not in header:
                raise ValueError(f"{path!s}: no column {name!r}; the columns are {header}")
        if target in names:
            raise ValueError(f"{path!s}: column {target!r} is the target and cannot be a feature")
        if not names:
            raise ValueError(f"{path!s}: no feature columns besides the target {target!r}")
        columns = [*names, target]
        index = [header.index(name) for name in columns]
        rows = []
        for line, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue  # a blank line
            if len(row) != len(header):
                raise ValueError(
                    f"{path!s}, line {line}: {len(row)} fields, but the header has {len(header)}"
                )
            rows.append(
                [_number(row[i], path, line, name) for i, name in zip(index, columns, strict=True)]
            )
    if not rows:
        raise ValueError(f"{path!s}: no data rows below the header")
    table = torch.tensor(rows, dtype=torch.float32)  # (N, features + 1)
    return names, table[:, :-1], table[:, -1:]


def _number(cell: str, path: str | os.PathLike, line: int, column: str) -> float:
    text = cell.strip()
    where = f"{path!s}, line {line}, column {column!r}"
    if not text:
        raise ValueError(f"{where}: empty cell (a missing value)")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: {text!r} is not a finite number (NaN or inf)")
    return value
