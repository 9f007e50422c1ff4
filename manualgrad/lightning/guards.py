"""Guards for long runs: a clean stop on Ctrl+C or SIGTERM, and a stop (or a skipped step)
when the loss goes NaN or inf, so that the last checkpoint is always one to resume from."""

from __future__ import annotations

import os
import signal
import threading
from typing import Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

__all__ = ["GracefulStop", "NonFiniteCheck", "NonFiniteError"]


class GracefulStop(Callback):
    """Ctrl+C (SIGINT) or SIGTERM during ``fit``: finish the current training step, save the
    last checkpoint, flush the logs, and end ``fit`` with Lightning's ``SIGTERMException`` (a
    ``SystemExit``) whose exit status is 128 + the signal's number: 130 for SIGINT, 143 for
    SIGTERM.

    Training stops where Lightning itself stops on SIGTERM: after the step has been logged,
    or, at the last step of an epoch, after validation and the epoch's checkpoint. The
    checkpoint written then resumes exactly (``fit(..., ckpt_path=...)``), in mid-epoch too
    when the training loader is resumable (:class:`~manualgrad.lightning.loading.ResumableLoader`).
    A second Ctrl+C stops at once, as Lightning does on Ctrl+C (``KeyboardInterrupt``, exit
    status 1), without a new checkpoint.

    Under DDP the signal may reach one process or all of them (a terminal's Ctrl+C, SLURM's
    SIGTERM): the handler only takes note, and after every step the processes agree (one
    small all-reduce) to stop together, at the same step. (Lightning's own SIGTERM handler,
    which this one replaces during training, communicates between processes from inside the
    handler and can hang.)
    """

    def __init__(self) -> None:
        self.signal: int | None = None  # the signal that stopped (or is stopping) training

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.signal = None
        if threading.current_thread() is threading.main_thread():
            # Lightning registered its SIGTERM handler just before training; it puts back the
            # handlers it found when fit ends, which removes these two as well.
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        if self.signal is None:
            self.signal = signum
            # os.write, not print: a handler may interrupt a print to the same stream.
            note = f"\n{signal.Signals(signum).name}: stopping after this step"
            os.write(2, f"{note} (Ctrl+C again stops at once)\n".encode())
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        stop = self._agree(trainer)
        # Validation and the epoch's checkpoint follow the last batch: stop after those.
        if stop and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._stop(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._agree(trainer):
            self._stop(trainer)

    def _agree(self, trainer: pl.Trainer) -> bool:
        """Whether any process received a signal; every process calls this at the same point."""
        if trainer.world_size > 1:
            signum = torch.tensor(float(self.signal or 0), device=trainer.strategy.root_device)
            signum = int(trainer.strategy.reduce(signum, reduce_op="max").item())
            self.signal = self.signal or signum or None
        return self.signal is not None

    def _stop(self, trainer: pl.Trainer) -> None:
        # Lightning's own flag for a received SIGTERM: its loops then raise SIGTERMException
        # at the end of this step (or epoch).
        trainer._signal_connector.received_sigterm = True

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        if exception.code is None:
            exception.code = 128 + (self.signal or signal.SIGTERM)
        if self.signal is None:  # Lightning's own SIGTERM handling, before training started
            return
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the checkpoint be written
        checkpoint = trainer.checkpoint_callback
        message = (
            f"Stopped by {signal.Signals(self.signal).name} after {trainer.global_step} "
            f"training steps (epoch {trainer.current_epoch})."
        )
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.dirpath is not None:
            metrics = {"epoch": trainer.current_epoch, "step": trainer.global_step}
            path = checkpoint.format_checkpoint_name(metrics, checkpoint.CHECKPOINT_NAME_LAST)
            trainer.save_checkpoint(path, weights_only=False)  # every process takes part
            shown = _relative(path)
            message += f"\nSaved {shown}; to resume, run fit again with --ckpt_path {shown}"
        if trainer.is_global_zero:
            print(message, flush=True)


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
        return f" The last checkpoint written before it: {_relative(path)}"
    return ""


def _relative(path: str) -> str:
    """``path`` relative to the working directory when it lies below it."""
    relative = os.path.relpath(os.path.abspath(path))
    return path if relative.startswith(os.pardir) else relative
