"""Shared by the tests of the Lightning parts through their Python API (test_lightning_model,
test_lightning_data, test_lightning_audit): a logger that keeps what is logged, a quiet
CPU trainer, and the warning filters those tests share."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
from pytorch_lightning.loggers.logger import Logger
from torch import nn

from manualgrad.registry import MANUAL_CLASSES

LIGHTNING_MARKS = [
    # Lightning 2.6 builds torch's deprecated pytree LeafSpec (torch 2.13).
    pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)`:FutureWarning"),
    # On machines with many cores Lightning suggests loader workers; these loaders are
    # in-memory tensors (the CLI silences this too).
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    # The tests train on the CPU on purpose, also on a machine with a GPU.
    pytest.mark.filterwarnings("ignore:GPU available but not used:UserWarning"),
    pytest.mark.usefixtures("one_thread"),
]


def needs_manual(*natives: type[nn.Module]) -> pytest.MarkDecorator:
    """Skip while one of ``natives`` has no hand-derived op in the table yet."""
    missing = [n.__name__ for n in natives if n not in MANUAL_CLASSES]
    return pytest.mark.skipif(
        bool(missing), reason=f"no hand-derived op registered yet for {', '.join(missing)}"
    )


class MemoryLogger(Logger):
    """Keeps what Lightning logs: ``rows`` of ``(step, {tag: value})``."""

    name, version = "memory", 0

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def series(self, tag: str) -> list[tuple[int, float]]:
        return [(step, m[tag]) for step, m in self.rows if tag in m]


def trainer(**kwargs) -> pl.Trainer:
    """A CPU trainer without logger, checkpoints, progress bar or summary, logging every step."""
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    return pl.Trainer(**{**defaults, **kwargs})
