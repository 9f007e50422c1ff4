"""A clean stop on Ctrl+C or SIGTERM, so that the last checkpoint is always one to resume
from."""

from __future__ import annotations

import os
import signal
import threading

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from manualgrad.lightning.report import shown_path

__all__ = ["GracefulStop"]


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
            shown = shown_path(path)
            message += f"\nSaved {shown}; to resume, run fit again with --ckpt_path {shown}"
        if trainer.is_global_zero:
            print(message, flush=True)
