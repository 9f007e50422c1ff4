"""Interrupt and resume: Ctrl+C or SIGTERM during ``fit`` leaves a checkpoint and flushed
logs from which ``fit --ckpt_path`` continues to exactly the parameters and logged curves of
an unbroken run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Literal

import pytest
import torch
from conftest import scalars
from pytorch_lightning.callbacks import Callback

from manualgrad.lightning import Regressor
from manualgrad.lightning.cli import run

# The tests train on the CPU on purpose, also on a machine with a GPU.
pytestmark = [
    pytest.mark.filterwarnings("ignore:GPU available but not used:UserWarning"),
    pytest.mark.usefixtures("one_thread"),
]

# An MLP with Adam and a step schedule on 100 sine points: 80 training rows in batches of 8
# (10 steps per epoch, reshuffled every epoch), 20 validation rows in 3 batches.
CONFIG = """\
trainer:
  enable_progress_bar: false
  enable_model_summary: false
  accelerator: cpu
model:
  layers: [1, 8, 1]
  optimizer:
    class_path: torch.optim.Adam
    init_args:
      lr: 0.01
  lr_scheduler:
    class_path: torch.optim.lr_scheduler.StepLR
    init_args:
      step_size: 2
      gamma: 0.7
data:
  class_path: manualgrad.lightning.SineData
  init_args:
    size: 100
    batch_size: 8
"""
STEPS_PER_EPOCH = 10


def fit_args(tmp: Path, epochs: int) -> list[str]:
    config = tmp / "config.yaml"
    config.write_text(CONFIG)
    return [
        "fit",
        f"--config={config}",
        f"--trainer.max_epochs={epochs}",
        f"--trainer.logger.save_dir={tmp}",
    ]


def unbroken_run(tmp: Path, epochs: int) -> tuple[dict, dict]:
    """The final weights and the logged scalars of a run that nothing interrupts."""
    cli = run(fit_args(tmp, epochs))
    return cli.model.state_dict(), scalars(Path(cli.trainer.log_dir))


def assert_same_run(run_dir: Path, state_dict: dict, expected: tuple[dict, dict]) -> None:
    weights, logged = expected
    for key, value in weights.items():
        torch.testing.assert_close(state_dict[key], value, rtol=0, atol=0)
    resumed = scalars(run_dir)
    for tag in ("train/loss", "val/loss", "train/grad_norm", "epoch"):
        assert resumed[tag] == logged[tag], tag


class SendSignal(Callback):
    """Sends ``signum`` to this process ``times`` times when training step ``step`` starts
    (``during="batch"``), or in the middle of the validation that follows it
    (``"validation"``)."""

    def __init__(
        self,
        step: int,
        during: Literal["batch", "validation"] = "batch",
        signum: int = 2,
        times: int = 1,
    ) -> None:
        self.step, self.during, self.signum, self.times = step, during, signum, times

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.during == "batch" and trainer.global_step == self.step:
            self._send()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        last_step = trainer.global_step - 1
        if self.during == "validation" and last_step == self.step and batch_idx == 1:
            self._send()

    def _send(self) -> None:
        for _ in range(self.times):
            os.kill(os.getpid(), self.signum)


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory):
    return unbroken_run(tmp_path_factory.mktemp("unbroken"), epochs=3)


@pytest.mark.parametrize(
    "signum, step, during, stopped_after",
    [
        (signal.SIGINT, 13, "batch", 14),  # in mid-epoch: the step finishes, then it stops
        (signal.SIGTERM, 19, "batch", 20),  # the epoch's last step: validation first
        (signal.SIGINT, 19, "validation", 20),  # validation finishes first
    ],
)
def test_stop_anywhere_and_resume_exactly(
    tmp_path, three_epochs, signum, step, during, stopped_after
):
    sender = {"class_path": f"{__name__}.SendSignal", "init_args": {"step": step, "during": during}}
    sender["init_args"]["signum"] = int(signum)
    args = fit_args(tmp_path, epochs=3)
    with pytest.raises(SystemExit) as stopped:
        run([*args, f"--trainer.callbacks={json.dumps([sender])}"])
    assert stopped.value.code == 128 + signum
    run_dir = tmp_path / "lightning_logs" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["global_step"] == stopped_after
    logged = scalars(run_dir)  # flushed: every step trained so far is there
    assert [s for s, _ in logged["train/loss"]] == list(range(stopped_after))

    resumed = run([*args, f"--ckpt_path={last}"])
    assert resumed.trainer.log_dir == str(run_dir)  # the same run folder, continued
    assert resumed.trainer.global_step == 3 * STEPS_PER_EPOCH
    assert_same_run(run_dir, resumed.model.state_dict(), three_epochs)


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(tmp_path):
    init_args = {"step": 13, "times": 2}
    sender = {"class_path": f"{__name__}.SendSignal", "init_args": init_args}
    with pytest.raises(SystemExit) as stopped:
        run([*fit_args(tmp_path, epochs=3), f"--trainer.callbacks={json.dumps([sender])}"])
    assert stopped.value.code == 1  # Lightning's exit on KeyboardInterrupt
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == STEPS_PER_EPOCH  # epoch 0's


@pytest.fixture(scope="module")
def thirty_epochs(tmp_path_factory):
    return unbroken_run(tmp_path_factory.mktemp("unbroken"), epochs=30)


def test_a_real_interrupted_process_resumes_to_the_unbroken_result(tmp_path, thirty_epochs):
    """``python -m manualgrad fit`` as a process of its own, sent SIGINT (what Ctrl+C sends)
    once its first epoch's checkpoint shows that training is under way. (SIGTERM to a real
    process: tests/test_ddp.py.)"""
    signum = signal.SIGINT
    command = [sys.executable, "-m", "manualgrad", *fit_args(tmp_path, epochs=30)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "lightning_logs" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not last.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.01)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err
    name = signal.Signals(signum).name
    assert f"{name}: stopping after this step" in err
    assert f"Stopped by {name} after" in out and f"--ckpt_path {last.relative_to(tmp_path)}" in out

    checkpoint = torch.load(last, weights_only=False)
    steps = checkpoint["global_step"]
    assert STEPS_PER_EPOCH <= steps < 30 * STEPS_PER_EPOCH, "the signal came too late"
    Regressor(layers=[1, 8, 1]).load_state_dict(checkpoint["state_dict"])
    logged = scalars(run_dir)
    assert [s for s, _ in logged["train/loss"]] == list(range(steps))

    done = subprocess.run(
        [*command, f"--ckpt_path={last}"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    final = torch.load(last, weights_only=False)
    assert final["global_step"] == 30 * STEPS_PER_EPOCH
    assert_same_run(run_dir, final["state_dict"], thirty_epochs)


def test_validate_test_predict_from_a_checkpoint_warn_of_nothing(tmp_path):
    """They log into new run folders; the fit's checkpoint callback state, restored with the
    checkpoint, is unused there, and Lightning's note that its folder changed is not shown."""
    common = [
        f"--trainer.logger.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.accelerator=cpu",
    ]
    run(["fit", "--trainer.max_epochs=2", *common])
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    for subcommand in ("validate", "test", "predict"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run([subcommand, f"--ckpt_path={last}", *common])
        assert not [w for w in caught if "dirpath" in str(w.message)], subcommand
