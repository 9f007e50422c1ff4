"""The LightningModule: a regression model of ``ManualLinear`` layers, ``ManualMSELoss``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from manualgrad import ManualLinear, ManualMSELoss

__all__ = ["Regressor", "build_network"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}
Activation = Literal["tanh", "relu", "sigmoid", "gelu", "silu"]
Backend = Literal["manual", "autograd"]


def build_network(layers: Sequence[int], activation: str, backend: str) -> nn.Sequential:
    """``Linear(layers[0], layers[1]), activation, Linear(layers[1], layers[2]), ...``.

    ``backend='manual'`` builds the Linear layers as :class:`~manualgrad.ManualLinear`,
    ``'autograd'`` as :class:`torch.nn.Linear`; under the same seed both start from the same
    weights, and their state_dicts have the same keys.
    """
    layers = list(layers)
    if len(layers) < 2 or any(not isinstance(n, int) or n < 1 for n in layers):
        raise ValueError(
            f"layers must list at least two positive sizes (inputs, ..., outputs), got {layers}"
        )
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if backend not in ("manual", "autograd"):
        raise ValueError(f"backend must be 'manual' or 'autograd', got {backend!r}")
    linear = ManualLinear if backend == "manual" else nn.Linear
    modules: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(layers[:-1], layers[1:], strict=True)):
        if i > 0:
            modules.append(ACTIVATIONS[activation]())
        modules.append(linear(n_in, n_out))
    return nn.Sequential(*modules)


class Regressor(pl.LightningModule):
    """A regression model trained on mean squared error, with hand-derived gradients.

    Args:
        layers: sizes from inputs to outputs; ``[1, 1]`` is the tutorial's single neuron
            ``y_hat = w x + b``, ``[1, 32, 32, 1]`` an MLP with two hidden layers.
        activation: the nonlinearity between Linear layers (none after the last).
        backend: ``'manual'`` trains ``ManualLinear`` layers with ``ManualMSELoss``;
            ``'autograd'`` trains the identical model built from ``nn.Linear`` and
            ``nn.MSELoss``, for a side-by-side comparison.
        optimizer: the optimizer class and its arguments; torch's SGD by default (the CLI
            sets its learning rate to 0.1). Any ``torch.optim`` class works.
        lr_scheduler: an optional ``torch.optim.lr_scheduler`` class and its arguments,
            stepped once per epoch (``ReduceLROnPlateau`` watches ``val/loss``).

    Logged: ``train/loss`` every step, ``val/loss`` (and ``test/loss``) every epoch,
    ``train/grad_norm`` (2-norm of all gradients) every step and, for a ``[1, 1]``
    model, the learned ``params/weight`` and ``params/bias`` after every step. Under DDP the
    losses are averaged over the processes, so they are those of the whole step.
    """

    def __init__(
        self,
        layers: Sequence[int] = (1, 1),
        activation: Activation = "tanh",
        backend: Backend = "manual",
        optimizer: OptimizerCallable = torch.optim.SGD,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = build_network(layers, activation, backend)
        self.loss_fn = ManualMSELoss() if backend == "manual" else nn.MSELoss()
        self.layers = list(layers)
        self._optimizer = optimizer
        self._lr_scheduler = lr_scheduler

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        expected = (
            getattr(datamodule, "num_features", None),
            getattr(datamodule, "num_targets", None),
        )
        for what, size, want in zip(
            ("inputs", "outputs"), (self.layers[0], self.layers[-1]), expected, strict=True
        ):
            if want is not None and size != want:
                raise ValueError(
                    f"model.layers {self.layers} has {size} {what}, but the data "
                    f"({type(datamodule).__name__}) has {want}: set model.layers to "
                    f"[{expected[0]}, ..., {expected[1]}]"
                )

    def _step(self, batch: Sequence[Tensor], stage: str) -> Tensor:
        x, y = batch
        loss = self.loss_fn(self(x), y)
        per_step = stage == "train"
        self.log(
            f"{stage}/loss",
            loss,
            on_step=per_step,
            on_epoch=not per_step,
            prog_bar=True,
            batch_size=len(x),
            sync_dist=True,  # under DDP, the mean over processes: the loss of the whole step
        )
        return loss

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    def predict_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        return self(batch[0])

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        norms = [p.grad.detach().norm() for p in self.parameters() if p.grad is not None]
        if norms:
            self.log("train/grad_norm", torch.stack(norms).norm(), on_step=True, on_epoch=False)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.layers == [1, 1]:
            linear = self.net[0]
            self.log("params/weight", linear.weight.detach()[0, 0], on_step=True, on_epoch=False)
            self.log("params/bias", linear.bias.detach()[0], on_step=True, on_epoch=False)

    def configure_optimizers(self):
        optimizer = self._optimizer(self.parameters())
        if self._lr_scheduler is None:
            return optimizer
        scheduler = self._lr_scheduler(optimizer)
        config = {"scheduler": scheduler}
        if isinstance(scheduler, ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}
