"""Data modules: the tutorial's line, a sine for an MLP, the CS231n spiral for a classifier,
and a CSV table of your own (numeric targets or class labels)."""

from __future__ import annotations

import math
from typing import Literal

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from manualgrad.lightning.csv_table import check_file, read_csv
from manualgrad.lightning.loading import EpochShuffle, ResumableLoader

__all__ = [
    "SplitData",
    "RegressionData",
    "LinearData",
    "TutorialData",
    "SineData",
    "SpiralData",
    "CSVData",
]


class SplitData(pl.LightningDataModule):
    """Inputs ``x (N, features)`` and targets, split once into train and validation rows by
    a seeded shuffle. The targets are numbers ``y (N, targets)`` (float) for a regression, or
    class indices ``y (N,)`` (int64, ``0 .. classes - 1``) for a classification.

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
        """Return ``x (N, features)`` (float32) and either ``y (N, targets)`` (float32) or
        class indices ``y (N,)`` (int64)."""
        raise NotImplementedError

    @property
    def num_features(self) -> int:
        return self._data()["all"].tensors[0].shape[1]

    @property
    def num_targets(self) -> int | None:
        """Numeric targets per row; None for class labels."""
        y = self._data()["all"].tensors[1]
        return y.shape[1] if y.is_floating_point() else None

    @property
    def num_classes(self) -> int | None:
        """The number of classes (the largest label + 1); None for numeric targets."""
        y = self._data()["all"].tensors[1]
        return None if y.is_floating_point() else int(y.max()) + 1

    def _data(self) -> dict[str, TensorDataset]:
        if self._splits is None:
            x, y = self.load()  # (N, features), (N, targets) or (N,)
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


#: the name of :class:`SplitData` from before class labels
RegressionData = SplitData

# The command line gives the model and the data module their class path as a hyperparameter;
# Lightning 2.4 refuses to log the two modules' hyperparameters together when they differ,
# so the data leaves it out (its class comes from the config anyway).
CLI_CLASS_PATH = "_class_path"


class LinearData(SplitData):
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
        self.save_hyperparameters(ignore=CLI_CLASS_PATH)
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


class SineData(SplitData):
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
        self.save_hyperparameters(ignore=CLI_CLASS_PATH)
        self.noise, self.size, self.low, self.high = noise, size, low, high

    def load(self) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        x = self.low + (self.high - self.low) * torch.rand(self.size, 1, generator=generator)
        return x, torch.sin(x) + self.noise * torch.randn(self.size, 1, generator=generator)


class SpiralData(SplitData):
    """The spiral of the CS231n case study (a toy that no linear model can separate):
    ``classes`` arms of ``points_per_class`` points each, in the plane.

    Arm ``j`` has radii ``r`` evenly spaced in [0, 1] and angles
    ``t = linspace(4 j, 4 (j + 1)) + N(0, noise^2)`` (radians); its points are
    ``(r sin t, r cos t)``, labelled ``j``. Drawn from a generator seeded with ``seed``.

    Args:
        classes: the number of arms (classes).
        points_per_class: points per arm, before the train/validation split.
        noise: standard deviation of the Gaussian noise added to each angle.
        batch_size: rows per batch; at least the training rows means full-batch descent.
        val_fraction: share of the rows held out for validation.
        seed: seeds the data, the train/validation split and the shuffling.
    """

    def __init__(
        self,
        classes: int = 3,
        points_per_class: int = 100,
        noise: float = 0.2,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, val_fraction, seed)
        if classes < 2 or points_per_class < 1:
            raise ValueError(
                f"classes must be at least 2 and points_per_class at least 1, got "
                f"{classes} and {points_per_class}"
            )
        self.save_hyperparameters(ignore=CLI_CLASS_PATH)
        self.classes, self.points_per_class, self.noise = classes, points_per_class, noise

    def load(self) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        n = self.points_per_class
        radius = torch.linspace(0.0, 1.0, n)  # (n,)
        points, labels = [], []
        for j in range(self.classes):
            angle = torch.linspace(4.0 * j, 4.0 * (j + 1), n)
            angle = angle + self.noise * torch.randn(n, generator=generator)  # (n,)
            points.append(torch.stack([radius * torch.sin(angle), radius * torch.cos(angle)], 1))
            labels.append(torch.full((n,), j, dtype=torch.int64))
        return torch.cat(points), torch.cat(labels)  # (classes * n, 2), (classes * n,)


class CSVData(SplitData):
    """Your own table: one target column and numeric feature columns.

    The target column holds numbers to predict (``task="regression"``) or class labels
    (``task="classification"``: whole numbers ``0, 1, ..., classes - 1``, for a
    :class:`~manualgrad.lightning.Classifier`).

    A missing file raises ``FileNotFoundError`` at once. The file is read in ``setup``,
    before the first step: a missing column, an empty or non-numeric cell, a NaN/inf, or a
    label that is not a whole number from 0 raises ``ValueError`` naming the file, the line
    and the column.

    Args:
        path: the CSV file, with a header row of column names.
        target: the column to predict.
        features: the input columns; by default every column except the target.
        task: ``"regression"`` (numeric targets) or ``"classification"`` (class labels).
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
        task: Literal["regression", "classification"] = "regression",
        delimiter: str = ",",
        batch_size: int = 32,
        val_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, val_fraction, seed)
        if task not in ("regression", "classification"):
            raise ValueError(f"task must be 'regression' or 'classification', got {task!r}")
        check_file(path)
        self.save_hyperparameters(ignore=CLI_CLASS_PATH)
        self.path, self.target, self.features, self.delimiter = path, target, features, delimiter
        self.task = task
        self.feature_names: list[str] | None = None

    def load(self) -> tuple[Tensor, Tensor]:
        labels = self.task == "classification"
        self.feature_names, x, y = read_csv(
            self.path, self.target, self.features, self.delimiter, labels
        )
        return x, y
