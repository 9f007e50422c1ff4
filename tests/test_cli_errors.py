"""Bad command-line input, as a user types it: the ``manualgrad`` process names the option,
exits non-zero, and prints neither a traceback nor the 70-line usage."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from manualgrad.lightning.cli import main, run

# Should a case get as far as building a Trainer on a machine with a GPU.
pytestmark = [
    pytest.mark.filterwarnings("ignore:GPU available but not used:UserWarning"),
    pytest.mark.usefixtures("one_thread", "workdir"),
]

# (what is wrong, the options, the exit status, what stderr must say)
BAD_INPUT = [
    (
        "an unknown key",
        ["--model.depth=3"],
        2,
        "unrecognized option model.depth: Regressor takes no argument 'depth'",
    ),
    ("a value of the wrong type", ["--trainer.max_epochs=lots"], 2, '"trainer.max_epochs"'),
    (
        "a negative learning rate",
        ["--model.optimizer.lr=-0.1"],
        2,
        "model.optimizer.lr: Invalid learning rate: -0.1",
    ),
    (
        "a data file that does not exist",
        ["--data=CSVData", "--data.path=missing.csv", "--data.target=y"],
        1,
        "CSV file not found: missing.csv (data.path)",
    ),
]


def test_bad_input_names_the_option_without_a_traceback(tmp_path):
    """Each case is a ``python -m manualgrad fit`` process of its own; they run side by
    side (each spends seconds importing torch and Lightning, and nothing more)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = []
    for i, (_, args, _, _) in enumerate(BAD_INPUT):
        cwd = tmp_path / str(i)
        cwd.mkdir()
        command = [sys.executable, "-m", "manualgrad", "fit", *args]
        pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        processes.append((cwd, subprocess.Popen(command, cwd=cwd, env=env, **pipes)))
    for (what, _, status, named), (cwd, process) in zip(BAD_INPUT, processes, strict=True):
        out, err = process.communicate(timeout=120)
        assert process.returncode == status, (what, err)
        assert named in err, (what, err)
        assert "Traceback" not in out + err, what
        assert len(err.splitlines()) < 15, (what, err)  # not the usage of every option
        assert not (cwd / "lightning_logs").exists(), what  # stopped before anything ran


def test_the_argument_to_blame_is_found_for_any_optimizer_or_scheduler(capsys):
    for args, named in [
        (["--model.optimizer=Adam", "--model.optimizer.betas=[0.9, 1.5]"], "betas"),
        (["--model.optimizer.momentum=-1"], "model.optimizer.momentum: Invalid momentum"),
        (
            [
                "--model.lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau",
                "--model.lr_scheduler.factor=2",
            ],
            "model.lr_scheduler.factor: Factor should be < 1.0",
        ),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            run(["fit", *args])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert named in err and err.startswith("usage: manualgrad fit [--config FILE]"), err


def test_a_class_that_refuses_a_value_raises_its_own_error():
    """From Python, ``run`` raises what the class raised (not jsonargparse's wrapper)."""
    with pytest.raises(FileNotFoundError, match=r"missing.csv \(data.path\)"):
        run(["fit", "--data=CSVData", "--data.path=missing.csv", "--data.target=y"])
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        run(["fit", "--data=LinearData", "--data.batch_size=0"])


def test_main_prints_one_error_line_or_on_request_the_traceback(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["manualgrad", "fit", "--model.layers=[1, 0]"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("manualgrad: error: layers must list at least two positive sizes")
    assert "JSONARGPARSE_DEBUG=true shows the traceback" in err
    monkeypatch.setenv("JSONARGPARSE_DEBUG", "true")
    with pytest.raises(ValueError, match="layers must list"):
        main()
