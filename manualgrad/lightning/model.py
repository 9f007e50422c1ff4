"""The LightningModules: an MLP trained on mean squared error (:class:`Regressor`) or on
cross-entropy (:class:`Classifier`), on hand-derived gradients or on native autograd.

Both backends build the same native network and loss; ``backend='manual'`` then converts
them with :func:`manualgrad.replace_modules`, which reads the one table
(:mod:`manualgrad.registry`). So an op registered there is trained on its hand-derived
backward here with no other edit, and one not (yet) there stays native, which
``replace_modules`` says in a warning on the ``manualgrad`` logger.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

import manualgrad

__all__ = ["ACTIVATIONS", "BACKENDS", "Classifier", "Regressor", "build_network", "on_backend"]

#: the activation names the models take -> the native module class
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}
Activation = Literal["tanh", "relu", "sigmoid", "gelu", "silu"]

#: the backend names the models take -> what each means ('autograd' is the old name of 'native')
BACKENDS: dict[str, str] = {"manual": "manual", "native": "native", "autograd": "native"}
Backend = Literal["manual", "native", "autograd"]


def on_backend(module: nn.Module, backend: str) -> nn.Module:
    """``module`` (built from native classes) on ``backend``: for ``'manual'`` every module of
    it that the table has a manual class for is converted, in place
    (:func:`manualgrad.replace_modules`); for ``'native'`` (alias ``'autograd'``) it is
    returned as it is."""
    _check_backend(backend)
    return manualgrad.replace_modules(module) if BACKENDS[backend] == "manual" else module


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(
            f"backend must be 'manual' or 'native' ('autograd' is an alias of 'native'), "
            f"got {backend!r}"
        )


def build_network(layers: Sequence[int], activation: str, backend: str) -> nn.Sequential:
    """``Linear(layers[0], layers[1]), activation, Linear(layers[1], layers[2]), ...`` on
    ``backend`` (see :func:`on_backend`).

    Both backends build the same native network first, so under the same seed they start
    from the same weights, and their state_dicts have the same keys.
    """
    layers = list(layers)
    if len(layers) < 2 or any(not isinstance(n, int) or n < 1 for n in layers):
        raise ValueError(
            f"layers must list at least two positive sizes (inputs, ..., outputs), got {layers}"
        )
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    _check_backend(backend)
    modules: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(layers[:-1], layers[1:], strict=True)):
        if i > 0:
            modules.append(ACTIVATIONS[activation]())
        modules.append(nn.Linear(n_in, n_out))
    return on_backend(nn.Sequential(*modules), backend)


class _MLP(pl.LightningModule):
    """What both models share: the network, the loss on its backend, one step for every
    stage, the gradient norm, the optimizer and scheduler. A subclass names its native loss
    class, the data's attribute that its output size must match, and its metrics."""

    native_loss: type[nn.Module]
    outputs_attribute: str  # the data module's attribute giving the number of outputs
    default_layers: tuple[int, ...]

    def __init__(
        self,
        layers: Sequence[int] | None,
        activation: str,
        backend: str,
        optimizer: OptimizerCallable,
        lr_scheduler: LRSchedulerCallable | None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # None, not the sizes themselves, is the default: the command line carries the
        # arguments of one model class over to another, and a Regressor's sizes would be
        # wrong for a Classifier.
        self.layers = list(self.default_layers if layers is None else layers)
        self.net = build_network(self.layers, activation, backend)
        self.loss_fn = on_backend(self.native_loss(), backend)
        self._optimizer = optimizer
        self._lr_scheduler = lr_scheduler

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        name = type(datamodule).__name__
        inputs = getattr(datamodule, "num_features", None)
        outputs = getattr(datamodule, self.outputs_attribute, None)
        other = "num_targets" if self.outputs_attribute == "num_classes" else "num_classes"
        if outputs is None and getattr(datamodule, other, None) is not None:
            holds = "class labels" if other == "num_classes" else "numeric targets"
            use = "Classifier" if other == "num_classes" else "Regressor"
            raise ValueError(
                f"{type(self).__name__} cannot learn {holds}, which the data ({name}) holds: "
                f"use --model {use}"
            )
        sizes = (("inputs", self.layers[0], inputs), ("outputs", self.layers[-1], outputs))
        for what, size, want in sizes:
            if want is not None and size != want:
                raise ValueError(
                    f"model.layers {self.layers} has {size} {what}, but the data ({name}) "
                    f"has {want}: set model.layers to [{inputs}, ..., {outputs}]"
                )

    def metrics(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        """What is logged besides the loss, by name (``acc`` is logged as ``train/acc``...)."""
        return {}

    def _step(self, batch: Sequence[Tensor], stage: str) -> Tensor:
        x, y = batch
        output = self(x)
        loss = self.loss_fn(output, y)
        per_step = stage == "train"
        with torch.no_grad():
            values = {"loss": loss, **self.metrics(output, y)}
        for name, value in values.items():
            self.log(
                f"{stage}/{name}",
                value,
                on_step=per_step,
                on_epoch=not per_step,
                prog_bar=True,
                batch_size=len(x),
                sync_dist=True,  # under DDP, the mean over processes: that of the whole step
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

    def configure_optimizers(self):
        optimizer = self._optimizer(self.parameters())
        if self._lr_scheduler is None:
            return optimizer
        scheduler = self._lr_scheduler(optimizer)
        config = {"scheduler": scheduler}
        if isinstance(scheduler, ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}


class Regressor(_MLP):
    """A regression model trained on mean squared error, with hand-derived gradients.

    Args:
        layers: sizes from inputs to outputs; ``[1, 32, 32, 1]`` is an MLP with two hidden
            layers. By default ``[1, 1]``: the tutorial's single neuron ``y_hat = w x + b``.
        activation: the nonlinearity between Linear layers (none after the last).
        backend: ``'manual'``: every op of the model (its Linear layers, activations and
            ``MSELoss``) with its hand-derived backward; ``'native'``: the identical model on
            native autograd, for a side-by-side comparison. ``'autograd'`` is an alias of
            ``'native'``.
        optimizer: the optimizer class and its arguments; torch's SGD by default (the CLI
            sets its learning rate to 0.1). Any ``torch.optim`` class works.
        lr_scheduler: an optional ``torch.optim.lr_scheduler`` class and its arguments,
            stepped once per epoch (``ReduceLROnPlateau`` watches ``val/loss``).

    Logged: ``train/loss`` every step, ``val/loss`` (and ``test/loss``) every epoch,
    ``train/grad_norm`` (2-norm of all gradients) every step and, for a ``[1, 1]``
    model, the learned ``params/weight`` and ``params/bias`` after every step. Under DDP the
    losses are averaged over the processes, so they are those of the whole step.
    """

    native_loss = nn.MSELoss
    outputs_attribute = "num_targets"
    default_layers = (1, 1)

    def __init__(
        self,
        layers: Sequence[int] | None = None,
        activation: Activation = "tanh",
        backend: Backend = "manual",
        optimizer: OptimizerCallable = torch.optim.SGD,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(layers, activation, backend, optimizer, lr_scheduler)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.layers == [1, 1]:
            linear = self.net[0]
            self.log("params/weight", linear.weight.detach()[0, 0], on_step=True, on_epoch=False)
            self.log("params/bias", linear.bias.detach()[0], on_step=True, on_epoch=False)


class Classifier(_MLP):
    """A classifier trained on cross-entropy, with hand-derived gradients.

    The network maps ``x (N, features)`` to one logit per class ``(N, classes)``; the
    targets are class indices ``y (N,)``, as :class:`~manualgrad.lightning.SpiralData`
    gives them.

    Args:
        layers: sizes from inputs to classes. By default ``[2, 100, 3]``, the network of
            the CS231n spiral case study: 2 inputs, 100 hidden units, 3 classes.
        activation: the nonlinearity between Linear layers (none after the last).
        backend: ``'manual'``: every op of the model (its Linear layers, activations and
            ``CrossEntropyLoss``) with its hand-derived backward; ``'native'``: the identical
            model on native autograd. ``'autograd'`` is an alias of ``'native'``.
        optimizer: the optimizer class and its arguments (the CLI's default: SGD, lr 0.1).
        lr_scheduler: an optional ``torch.optim.lr_scheduler`` class and its arguments,
            stepped once per epoch (``ReduceLROnPlateau`` watches ``val/loss``).

    Logged: ``train/loss`` (the cross-entropy) and ``train/acc`` (the share of the batch
    classified right) every step, ``val/loss`` and ``val/acc`` (and ``test/...``) every
    epoch over the whole split, and ``train/grad_norm`` every step.
    """

    native_loss = nn.CrossEntropyLoss
    outputs_attribute = "num_classes"
    default_layers = (2, 100, 3)

    def __init__(
        self,
        layers: Sequence[int] | None = None,
        activation: Activation = "tanh",
        backend: Backend = "manual",
        optimizer: OptimizerCallable = torch.optim.SGD,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(layers, activation, backend, optimizer, lr_scheduler)

    def metrics(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        return {"acc": (output.argmax(dim=-1) == target).float().mean()}
