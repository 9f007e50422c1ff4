"""The gradient audit (manualgrad/lightning/callbacks/audit.py): the native twin from the one
table, differences and backward coverage logged on the requested steps, for any model with
``net`` and ``loss_fn``; and an op registered in the table alone, picked up by the Lightning
backends, the audit and the gradient check."""

from __future__ import annotations

import copy
import functools

import pytest
import pytorch_lightning as pl
import torch
from helpers_lightning import LIGHTNING_MARKS, MemoryLogger, needs_manual, trainer
from helpers_registry import FACTOR, Exp, ManualExp
from torch import nn

import manualgrad
from manualgrad import ManualLinear, ManualLinearFunction, ManualMSELoss, registry
from manualgrad.lightning import (
    Classifier,
    GradientAudit,
    Regressor,
    SineData,
    SpiralData,
    native_twin,
)
from manualgrad.lightning import model as lightning_model

pytestmark = LIGHTNING_MARKS


def test_native_twin_swaps_classes_keeps_sharing_and_values():
    shared = ManualLinear(3, 3)
    net = nn.Sequential(shared, nn.Tanh(), shared, ManualLinear(3, 1), ManualMSELoss())
    twin = native_twin(net)
    assert [type(m) for m in twin] == [nn.Linear, nn.Tanh, nn.Linear, nn.Linear, nn.MSELoss]
    assert twin[0] is twin[2]
    assert type(net[0]) is ManualLinear  # the original is untouched
    x = torch.randn(5, 3)
    torch.testing.assert_close(twin[:4](x), net[:4](x))


def audited_fit(
    every_n_steps: int, steps: int = 10, model: pl.LightningModule | None = None, data=None
) -> tuple[GradientAudit, MemoryLogger]:
    pl.seed_everything(0, verbose=False)
    audit, logger = GradientAudit(every_n_steps=every_n_steps), MemoryLogger()
    model = model or Regressor(layers=[1, 8, 8, 1])
    trainer(max_steps=steps, logger=logger, callbacks=[audit], limit_val_batches=0).fit(
        model, data or SineData(size=200)
    )
    return audit, logger


def test_audit_logs_tiny_differences_and_the_coverage_on_the_requested_steps():
    audit, logger = audited_fit(every_n_steps=3)
    abs_diffs = logger.series("audit/grad_max_abs_diff")
    rel_diffs = logger.series("audit/grad_max_rel_diff")
    assert [step for step, _ in abs_diffs] == [0, 3, 6, 9]
    assert [step for step, _ in rel_diffs] == [0, 3, 6, 9]
    assert max(v for _, v in abs_diffs) < 1e-6
    assert max(v for _, v in rel_diffs) < 1e-5
    hand, native = (
        logger.series(f"audit/{k}") for k in ("hand_derived_nodes", "native_math_nodes")
    )
    assert [step for step, _ in hand] == [step for step, _ in native] == [0, 3, 6, 9]
    # 3 Linear layers and the loss, and one node per tanh until ManualTanh is registered
    tanh = 2 * (nn.Tanh in registry.MANUAL_CLASSES)
    assert {v for _, v in hand} == {4.0 + tanh} and {v for _, v in native} == {2.0 - tanh}
    coverage = audit.last["coverage"]
    assert coverage.startswith(f"hand-derived {4 + tanh} of 6 backward nodes; native: ")
    assert coverage.endswith("none" if tanh else "TanhBackward0 x2")


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


def test_audit_of_a_classifier_trained_on_cross_entropy():
    model = Classifier(layers=[2, 16, 3], optimizer=functools.partial(torch.optim.Adam, lr=0.01))
    audit, logger = audited_fit(every_n_steps=2, steps=6, model=model, data=SpiralData())
    assert type(audit._twin[1]) is nn.CrossEntropyLoss  # the loss's twin, from the table
    rel_diffs = logger.series("audit/grad_max_rel_diff")
    assert [step for step, _ in rel_diffs] == [0, 2, 4]
    assert max(v for _, v in rel_diffs) < 1e-5
    assert audit.last["hand_derived_nodes"] >= 2  # the two Linear layers at least


@needs_manual(nn.Tanh, nn.CrossEntropyLoss)
def test_audit_of_a_manual_classifier_reads_no_native_math():
    model = Classifier(layers=[2, 16, 3], activation="tanh")
    audit, logger = audited_fit(every_n_steps=1, steps=3, model=model, data=SpiralData())
    assert [v for _, v in logger.series("audit/native_math_nodes")] == [0.0, 0.0, 0.0]
    assert audit.last["coverage"].endswith("backward nodes; native: none")
    assert audit.last["grad_max_rel_diff"] < 1e-5


