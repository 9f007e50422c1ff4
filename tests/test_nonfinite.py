"""A diverging run: training stops at the first NaN or inf, says which step, and leaves the
last good checkpoint as it was (or skips such steps, when asked to)."""

from __future__ import annotations

import functools
import math
import os
import re
import subprocess
import sys
import warnings

import pytest
import pytorch_lightning as pl
import torch
from conftest import EXPERIMENTS, scalars
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from manualgrad.lightning import LinearData, NonFiniteCheck, NonFiniteError, Regressor
from manualgrad.lightning.cli import run

pytestmark = [
    # The tests train on the CPU on purpose, also on a machine with a GPU.
    pytest.mark.filterwarnings("ignore:GPU available but not used:UserWarning"),
    # Lightning 2.6 builds torch's deprecated pytree LeafSpec (torch 2.13).
    pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)`:FutureWarning"),
    pytest.mark.usefixtures("one_thread", "workdir"),
]
# The tutorial with a learning rate ten times too large: the loss grows ~100-fold a step.
DIVERGING = [
    f"--config={EXPERIMENTS / 'linear_regression.yaml'}",
    "--model.optimizer.lr=1.0",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.accelerator=cpu",
]


def finite(state_dict: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state_dict.values())


def test_a_diverging_fit_stops_naming_the_step_and_keeps_the_good_checkpoint(tmp_path):
    """Batches of 20 rows (4 steps an epoch, a checkpoint after each epoch)."""
    done = subprocess.run(
        [sys.executable, "-m", "manualgrad", "fit", *DIVERGING, "--data.batch_size=20"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    found = re.search(
        r"manualgrad: error: the training loss is (inf|nan) at step (\d+) \(epoch (\d+), batch "
        r"(\d+)\); stopped before the optimizer step.* The last checkpoint written before it: "
        r"lightning_logs/version_0/checkpoints/last\.ckpt\n.*--model\.optimizer\.lr",
        done.stderr,
    )
    assert found, done.stderr[-3000:]
    step, epoch, batch = (int(g) for g in found.groups()[1:])
    assert step == 4 * epoch + batch and step > 4

    run_dir = tmp_path / "lightning_logs" / "version_0"
    losses = scalars(run_dir)["train/loss"]  # every step before the bad one, all finite
    assert [s for s, _ in losses] == list(range(step)) and all(math.isfinite(v) for _, v in losses)
    assert losses[-1][1] > 1e30  # it really diverged
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4 * epoch  # the end of the epoch before
    assert finite(last["state_dict"])
    model = Regressor()
    model.load_state_dict(last["state_dict"])


def test_a_nonfinite_validation_loss_stops_before_its_checkpoint(tmp_path):
    """Full batches: the weights after step 14 make the validation loss overflow first."""
    with pytest.raises(NonFiniteError, match=r"val/loss is inf at step 14 \(the validation in "):
        run(["fit", *DIVERGING])
    last = torch.load("lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 14 and finite(last["state_dict"])


def test_without_the_check_the_checkpoint_is_lost(tmp_path):
    """The same run with ``--nonfinite.action warn`` trains on: it warns naming the step,
    and its last checkpoint ends up holding non-finite weights."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(["fit", *DIVERGING, "--trainer.max_epochs=40", "--nonfinite.action=warn"])
    said = [str(w.message) for w in caught]
    assert "val/loss is inf at step 14 (the validation in epoch 14)" in said
    assert "the training loss is inf at step 15 (epoch 15, batch 0); training goes on" in said
    last = torch.load("lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 40 and not finite(last["state_dict"])


def trainer(callbacks, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **kwargs,
    )


def diverging_model() -> Regressor:
    pl.seed_everything(0, verbose=False)
    return Regressor(optimizer=functools.partial(torch.optim.SGD, lr=1.0))


def test_skip_leaves_the_weights_of_the_last_good_step():
    check = NonFiniteCheck(action="skip")
    model = diverging_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer([check], max_steps=25, enable_checkpointing=False).fit(model, LinearData())
    said = [str(w.message) for w in caught]
    assert (
        "the training loss is inf at step 15 (epoch 15, batch 0); skipped this step "
        "(the weights stay as they are)"
    ) in said
    assert check.skipped == list(range(15, 25))  # the same full batch, the same inf
    reference = diverging_model()
    trainer([], max_steps=15, enable_checkpointing=False).fit(reference, LinearData())
    assert finite(model.state_dict())
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


class Poison(Callback):
    """At training step ``step``, makes the gradient (``what="grad"``) or, after the
    optimizer step, the weight (``what="weight"``) of the first layer NaN."""

    def __init__(self, step: int, what: str) -> None:
        self.step, self.what = step, what

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.what == "grad" and trainer.global_step == self.step:
            pl_module.net[0].weight.grad[0, 0] = float("nan")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.what == "weight" and trainer.global_step == self.step + 1:
            with torch.no_grad():
                pl_module.net[0].weight[0, 0] = float("nan")


def test_a_nonfinite_gradient_stops_before_the_step():
    model = Regressor()
    with pytest.raises(NonFiniteError, match=r"gradient of net.0.weight is not finite .*step 3 "):
        trainer([Poison(3, "grad"), NonFiniteCheck()], max_steps=10).fit(model, LinearData())
    assert finite(model.state_dict())


def test_no_checkpoint_with_nonfinite_weights_is_written(tmp_path):
    every_step = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    callbacks = [Poison(3, "weight"), NonFiniteCheck(), every_step]
    with pytest.raises(NonFiniteError, match=r"the weight net.0.weight is not finite at step 4"):
        trainer(callbacks, max_steps=10).fit(Regressor(), LinearData())
    # weights_only=False: a Lightning checkpoint holds the optimizer class
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 3 and finite(last["state_dict"])


def test_bad_action():
    with pytest.raises(ValueError, match="action must be 'stop', 'skip' or 'warn'"):
        NonFiniteCheck(action="ignore")
