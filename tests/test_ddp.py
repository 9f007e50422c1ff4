"""DDP on the CPU: ``--trainer.strategy=ddp --trainer.devices=2 --trainer.accelerator=cpu``
(two processes, gloo) reaches the parameters one process reaches, also when it is
interrupted and resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import EXPERIMENTS, scalars

from manualgrad.lightning.cli import run

# The tests train on the CPU on purpose, also on a machine with a GPU.
pytestmark = [
    pytest.mark.filterwarnings("ignore:GPU available but not used:UserWarning"),
    pytest.mark.usefixtures("one_thread"),
]
EPOCHS, STEPS_PER_EPOCH = 3, 13  # 800 training rows in steps of 64


def fit_args(save_dir: Path) -> list[str]:
    """The MLP experiment (Adam, cosine schedule, reshuffled minibatches), shortened."""
    return [
        "fit",
        f"--config={EXPERIMENTS / 'mlp_sine.yaml'}",
        f"--trainer.max_epochs={EPOCHS}",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.save_dir={save_dir}",
    ]


# Each of the two processes takes 32 rows a step, the one process 64: every step sees the
# same 64 rows either way (the seeded order is dealt out between the processes), so only
# float32 rounding (a mean of two means of 32 against one mean of 64) separates them.
TWO_PROCESSES = ["--trainer.strategy=ddp", "--trainer.devices=2", "--data.batch_size=32"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The final weights and logged scalars of the same run in one process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = run([*fit_args(tmp_path_factory.mktemp("one")), "--data.batch_size=64"])
    finally:
        torch.set_num_threads(threads)
    assert one.trainer.global_step == EPOCHS * STEPS_PER_EPOCH
    return one.model.state_dict(), scalars(Path(one.trainer.log_dir))


def assert_same_solution(run_dir: Path, expected: tuple[dict, dict]) -> None:
    weights, logged = expected
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == EPOCHS * STEPS_PER_EPOCH
    for key, value in weights.items():
        torch.testing.assert_close(checkpoint["state_dict"][key], value, rtol=1e-5, atol=1e-6)
    # The logged losses are those of whole steps (averaged over the processes) too.
    two = scalars(run_dir)
    for tag in ("train/loss", "val/loss"):
        assert [s for s, _ in two[tag]] == [s for s, _ in logged[tag]]
        for (_, a), (_, b) in zip(two[tag], logged[tag], strict=True):
            assert a == pytest.approx(b, rel=1e-5)


def test_two_processes_reach_the_one_process_solution(tmp_path, one_process):
    command = [sys.executable, "-m", "manualgrad", *fit_args(tmp_path), *TWO_PROCESSES]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Starting with 2 processes" in done.stdout + done.stderr
    assert_same_solution(tmp_path / "lightning_logs" / "version_0", one_process)


def test_an_interrupted_ddp_run_resumes_to_the_same_solution(tmp_path, one_process):
    """SIGTERM to the first process only (as ``kill`` would send it): both processes stop
    after the same step, the checkpoint is saved, and fit resumes from it."""
    command = [sys.executable, "-m", "manualgrad", *fit_args(tmp_path), *TWO_PROCESSES]
    run_dir = tmp_path / "lightning_logs" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process = subprocess.Popen(command, cwd=tmp_path, env=ENV, **pipes)
    deadline = time.monotonic() + 120
    while not last.exists():  # the first epoch's checkpoint: training is under way
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err
    steps = torch.load(last, weights_only=True)["global_step"]
    assert STEPS_PER_EPOCH <= steps < EPOCHS * STEPS_PER_EPOCH, "the signal came too late"
    assert f"Stopped by SIGTERM after {steps} training steps" in out

    resumed = subprocess.run(
        [*command, f"--ckpt_path={last}"], cwd=tmp_path, capture_output=True, text=True, env=ENV
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_solution(run_dir, one_process)
