"""A stop (or a skipped step) when the loss or a gradient goes NaN or inf, before it reaches
the weights, so that no checkpoint ever holds a NaN or inf weight."""

from __future__ import annotations

import os
from typing import Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from manualgrad.lightning.report import shown_path

__all__ = ["NonFiniteCheck", "NonFiniteError"]


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or infinite loss, gradient or weight."""


class NonFiniteCheck(Callback):
    """Watch the training loss and the gradients for NaN and inf before they reach the weights.

    A step is bad when its loss, in any process, or a gradient is NaN or inf. Then:

    - ``action="stop"`` (the default): raise :class:`NonFiniteError` naming the step, before
      the optimizer changes the weights. A NaN or inf validation metric (``val...``) stops
      fit too, before that epoch's checkpoint is written. No checkpoint with a NaN or inf
      weight is ever written, so the last checkpoint holds the last good weights.
    - ``action="skip"``: leave the weights as they are at that step (the optimizer skips
      it), warn naming the step, and train on; checkpoints are guarded as with ``"stop"``.
      The skipped steps are listed in ``skipped``.
    - ``action="warn"``: warn naming the step, and train on (Lightning's own behaviour).

    Args:
        action: at a step whose loss or gradient is NaN or inf, ``"stop"`` training (raise
            :class:`NonFiniteError`), ``"skip"`` the step, or ``"warn"`` and train on.
    """

    def __init__(self, action: Literal["stop", "skip", "warn"] = "stop") -> None:
        if action not in ("stop", "skip", "warn"):
            raise ValueError(f"action must be 'stop', 'skip' or 'warn', got {action!r}")
        self.action = action
        self.skipped: list[int] = []
        self._problem: str | None = None
        self._batch_idx = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._problem, self._batch_idx = None, batch_idx

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        bad_here = not bool(torch.isfinite(loss.detach()).all())
        bad = bad_here
        if trainer.world_size > 1:  # every process must take the same decision
            bad = bool(trainer.strategy.reduce_boolean_decision(bad_here, all=False))
        if bad:
            what = f"the training loss is {loss.item():g}" if bad_here else None
            self._found(trainer, what or "the training loss of another process is not finite")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._problem is None:  # a finite loss can still overflow in its gradient
            grads = [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None]
            finite = [torch.isfinite(g).all() for _, g in grads]
            if grads and not bool(torch.stack(finite).all()):
                name = next(n for (n, _), ok in zip(grads, finite, strict=True) if not ok)
                self._found(trainer, f"the gradient of {name} is not finite (the loss is)")
        if self._problem is not None and self.action == "skip":
            for p in pl_module.parameters():
                p.grad = None  # torch's optimizers leave a parameter without gradient alone

    def _found(self, trainer: pl.Trainer, what: str) -> None:
        self._problem = what
        epoch, batch = trainer.current_epoch, self._batch_idx
        where = f"step {trainer.global_step} (epoch {epoch}, batch {batch})"
        if self.action == "stop":
            raise NonFiniteError(
                f"{what} at {where}; stopped before the optimizer step, so the weights are "
                f"still those after the previous step.{_last_checkpoint(trainer)}"
            )
        if self.action == "skip":
            self.skipped.append(trainer.global_step)
            rank_zero_warn(f"{what} at {where}; skipped this step (the weights stay as they are)")
        else:
            rank_zero_warn(f"{what} at {where}; training goes on")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        for name, value in trainer.callback_metrics.items():
            if name.startswith("val") and not bool(torch.isfinite(value).all()):
                what = (
                    f"{name} is {value.item():g} at step {trainer.global_step - 1} "
                    f"(the validation in epoch {trainer.current_epoch})"
                )
                if self.action == "stop":  # before the checkpoint callbacks, which run last
                    raise NonFiniteError(
                        f"{what}; stopped before this validation's checkpoint."
                        f"{_last_checkpoint(trainer)}"
                    )
                rank_zero_warn(what)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.action == "warn":
            return
        for name, value in checkpoint.get("state_dict", {}).items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise NonFiniteError(
                    f"the weight {name} is not finite at step {trainer.global_step}; the "
                    f"checkpoint was not written.{_last_checkpoint(trainer)}"
                )


def _last_checkpoint(trainer: pl.Trainer) -> str:
    checkpoint = trainer.checkpoint_callback
    path = getattr(checkpoint, "last_model_path", "") or getattr(checkpoint, "best_model_path", "")
    if path and os.path.isfile(path):
        return f" The last checkpoint written before it: {shown_path(path)}"
    return ""
