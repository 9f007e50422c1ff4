"""The Lightning parts through their Python API: model, data modules, gradient audit."""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers.logger import Logger
from torch import nn

from manualgrad import ManualLinear, ManualLinearFunction, ManualMSELoss
from manualgrad.lightning import (
    CSVData,
    GradientAudit,
    LinearData,
    Regressor,
    SineData,
    TutorialData,
    build_network,
    native_twin,
)
from manualgrad.lightning.data import EpochShuffle

pytestmark = [
    # Lightning 2.6 builds torch's deprecated pytree LeafSpec (torch 2.13).
    pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)`:FutureWarning"),
    # On machines with many cores Lightning suggests loader workers; these loaders are
    # in-memory tensors (the CLI silences this too).
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    # The tests train on the CPU on purpose, also on a machine with a GPU.
    pytest.mark.filterwarnings("ignore:GPU available but not used:UserWarning"),
    pytest.mark.usefixtures("one_thread"),
]


class MemoryLogger(Logger):
    """Keeps what Lightning logs: ``rows`` of ``(step, {tag: value})``."""

    name, version = "memory", 0

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def series(self, tag: str) -> list[tuple[int, float]]:
        return [(step, m[tag]) for step, m in self.rows if tag in m]


def trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    return pl.Trainer(**{**defaults, **kwargs})


def test_import_manualgrad_alone_does_not_import_lightning_or_tensorboard():
    code = (
        "import sys, manualgrad\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('pytorch_lightning', 'lightning', 'lightning_fabric', 'tensorboard', 'jsonargparse')]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the network and the module ---------------------------------------------------------


def test_build_network_backends_share_init_and_state_dict_keys():
    torch.manual_seed(0)
    manual = build_network([2, 8, 8, 1], "relu", "manual")
    torch.manual_seed(0)
    native = build_network([2, 8, 8, 1], "relu", "autograd")
    assert [type(m) for m in manual] == [ManualLinear, nn.ReLU, ManualLinear, nn.ReLU, ManualLinear]
    assert [type(m) for m in native] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    for (k_m, v_m), (k_n, v_n) in zip(
        manual.state_dict().items(), native.state_dict().items(), strict=True
    ):
        assert k_m == k_n
        torch.testing.assert_close(v_m, v_n, rtol=0, atol=0)


@pytest.mark.parametrize(
    "layers, activation, backend, message",
    [
        ([1], "tanh", "manual", "at least two positive sizes"),
        ([1, 0, 1], "tanh", "manual", "at least two positive sizes"),
        ([1, 1], "softmax", "manual", "activation must be one of"),
        ([1, 1], "tanh", "native", "backend must be 'manual' or 'autograd'"),
    ],
)
def test_bad_model_options_raise_value_error(layers, activation, backend, message):
    with pytest.raises(ValueError, match=message):
        Regressor(layers=layers, activation=activation, backend=backend)


def test_loss_module_follows_backend():
    assert type(Regressor(backend="manual").loss_fn) is ManualMSELoss
    assert type(Regressor(backend="autograd").loss_fn) is nn.MSELoss


def test_manual_and_autograd_backends_train_to_the_same_parameters():
    """Same seed, same data, 30 Adam steps: the hand-derived gradients steer exactly as
    autograd's do."""
    final = {}
    for backend in ("manual", "autograd"):
        pl.seed_everything(0, verbose=False)
        model = Regressor(
            layers=[1, 16, 16, 1],
            backend=backend,
            optimizer=functools.partial(torch.optim.Adam, lr=0.01),
        )
        trainer(max_steps=30, limit_val_batches=0).fit(model, SineData(size=200, batch_size=32))
        final[backend] = model.net.state_dict()
    for key, value in final["manual"].items():
        torch.testing.assert_close(value, final["autograd"][key], rtol=1e-5, atol=1e-6)


def test_logged_values_match_a_hand_computed_first_step():
    """Full-batch GD on the tutorial data: the first step's loss, gradient norm, and updated
    weight and bias are what plain autograd computes from the same initial weights."""
    data = LinearData()
    data.setup("fit")
    x, y = data._data()["train"].tensors  # (80, 1), (80, 1)
    pl.seed_everything(0, verbose=False)
    model = Regressor(optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    w0, b0 = (p.detach().clone().requires_grad_() for p in (model.net[0].weight, model.net[0].bias))
    loss = nn.functional.mse_loss(x @ w0.t() + b0, y)
    g_w, g_b = torch.autograd.grad(loss, (w0, b0))

    logger = MemoryLogger()
    trainer(max_epochs=2, logger=logger).fit(model, data)

    step0 = dict(logger.rows[0][1])
    assert logger.rows[0][0] == 0
    assert step0["train/loss"] == pytest.approx(loss.item(), rel=1e-6)
    grad_norm = torch.cat([g_w.flatten(), g_b]).norm().item()
    assert step0["train/grad_norm"] == pytest.approx(grad_norm, rel=1e-6)
    assert step0["params/weight"] == pytest.approx((w0 - 0.1 * g_w).item(), rel=1e-6)
    assert step0["params/bias"] == pytest.approx((b0 - 0.1 * g_b).item(), rel=1e-6)
    val = logger.series("val/loss")
    assert [step for step, _ in val] == [0, 1]  # once per epoch, at the epoch's last step
    with torch.no_grad():
        x_val, y_val = data._data()["val"].tensors
        expected = nn.functional.mse_loss(model(x_val), y_val).item()
    assert val[-1][1] == pytest.approx(expected, rel=1e-6)


def test_mlp_logs_no_weight_or_bias_scalars():
    logger = MemoryLogger()
    model = Regressor(layers=[1, 4, 1])
    trainer(max_steps=2, logger=logger, limit_val_batches=0).fit(model, SineData(size=50))
    tags = {tag for _, metrics in logger.rows for tag in metrics}
    assert {"train/loss", "train/grad_norm"} <= tags
    assert not {t for t in tags if "weight" in t or "bias" in t}


def test_hyperparameters_are_saved_in_the_checkpoint(tmp_path):
    model = Regressor(layers=[1, 3, 1], activation="relu", backend="autograd")
    run = trainer(max_steps=1, limit_val_batches=0, default_root_dir=tmp_path)
    run.fit(model, SineData(size=20))
    path = tmp_path / "model.ckpt"
    run.save_checkpoint(path)
    hparams = torch.load(path, weights_only=False)["hyper_parameters"]
    assert hparams["layers"] == [1, 3, 1]
    assert hparams["activation"] == "relu"
    assert hparams["backend"] == "autograd"


def test_optimizer_and_scheduler_callables():
    model = Regressor(
        optimizer=functools.partial(torch.optim.Adam, lr=0.02),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=3),
    )
    config = model.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.Adam)
    assert config["optimizer"].defaults["lr"] == 0.02
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    plateau = Regressor(lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert plateau.configure_optimizers()["lr_scheduler"]["monitor"] == "val/loss"
    assert isinstance(Regressor().configure_optimizers(), torch.optim.SGD)


def test_layer_sizes_must_match_the_data(csv_path):
    model = Regressor(layers=[1, 1])
    data = write_csv(csv_path, ["a", "b", "y"], [[1, 2, 3], [2, 3, 4], [3, 4, 5]])
    with pytest.raises(ValueError, match=r"model.layers \[1, 1\] has 1 inputs.*has 2"):
        trainer(max_steps=1).fit(model, CSVData(data, "y", batch_size=2, val_fraction=0.34))


# --- data modules -----------------------------------------------------------------------


def write_csv(path, header, rows) -> str:
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def csv_path(tmp_path):
    return tmp_path / "table.csv"


def test_linear_data_is_the_tutorial_line():
    data = LinearData()
    splits = data._data()
    x, y = splits["all"].tensors
    assert x.shape == y.shape == (100, 1)
    assert 0.0 <= x.min() and x.max() <= 5.0
    residual = y - (3.0 * x + 2.0)
    assert residual.std().item() == pytest.approx(0.1, rel=0.25)
    assert len(splits["train"]) == 80 and len(splits["val"]) == 20
    rows = {tuple(r) for r in torch.cat(splits["train"].tensors, 1).tolist()}
    assert not rows & {tuple(r) for r in torch.cat(splits["val"].tensors, 1).tolist()}
    torch.testing.assert_close(LinearData()._data()["train"].tensors[0], splits["train"].tensors[0])
    assert not torch.equal(LinearData(seed=1)._data()["all"].tensors[0], x)
    other = LinearData(slope=-1.0, intercept=0.5, noise=0.0, size=10, low=-2.0, high=-1.0)
    x2, y2 = other._data()["all"].tensors
    assert x2.shape == (10, 1) and -2.0 <= x2.min() and x2.max() <= -1.0
    torch.testing.assert_close(y2, -x2 + 0.5)
    assert TutorialData()._data()["all"].tensors[1].equal(y)


def test_sine_data():
    x, y = SineData(noise=0.0, size=64)._data()["all"].tensors
    assert x.shape == (64, 1)
    torch.testing.assert_close(y, torch.sin(x))


def test_epoch_shuffle_depends_only_on_seed_and_epoch():
    sampler = EpochShuffle(10, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(10))
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    again = EpochShuffle(10, seed=3)
    again.set_epoch(1)
    assert list(again) == list(sampler)


def test_csv_data_reads_features_and_target(csv_path):
    write_csv(csv_path, ["a", "y", "b"], [[1, 10, 2], [3, 30, 4], [5, 50, 6], [7, 70, 8]])
    data = CSVData(str(csv_path), "y", val_fraction=0.25)
    data.setup("fit")
    assert data.feature_names == ["a", "b"]
    x, y = data._data()["all"].tensors
    torch.testing.assert_close(x, torch.tensor([[1.0, 2], [3, 4], [5, 6], [7, 8]]))
    torch.testing.assert_close(y, torch.tensor([[10.0], [30], [50], [70]]))
    assert (data.num_features, data.num_targets) == (2, 1)
    only_b = CSVData(str(csv_path), "y", features=["b"], val_fraction=0.25)
    torch.testing.assert_close(
        only_b._data()["all"].tensors[0], torch.tensor([[2.0], [4], [6], [8]])
    )


def test_csv_missing_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        CSVData(str(missing), "y").setup("fit")


@pytest.mark.parametrize(
    "header, rows, target, features, message",
    [
        (["a", "y"], [[1, 2]], "price", None, r"table.csv: no column 'price'; the columns are"),
        (["a", "y"], [[1, 2]], "y", ["a", "c"], r"table.csv: no column 'c'"),
        (["a", "y"], [[1, 2], ["x1", 3]], "y", None, r"table.csv, line 3, column 'a': 'x1' is not"),
        (["a", "y"], [[1, 2], [2, "nan"]], "y", None, r"line 3, column 'y': 'nan' is not a finite"),
        (["a", "y"], [[1, 2], [2, "inf"]], "y", None, r"column 'y': 'inf' is not a finite"),
        (["a", "y"], [[1, 2], ["", 3]], "y", None, r"line 3, column 'a': empty cell"),
        (["a", "y"], [[1, 2], [1, 2, 3]], "y", None, r"line 3: 3 fields, but the header has 2"),
        (["a", "y"], [[1, 2]], "y", ["a", "y"], r"'y' is the target and cannot be a feature"),
        (["y"], [[1]], "y", None, r"no feature columns"),
        (["a", "y"], [], "y", None, r"no data rows"),
    ],
)
def test_csv_bad_tables_name_file_and_column(csv_path, header, rows, target, features, message):
    write_csv(csv_path, header, rows)
    with pytest.raises(ValueError, match=message):
        CSVData(str(csv_path), target, features=features).setup("fit")


def test_csv_empty_file(csv_path):
    csv_path.write_text("")
    with pytest.raises(ValueError, match="table.csv: empty file"):
        CSVData(str(csv_path), "y").setup("fit")


@pytest.mark.parametrize(
    "kwargs, message",
    [({"batch_size": 0}, "batch_size"), ({"val_fraction": 1.0}, "val_fraction")],
)
def test_bad_split_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SineData(**kwargs)


# --- the gradient audit -----------------------------------------------------------------


def test_native_twin_swaps_classes_keeps_sharing_and_values():
    shared = ManualLinear(3, 3)
    net = nn.Sequential(shared, nn.Tanh(), shared, ManualLinear(3, 1), ManualMSELoss())
    twin = native_twin(net)
    assert [type(m) for m in twin] == [nn.Linear, nn.Tanh, nn.Linear, nn.Linear, nn.MSELoss]
    assert twin[0] is twin[2]
    assert type(net[0]) is ManualLinear  # the original is untouched
    x = torch.randn(5, 3)
    torch.testing.assert_close(twin[:4](x), net[:4](x))


def audited_fit(every_n_steps: int, steps: int = 10) -> tuple[GradientAudit, MemoryLogger]:
    pl.seed_everything(0, verbose=False)
    audit, logger = GradientAudit(every_n_steps=every_n_steps), MemoryLogger()
    model = Regressor(layers=[1, 8, 8, 1])
    trainer(max_steps=steps, logger=logger, callbacks=[audit], limit_val_batches=0).fit(
        model, SineData(size=200)
    )
    return audit, logger


def test_audit_logs_tiny_differences_on_the_requested_steps():
    audit, logger = audited_fit(every_n_steps=3)
    abs_diffs = logger.series("audit/grad_max_abs_diff")
    rel_diffs = logger.series("audit/grad_max_rel_diff")
    assert [step for step, _ in abs_diffs] == [0, 3, 6, 9]
    assert [step for step, _ in rel_diffs] == [0, 3, 6, 9]
    assert max(v for _, v in abs_diffs) < 1e-6
    assert max(v for _, v in rel_diffs) < 1e-5


def test_audit_catches_a_wrong_backward(monkeypatch):
    backward = ManualLinearFunction.backward

    def wrong(ctx, grad_output):  # dL/dW off by a factor 1.5
        grad_input, grad_weight, grad_bias = backward(ctx, grad_output)
        return grad_input, None if grad_weight is None else 1.5 * grad_weight, grad_bias

    monkeypatch.setattr(ManualLinearFunction, "backward", staticmethod(wrong))
    audit, logger = audited_fit(every_n_steps=5)
    rel_diffs = [v for _, v in logger.series("audit/grad_max_rel_diff")]
    assert len(rel_diffs) == 2
    assert all(v == pytest.approx(0.5, rel=1e-4) for v in rel_diffs)
    assert audit.last["grad_max_abs_diff"] > 1e-3


def test_audit_off_does_nothing():
    audit, logger = audited_fit(every_n_steps=0, steps=3)
    assert audit._twin is None and audit.last is None
    assert not [m for _, m in logger.rows if any(t.startswith("audit/") for t in m)]


def test_audit_rejects_bad_settings():
    with pytest.raises(ValueError, match="every_n_steps"):
        GradientAudit(every_n_steps=-1)

    class NoNet(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(TypeError, match="needs a model with `net` and `loss_fn`"):
        trainer(max_steps=1, callbacks=[GradientAudit(1)]).fit(
            NoNet(), train_dataloaders=SineData(size=10).train_dataloader()
        )
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        trainer(max_steps=1, callbacks=[GradientAudit(1)], accumulate_grad_batches=2).fit(
            Regressor(), SineData(size=10)
        )
