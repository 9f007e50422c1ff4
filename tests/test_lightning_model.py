"""The LightningModules (manualgrad/lightning/model.py): Regressor and Classifier on either
backend, what they log, and that the manual backend leaves no native math in the backward."""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from helpers_lightning import LIGHTNING_MARKS, MemoryLogger, needs_manual, trainer
from torch import nn

from manualgrad import ManualLinear, ManualMSELoss
from manualgrad.check import backward_coverage
from manualgrad.lightning import (
    Classifier,
    CSVData,
    LinearData,
    Regressor,
    SineData,
    SpiralData,
    build_network,
)
from manualgrad.lightning.model import ACTIVATIONS
from manualgrad.registry import MANUAL_CLASSES

pytestmark = LIGHTNING_MARKS


def test_import_manualgrad_alone_does_not_import_lightning_or_tensorboard():
    code = (
        "import sys, manualgrad\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('pytorch_lightning', 'lightning', 'lightning_fabric', 'tensorboard', 'jsonargparse')]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the network and the backends ---------------------------------------------------------


def manual_type(native: type) -> type:
    """The class the manual backend gives a module of class ``native``: the table's."""
    return MANUAL_CLASSES.get(native, native)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_build_network_backends_share_init_and_state_dict_keys(activation):
    torch.manual_seed(0)
    manual = build_network([2, 8, 8, 1], activation, "manual")
    torch.manual_seed(0)
    native = build_network([2, 8, 8, 1], activation, "native")
    act = ACTIVATIONS[activation]
    assert [type(m) for m in native] == [nn.Linear, act, nn.Linear, act, nn.Linear]
    assert [type(m) for m in manual] == [manual_type(type(m)) for m in native]
    assert type(manual[0]) is ManualLinear
    for (k_m, v_m), (k_n, v_n) in zip(
        manual.state_dict().items(), native.state_dict().items(), strict=True
    ):
        assert k_m == k_n
        torch.testing.assert_close(v_m, v_n, rtol=0, atol=0)


@pytest.mark.parametrize("model_class", [Regressor, Classifier])
def test_autograd_is_an_alias_of_native_and_gives_the_identical_model(model_class):
    models = {}
    for backend in ("native", "autograd"):
        torch.manual_seed(0)
        models[backend] = model_class(layers=[2, 8, 3], backend=backend)
    native, alias = models["native"], models["autograd"]
    assert [type(m) for m in alias.modules()] == [type(m) for m in native.modules()]
    assert type(native.net[0]) is nn.Linear and type(native.loss_fn) is model_class.native_loss
    for (k_a, v_a), (k_n, v_n) in zip(
        alias.state_dict().items(), native.state_dict().items(), strict=True
    ):
        assert k_a == k_n
        torch.testing.assert_close(v_a, v_n, rtol=0, atol=0)
    x = torch.randn(4, 2)
    torch.testing.assert_close(alias(x), native(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "layers, activation, backend, message",
    [
        ([1], "tanh", "manual", "at least two positive sizes"),
        ([1, 0, 1], "tanh", "manual", "at least two positive sizes"),
        ([1, 1], "softmax", "manual", "activation must be one of"),
        ([1, 1], "tanh", "torch", r"backend must be 'manual' or 'native' \('autograd' is an"),
    ],
)
def test_bad_model_options_raise_value_error(layers, activation, backend, message):
    for model_class in (Regressor, Classifier):
        with pytest.raises(ValueError, match=message):
            model_class(layers=layers, activation=activation, backend=backend)


def test_loss_module_follows_backend():
    assert type(Regressor(backend="manual").loss_fn) is ManualMSELoss
    assert type(Regressor(backend="native").loss_fn) is nn.MSELoss
    assert type(Regressor(backend="autograd").loss_fn) is nn.MSELoss
    manual_ce = manual_type(nn.CrossEntropyLoss)
    assert type(Classifier(backend="manual").loss_fn) is manual_ce
    assert type(Classifier(backend="native").loss_fn) is nn.CrossEntropyLoss


@pytest.mark.parametrize(
    "model, data",
    [
        (functools.partial(Regressor, layers=[1, 16, 16, 1]), SineData(size=200, batch_size=32)),
        (functools.partial(Classifier, layers=[2, 16, 3]), SpiralData(batch_size=32)),
    ],
    ids=["Regressor", "Classifier"],
)
def test_manual_and_native_backends_train_to_the_same_parameters(model, data):
    """Same seed, same data, 30 Adam steps: the hand-derived gradients steer exactly as
    autograd's do."""
    final = {}
    for backend in ("manual", "native"):
        pl.seed_everything(0, verbose=False)
        adam = functools.partial(torch.optim.Adam, lr=0.01)
        net = model(backend=backend, optimizer=adam)
        trainer(max_steps=30, limit_val_batches=0).fit(net, data)
        final[backend] = net.net.state_dict()
    for key, value in final["manual"].items():
        torch.testing.assert_close(value, final["native"][key], rtol=1e-5, atol=1e-6)


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


def test_classifier_logs_cross_entropy_and_accuracy():
    """Two epochs of batches of 40 on the spiral: the logged per-step training loss and
    accuracy are those of the step's batch, the epoch's validation values those of the whole
    held-out split."""
    pl.seed_everything(0, verbose=False)
    model = Classifier(layers=[2, 16, 3], optimizer=functools.partial(torch.optim.Adam, lr=0.05))
    data = SpiralData(batch_size=40)
    logger = MemoryLogger()
    trainer(max_epochs=2, logger=logger).fit(model, data)
    tags = {tag for _, metrics in logger.rows for tag in metrics}
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "train/grad_norm"} <= tags
    assert [s for s, _ in logger.series("train/acc")] == list(range(12))  # 240 rows / 40
    assert all(0.0 <= v <= 1.0 for _, v in logger.series("train/acc"))
    x, y = data._data()["val"].tensors  # (60, 2), (60,)
    with torch.no_grad():
        logits = model(x)  # (60, 3)
    accuracy = (logits.argmax(-1) == y).float().mean().item()
    assert logger.series("val/acc")[-1][1] == pytest.approx(accuracy)
    cross_entropy = nn.functional.cross_entropy(logits, y).item()
    assert logger.series("val/loss")[-1][1] == pytest.approx(cross_entropy, rel=1e-5)


def test_a_classifier_learns_a_csv_class_column(tmp_path):
    """Two classes on either side of the line a + b = 0, as integer labels in a CSV column."""
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    label = (x.sum(1) > 0).long()
    rows = [f"{a:.4f},{b:.4f},{c}" for (a, b), c in zip(x.tolist(), label.tolist(), strict=True)]
    path = tmp_path / "classes.csv"
    path.write_text("a,b,side\n" + "\n".join(rows) + "\n")
    data = CSVData(str(path), "side", task="classification", batch_size=40)
    pl.seed_everything(0, verbose=False)
    model = Classifier(layers=[2, 8, 2], optimizer=functools.partial(torch.optim.Adam, lr=0.05))
    logger = MemoryLogger()
    trainer(max_epochs=10, logger=logger).fit(model, data)
    assert logger.series("val/acc")[-1][1] >= 0.95


def test_hyperparameters_are_saved_in_the_checkpoint(tmp_path):
    model = Regressor(layers=[1, 3, 1], activation="relu", backend="native")
    run = trainer(max_steps=1, limit_val_batches=0, default_root_dir=tmp_path)
    run.fit(model, SineData(size=20))
    path = tmp_path / "model.ckpt"
    run.save_checkpoint(path)
    hparams = torch.load(path, weights_only=False)["hyper_parameters"]
    assert hparams["layers"] == [1, 3, 1]
    assert hparams["activation"] == "relu"
    assert hparams["backend"] == "native"


def test_optimizer_and_scheduler_callables():
    model = Regressor(
        optimizer=functools.partial(torch.optim.Adam, lr=0.02),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=3),
    )
    config = model.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.Adam)
    assert config["optimizer"].defaults["lr"] == 0.02
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    plateau = Classifier(lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert plateau.configure_optimizers()["lr_scheduler"]["monitor"] == "val/loss"
    assert isinstance(Regressor().configure_optimizers(), torch.optim.SGD)


def test_layer_sizes_and_target_kind_must_match_the_data(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("a,b,y\n1,2,3\n2,3,4\n3,4,5\n")
    with pytest.raises(ValueError, match=r"model.layers \[1, 1\] has 1 inputs.*has 2"):
        trainer(max_steps=1).fit(Regressor(layers=[1, 1]), CSVData(str(path), "y", batch_size=2))
    with pytest.raises(ValueError, match=r"model.layers \[2, 8, 4\] has 4 outputs.*has 3"):
        trainer(max_steps=1).fit(Classifier(layers=[2, 8, 4]), SpiralData())
    with pytest.raises(ValueError, match=r"Regressor cannot learn class labels.*--model Class"):
        trainer(max_steps=1).fit(Regressor(layers=[2, 3]), SpiralData())
    with pytest.raises(ValueError, match=r"Classifier cannot learn numeric targets.*--model Regr"):
        trainer(max_steps=1).fit(Classifier(layers=[1, 3]), SineData(size=20))


# --- every op hand-derived ----------------------------------------------------------------


def coverage_of_a_training_step(model: pl.LightningModule, data: pl.LightningDataModule):
    """The backward coverage of the loss that the model's first training step returns (the
    loss Lightning then divides by the accumulation count, 1, and runs backward on)."""
    losses = []
    training_step = model.training_step

    def keeping_the_loss(batch, batch_idx):
        losses.append(training_step(batch, batch_idx))
        return losses[-1]

    model.training_step = keeping_the_loss
    trainer(max_steps=1, limit_val_batches=0).fit(model, data)
    return backward_coverage(losses[0])


def test_the_tutorial_neuron_is_hand_derived_throughout():
    coverage = coverage_of_a_training_step(Regressor(), LinearData())
    assert coverage.complete, str(coverage)
    assert coverage.hand_derived == {"ManualLinearFunction": 1, "ManualMSEFunction": 1}
    assert str(coverage) == "hand-derived 2 of 2 backward nodes; native: none"


@pytest.mark.parametrize(
    "activation",
    [pytest.param(a, marks=needs_manual(cls)) for a, cls in sorted(ACTIVATIONS.items())],
)
def test_manual_regressor_leaves_no_native_math_in_the_backward(activation):
    model = Regressor(layers=[1, 8, 8, 1], activation=activation)
    coverage = coverage_of_a_training_step(model, SineData(size=50))
    assert coverage.complete and coverage.native == {}, str(coverage)
    assert str(coverage).endswith("backward nodes; native: none")
    assert sum(coverage.hand_derived.values()) >= 6  # 3 Linear, 2 activations, the loss


@pytest.mark.parametrize(
    "activation",
    [
        pytest.param(a, marks=needs_manual(cls, nn.CrossEntropyLoss))
        for a, cls in sorted(ACTIVATIONS.items())
    ],
)
def test_manual_classifier_leaves_no_native_math_in_the_backward(activation):
    model = Classifier(layers=[2, 16, 3], activation=activation)
    coverage = coverage_of_a_training_step(model, SpiralData())
    assert coverage.complete and coverage.native == {}, str(coverage)
    assert sum(coverage.hand_derived.values()) >= 4  # 2 Linear, 1 activation, the loss


def test_native_backend_is_native_throughout():
    coverage = coverage_of_a_training_step(
        Classifier(layers=[2, 16, 3], backend="native"), SpiralData()
    )
    assert coverage.hand_derived == {} and not coverage.complete
    assert coverage.native  # the Linear layers' AddmmBackward0 at least
