"""The ``manualgrad`` command: defaults, subcommands, options, saved runs, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import QUIET_CLI

from manualgrad.lightning import Classifier, GradientAudit, Regressor, SpiralData, TutorialData
from manualgrad.lightning.cli import run

# The tests train on the CPU on purpose, also on a machine with a GPU.
pytestmark = [
    pytest.mark.filterwarnings("ignore:GPU available but not used:UserWarning"),
    pytest.mark.usefixtures("one_thread"),
]


def test_python_m_manualgrad_prints_the_embedded_tutorial_config(workdir):
    out = subprocess.run(
        [sys.executable, "-m", "manualgrad", "fit", "--print_config"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    config = yaml.safe_load(out)
    assert config["seed_everything"] == 0
    assert config["model"]["class_path"] == "manualgrad.lightning.Regressor"
    model = config["model"]["init_args"]
    assert model["layers"] is None  # the model class's own default: [1, 1] for a Regressor
    assert model["backend"] == "manual"
    assert model["optimizer"]["class_path"] == "torch.optim.SGD"
    assert model["optimizer"]["init_args"]["lr"] == 0.1
    assert config["data"]["class_path"].endswith("TutorialData")
    trainer = config["trainer"]
    assert trainer["max_epochs"] == 200 and trainer["log_every_n_steps"] == 1
    assert trainer["logger"]["class_path"].endswith("TensorBoardLogger")
    assert trainer["logger"]["init_args"]["default_hp_metric"] is False
    assert config["checkpoint"]["save_last"] is True
    assert config["gradient_audit"]["every_n_steps"] == 0


def test_fit_without_options_trains_the_tutorial_and_saves_everything(workdir, capsys):
    cli = run(["fit", "--trainer.max_epochs=3", *QUIET_CLI])
    assert isinstance(cli.datamodule, TutorialData)
    assert cli.model.layers == [1, 1]
    optimizer = cli.trainer.optimizers[0]
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["lr"] == 0.1
    assert not any(isinstance(c, GradientAudit) and c.every_n_steps for c in cli.trainer.callbacks)
    run_dir = workdir / "lightning_logs" / "version_0"
    assert (run_dir / "config.yaml").is_file()
    hparams = yaml.safe_load((run_dir / "hparams.yaml").read_text())
    assert hparams["layers"] is None and hparams["backend"] == "manual"  # None: the default
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    weight, bias = cli.model.net[0].weight.item(), cli.model.net[0].bias.item()
    out = capsys.readouterr().out
    assert f"Learned weight = {weight:.4f}, bias = {bias:.4f} (data: y = 3 x + 2)" in out
    assert "Logs, config and checkpoints: lightning_logs/version_0" in out
    assert "View the curves: tensorboard --logdir lightning_logs" in out


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty:UserWarning")
def test_rerunning_does_not_crash_on_an_existing_folder(workdir):
    for _ in range(2):
        run(["fit", "--trainer.max_epochs=1", "--trainer.logger.version=same", *QUIET_CLI])
    for _ in range(2):
        run(["fit", "--trainer.max_epochs=1", *QUIET_CLI])
    runs = sorted(p.name for p in (workdir / "lightning_logs").iterdir())
    assert runs == ["same", "version_0", "version_1"]


def test_any_torch_optimizer_and_scheduler_from_the_command_line(workdir):
    cli = run(
        [
            "fit",
            "--model.optimizer=Adam",
            "--model.optimizer.lr=0.02",
            "--model.optimizer.betas=[0.8, 0.9]",
            "--model.lr_scheduler=StepLR",
            "--model.lr_scheduler.step_size=1",
            "--model.lr_scheduler.gamma=0.5",
            "--trainer.max_epochs=2",
            *QUIET_CLI,
        ]
    )
    optimizer = cli.trainer.optimizers[0]
    assert type(optimizer) is torch.optim.Adam
    assert optimizer.defaults["betas"] == (0.8, 0.9)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02 * 0.5**2)
    assert type(cli.trainer.lr_scheduler_configs[0].scheduler) is torch.optim.lr_scheduler.StepLR


def test_model_options_from_the_command_line(workdir):
    cli = run(
        [
            "fit",
            "--model.layers=[1, 4, 1]",
            "--model.activation=relu",
            "--model.backend=native",
            "--data=SineData",
            "--data.size=40",
            "--gradient_audit.every_n_steps=1",
            "--trainer.max_steps=2",
            *QUIET_CLI,
        ]
    )
    assert type(cli.model.net[1]) is torch.nn.ReLU
    assert type(cli.model.net[0]) is torch.nn.Linear
    assert len(cli.datamodule._data()["all"]) == 40
    (audit,) = [c for c in cli.trainer.callbacks if isinstance(c, GradientAudit)]
    assert audit.every_n_steps == 1 and audit.last is not None


def test_backend_autograd_is_the_old_name_of_native(workdir):
    models = {}
    for backend in ("native", "autograd"):
        args = ["fit", "--model.layers=[1, 4, 1]", f"--model.backend={backend}"]
        models[backend] = run([*args, "--trainer.max_steps=0", *QUIET_CLI]).model
    native, alias = models["native"], models["autograd"]
    assert [type(m) for m in alias.modules()] == [type(m) for m in native.modules()]
    assert type(native.net[0]) is torch.nn.Linear and type(native.loss_fn) is torch.nn.MSELoss
    for key, value in native.state_dict().items():
        torch.testing.assert_close(alias.state_dict()[key], value, rtol=0, atol=0)


# Each run logs into its own version folder, so the restored checkpoint callback says that
# it now saves elsewhere.
@pytest.mark.filterwarnings("ignore:The dirpath has changed from:UserWarning")
def test_a_classifier_from_the_command_line_reports_accuracy_and_predicts_classes(workdir, capsys):
    model = ["--model=Classifier", "--model.layers=[2, 16, 3]", "--data=SpiralData"]
    fit = run(["fit", *model, "--trainer.max_epochs=2", *QUIET_CLI])
    assert isinstance(fit.model, Classifier) and isinstance(fit.datamodule, SpiralData)
    accuracy = fit.trainer.callback_metrics["val/acc"].item()
    out = capsys.readouterr().out
    assert f"Final validation accuracy = {accuracy:.2%}" in out
    assert "Final validation cross-entropy = " in out and "MSE" not in out
    last = "lightning_logs/version_0/checkpoints/last.ckpt"
    predict = run(["predict", *model, f"--ckpt_path={last}", *QUIET_CLI])
    lines = (Path(predict.trainer.log_dir) / "predictions.csv").read_text().split()
    assert lines[0] == "class,probability_0,probability_1,probability_2"
    rows = [[float(v) for v in line.split(",")] for line in lines[1:]]
    x = predict.datamodule._data()["all"].tensors[0]  # (300, 2)
    with torch.no_grad():
        probabilities = fit.model(x).softmax(-1)
    assert [int(r[0]) for r in rows] == probabilities.argmax(-1).tolist()
    torch.testing.assert_close(torch.tensor([r[1:] for r in rows]), probabilities)


# Each run logs into its own version folder, so the restored checkpoint callback says that
# it now saves elsewhere.
@pytest.mark.filterwarnings("ignore:The dirpath has changed from:UserWarning")
def test_validate_test_predict_from_the_last_checkpoint(workdir):
    fit = run(["fit", "--trainer.max_epochs=5", *QUIET_CLI])
    val_loss = fit.trainer.callback_metrics["val/loss"].item()
    last = "lightning_logs/version_0/checkpoints/last.ckpt"
    validate = run(["validate", f"--ckpt_path={last}", *QUIET_CLI])
    assert validate.trainer.callback_metrics["val/loss"].item() == pytest.approx(val_loss)
    test = run(["test", f"--ckpt_path={last}", *QUIET_CLI])
    assert test.trainer.callback_metrics["test/loss"].item() == pytest.approx(val_loss)
    predict = run(["predict", f"--ckpt_path={last}", *QUIET_CLI])
    predictions = torch.cat(predict.trainer.predict_loop.predictions)  # (100, 1)
    x = predict.datamodule._data()["all"].tensors[0]
    with torch.no_grad():
        torch.testing.assert_close(predictions, fit.model(x))
    written = (Path(predict.trainer.log_dir) / "predictions.csv").read_text().split()
    assert written[0] == "prediction_0"
    torch.testing.assert_close(torch.tensor([float(v) for v in written[1:]]), predictions[:, 0])


def test_regressor_reloads_from_a_cli_checkpoint(workdir):
    run(
        ["fit", "--trainer.max_epochs=2", "--model.layers=[1, 3, 1]", "--data=SineData", *QUIET_CLI]
    )
    model = Regressor.load_from_checkpoint("lightning_logs/version_0/checkpoints/last.ckpt")
    assert model.layers == [1, 3, 1]


@pytest.mark.parametrize(
    "config, named",
    [
        ("model:\n  layer: [1, 1]\n", "layer"),
        ("model:\n  layers: one\n", "model.layers"),
        ("model:\n  activation: softmax\n", "model.activation"),
        ("trainer:\n  max_epochs: lots\n", "trainer.max_epochs"),
        ("data:\n  class_path: NoSuchData\n", "data"),
    ],
)
def test_a_bad_config_gets_a_clear_error(workdir, capsys, config, named):
    (workdir / "bad.yaml").write_text(config)
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "--config", "bad.yaml"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "error:" in err and named in err


def test_a_missing_config_file_gets_a_clear_error(workdir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "--config", "experiments/no_such_experiment.yaml"])
    assert exit_info.value.code != 0
    assert "no_such_experiment.yaml" in capsys.readouterr().err


def test_a_missing_csv_file_names_the_file(workdir):
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        run(["fit", "--data=CSVData", "--data.path=missing.csv", "--data.target=y", *QUIET_CLI])