def test_audit_replays_dropout_and_leaves_the_random_state_of_training():
    """With dropout in the network, the twin draws the training step's mask (the audit reads
    ~0), and the audit's own forwards take nothing from the random stream: training with and
    without the audit ends at the same weights."""

    def with_dropout() -> Regressor:
        pl.seed_everything(0, verbose=False)
        model = Regressor(layers=[1, 16, 1])
        net = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 1))
        model.net = manualgrad.replace_modules(net)
        return model

    audited = with_dropout()
    audit, logger = audited_fit(every_n_steps=1, steps=6, model=audited)
    assert max(v for _, v in logger.series("audit/grad_max_rel_diff")) < 1e-5
    plain = with_dropout()
    audited_fit(every_n_steps=0, steps=6, model=plain)
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(audited.state_dict()[key], value, rtol=0, atol=0)


# --- an op registered in the table alone ----------------------------------------------------


@pytest.fixture
def exp_activation(monkeypatch):
    """``activation="exp"`` offered by the models; the table is left as it is."""
    monkeypatch.setitem(lightning_model.ACTIVATIONS, "exp", Exp)
    monkeypatch.setitem(FACTOR, "backward", 1.0)


@pytest.fixture
def exp_registered(exp_activation, monkeypatch):
    """``Exp -> ManualExp`` in the one table, for this test alone."""
    monkeypatch.setitem(registry.MANUAL_CLASSES, Exp, ManualExp)


def exp_regressor(backend: str = "manual") -> Regressor:
    pl.seed_everything(0, verbose=False)
    return Regressor(layers=[1, 8, 1], activation="exp", backend=backend)


def test_an_op_registered_in_the_table_alone_is_trained_audited_and_checked(exp_registered):
    model = exp_regressor()
    assert [type(m) for m in model.net] == [ManualLinear, ManualExp, ManualLinear]
    assert [type(m) for m in exp_regressor("native").net] == [nn.Linear, Exp, nn.Linear]
    twin = native_twin(model.net)
    assert [type(m) for m in twin] == [nn.Linear, Exp, nn.Linear]

    audit, logger = audited_fit(every_n_steps=2, steps=6, model=model, data=SineData(size=64))
    assert [s for s, _ in logger.series("audit/grad_max_rel_diff")] == [0, 2, 4]
    assert max(v for _, v in logger.series("audit/grad_max_rel_diff")) < 1e-5
    assert {v for _, v in logger.series("audit/native_math_nodes")} == {0.0}
    assert audit.last["coverage"] == "hand-derived 4 of 4 backward nodes; native: none"

    # The core tools read the same table: conversion both ways and the gradient check.
    x, y = SineData(size=64)._data()["all"].tensors
    report = manualgrad.check_gradients(model.net, x, target=y, loss_fn=model.loss_fn)
    assert report.passed, str(report)
    assert report.backward_calls == {
        "ManualMSEFunction": 1,
        "ManualLinearFunction": 2,
        "ExpFunction": 1,
    }
    native = manualgrad.restore_modules(copy.deepcopy(model.net))
    assert [type(m) for m in native] == [nn.Linear, Exp, nn.Linear]
    assert [type(m) for m in manualgrad.replace_modules(native)] == [
        ManualLinear,
        ManualExp,
        ManualLinear,
    ]


def test_the_audit_catches_a_wrong_derivation_of_the_registered_op(exp_registered, monkeypatch):
    monkeypatch.setitem(FACTOR, "backward", 2.0)
    audit, _ = audited_fit(every_n_steps=1, steps=1, model=exp_regressor(), data=SineData(size=64))
    assert audit.last["grad_max_rel_diff"] > 0.1
    x, y = SineData(size=64)._data()["all"].tensors
    model = exp_regressor()
    assert not manualgrad.check_gradients(model.net, x, target=y, loss_fn=model.loss_fn).passed


def test_without_its_row_the_op_stays_native_and_the_audit_says_so(exp_activation):
    model = exp_regressor()
    assert [type(m) for m in model.net] == [ManualLinear, Exp, ManualLinear]
    audit, logger = audited_fit(every_n_steps=1, steps=2, model=model, data=SineData(size=64))
    assert {v for _, v in logger.series("audit/native_math_nodes")} == {1.0}
    assert audit.last["coverage"] == "hand-derived 3 of 4 backward nodes; native: ExpBackward0 x1"
