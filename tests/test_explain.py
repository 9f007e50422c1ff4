"""manualgrad.explain and ``manualgrad explain``: the backward pass op by op, with each op's
derivation checked alone against native autograd (manualgrad/explain*.py,
manualgrad/lightning/explain_cli.py, the audit's TensorBoard tags)."""

from __future__ import annotations

import sys

import pytest
import pytorch_lightning as pl
import torch
from conftest import EXPERIMENTS, wrong_twin
from helpers_lightning import LIGHTNING_MARKS, trainer
from helpers_registry import FACTOR, ManualExp
from torch import nn

import manualgrad
from manualgrad import ManualLinear, ManualLinearFunction, ManualMSELoss, ManualTanhFunction
from manualgrad.ops import _apply, activations

pytestmark = LIGHTNING_MARKS

CONFIGS = sorted(p.name for p in EXPERIMENTS.glob("*.yaml"))

#: the Functions that declare their formulas (``formulas``, beside their derivation)
DECLARED = """
    ManualCrossEntropyFunction ManualDropoutFunction ManualDropoutInplaceFunction
    ManualEmbeddingFunction ManualGELUFunction ManualLayerNormFunction ManualLinearFunction
    ManualLogSoftmaxFunction ManualMSEFunction ManualNLLLossFunction ManualReLUFunction
    ManualSiLUFunction ManualSigmoidFunction ManualSoftmaxFunction ManualTanhFunction
""".split()


def neuron(w: float, b: float) -> ManualLinear:
    layer = ManualLinear(1, 1)
    with torch.no_grad():
        layer.weight.fill_(w)
        layer.bias.fill_(b)
    return layer


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return manualgrad.replace_modules(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)))


# ---- the API -----------------------------------------------------------------------------


def test_the_tutorial_neuron_by_the_numbers():
    x, y = torch.tensor([[3.0]]), torch.tensor([[10.0]])
    e = manualgrad.explain(neuron(2.0, 1.0), x, target=y, loss_fn=ManualMSELoss())
    assert e.passed and e.loss == 9.0
    assert [r.op for r in e.rows] == ["ManualMSEFunction", "ManualLinearFunction"]
    assert [r.module for r in e.rows] == ["loss_fn", "<model>"]
    assert e.gradients["weight"].item() == -18.0 and e.gradients["bias"].item() == -6.0
    text = str(e)
    for line in [
        "y_hat = ManualLinearFunction(x = 3, w = 2, b = 1) = 7",
        "L = ManualMSEFunction(y_hat = 7, y = 10, reduction = 'mean') = 9",
        "dL/dL = 1",
        "dL/dy_hat = dL/dL * dL/dy_hat = 1 * (-6) = -6",
        "dL/dw = dL/dy_hat * dy_hat/dw = -6 * 3 = -18",
        "dL/db = dL/dy_hat * dy_hat/db = -6 * 1 = -6",
    ]:
        assert line in text


def test_the_numbers_come_from_the_tensors_not_a_template():
    x, y = torch.tensor([[2.0]]), torch.tensor([[1.0]])
    text = str(manualgrad.explain(neuron(-1.0, 0.5), x, target=y, loss_fn=ManualMSELoss()))
    # y_hat = -1 * 2 + 0.5 = -1.5, L = 6.25, dL/dy_hat = -5, dL/dw = -5 * 2, dL/db = -5
    assert "y_hat = ManualLinearFunction(x = 2, w = -1, b = 0.5) = -1.5" in text
    assert "dL/dy_hat = dL/dL * dL/dy_hat = 1 * (-5) = -5" in text
    assert "dL/dw = dL/dy_hat * dy_hat/dw = -5 * 2 = -10" in text
    assert "dL/db = dL/dy_hat * dy_hat/db = -5 * 1 = -5" in text


def test_rows_in_backward_order_with_formulas_shapes_saved_tensors_and_local_checks():
    model, x, y = mlp(), torch.randn(5, 3), torch.randn(5, 2)
    state = torch.get_rng_state()
    e = manualgrad.explain(model, x, target=y, loss_fn=ManualMSELoss())
    assert torch.equal(torch.get_rng_state(), state)
    assert [(r.op, r.module) for r in e.rows] == [
        ("ManualMSEFunction", "loss_fn"),
        ("ManualLinearFunction", "2"),
        ("ManualTanhFunction", "1"),
        ("ManualLinearFunction", "0"),
    ]
    assert e.passed and all(r.ok and r.hand_derived for r in e.rows)
    assert all(r.max_abs_diff < 1e-6 and r.max_rel_diff < 1e-5 for r in e.rows)
    last = e.rows[1]
    assert [g.of for g in last.incoming] == ["output"] and last.incoming[0].shape == (5, 2)
    formed = {g.of: g for g in last.produced}
    assert {k: g.shape for k, g in formed.items()} == {
        "input": (5, 8),
        "weight": (2, 8),
        "bias": (2,),
    }
    # the formulas each Function declares beside its derivation, not copies
    assert {k: g.formula for k, g in formed.items()} == ManualLinearFunction.formulas
    assert formed["weight"].norm == pytest.approx(e.gradients["2.weight"].norm().item())
    assert [(s.name, s.shape, s.dtype, s.bytes) for s in last.saved] == [
        ("input", (5, 8), "float32", 160),
        ("weight", (2, 8), "float32", 64),
    ]
    first_layer = e.rows[3]  # x needs no gradient: dX is not formed, W is not kept
    assert [g.of for g in first_layer.produced] == ["weight", "bias"]
    assert [s.name for s in first_layer.saved] == ["input"]
    # nothing about the model changed
    assert all(p.grad is None for p in model.parameters())
    assert _apply._recorder is None


def test_a_planted_wrong_derivation_is_named_by_op_and_module_and_only_it(monkeypatch):
    monkeypatch.setattr(activations, "_tanh", _apply.ManualOp(wrong_twin(ManualTanhFunction)))
    e = manualgrad.explain(
        mlp(), torch.randn(5, 3), target=torch.randn(5, 2), loss_fn=ManualMSELoss()
    )
    assert not e.passed
    assert [(r.op, r.module) for r in e.failed] == [("WrongManualTanhFunction", "1")]
    (wrong,) = e.failed
    assert wrong.max_rel_diff == pytest.approx(2.0, rel=1e-4)  # 3x native: off by 2x
    # the first layer received a wrong gradient, yet its own derivation checks out
    assert e.rows[3].ok
    assert "WRONG DERIVATION: WrongManualTanhFunction in module 1" in str(e)


def test_a_native_reference_that_cannot_run_is_unchecked_not_a_wrong_derivation(monkeypatch):
    def refuse(*args):
        raise RuntimeError("no reference here")

    monkeypatch.setattr(ManualTanhFunction, "native", staticmethod(refuse), raising=False)
    e = manualgrad.explain(
        mlp(), torch.randn(5, 3), target=torch.randn(5, 2), loss_fn=ManualMSELoss()
    )
    assert not e.passed  # a check that did not run is not a pass
    assert [(r.op, r.module) for r in e.failed] == [("ManualTanhFunction", "1")]
    text = str(e)
    assert "UNCHECKED: ManualTanhFunction in module 1: native reference failed: " in text
    assert "no reference here" in text and "WRONG" not in text


def test_native_ops_are_listed_as_native_rows():
    torch.manual_seed(0)
    model = nn.Sequential(ManualLinear(3, 4), nn.Tanh(), ManualLinear(4, 1))
    e = manualgrad.explain(
        model, torch.randn(6, 3), target=torch.randn(6, 1), loss_fn=ManualMSELoss()
    )
    assert [(r.op, r.module, r.hand_derived) for r in e.rows] == [
        ("ManualMSEFunction", "loss_fn", True),
        ("ManualLinearFunction", "2", True),
        ("TanhBackward0", "1", False),
        ("ManualLinearFunction", "0", True),
    ]
    native = e.rows[2]
    assert native.ok and native.max_abs_diff is None and native.note == "native"
    assert [s.name for s in native.saved] == ["result"]  # what native's tanh node keeps
    assert e.passed and "TanhBackward0" in str(e)


def test_without_a_loss_the_output_is_contracted_with_a_fixed_random_tensor():
    e = manualgrad.explain(mlp(), torch.randn(4, 3))
    assert [r.op for r in e.rows[:2]] == ["SumBackward0", "MulBackward0"]
    assert e.passed and e.rows[2].op == "ManualLinearFunction"


def test_a_function_without_formulas_says_so_and_is_still_checked(monkeypatch):
    model = nn.Sequential(ManualLinear(2, 3), ManualExp())
    e = manualgrad.explain(model, torch.randn(4, 2))
    exp = next(r for r in e.rows if r.op == "ExpFunction")
    assert exp.ok and exp.produced[0].formula is None and "no formula declared" in exp.note
    assert "no formula declared" in str(e)
    monkeypatch.setitem(FACTOR, "backward", 2.0)
    e = manualgrad.explain(model, torch.randn(4, 2))
    assert [r.op for r in e.failed] == ["ExpFunction"]


def test_every_op_is_checked_locally_dropout_in_place_ops_and_padding_included():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Embedding(10, 6, padding_idx=0),
        nn.LayerNorm(6),
        nn.Dropout(0.3),
        nn.Linear(6, 6),
        nn.GELU(),
        nn.SiLU(inplace=True),
        nn.Linear(6, 6),
        nn.ReLU(inplace=True),
        nn.Linear(6, 6),
        nn.Sigmoid(),
        nn.Linear(6, 5),
        nn.LogSoftmax(dim=-1),
    )
    manualgrad.replace_modules(model)
    idx = torch.tensor([0, 1, 2, 3, 4, 0])
    target = torch.tensor([0, 1, 2, 3, 1, 0])
    e = manualgrad.explain(model, idx, target=target, loss_fn=manualgrad.ManualNLLLoss())
    assert e.passed, str(e)
    assert all(r.hand_derived for r in e.rows)
    ops = {r.op for r in e.rows}
    assert {"ManualEmbeddingFunction", "ManualDropoutFunction", "ManualSiLUFunction"} <= ops
    x = torch.randn(4, 5, requires_grad=True)
    ce = manualgrad.ManualCrossEntropyLoss(label_smoothing=0.1)
    e = manualgrad.explain(nn.Softmax(dim=-1), x, target=torch.tensor([0, 1, 2, 3]), loss_fn=ce)
    assert e.passed and "input[0]" in e.gradients  # the native softmax: a native row


def test_the_ops_declare_a_formula_for_each_gradient_by_forward_argument():
    from manualgrad.explain_rows import forward_arg_names

    for fn in _apply.HAND_DERIVED:
        formulas = getattr(fn, "formulas", None)
        if formulas is not None:
            assert set(formulas) <= set(forward_arg_names(fn)), fn.__name__
    # the ops declared so far (the newer ones will add theirs: until then they read "no
    # formula declared", as the test above shows)
    for name in DECLARED:
        assert getattr(manualgrad, name).formulas, name


def test_the_recorder_is_removed_when_the_forward_fails():
    def loss_fn(output, target):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        manualgrad.explain(mlp(), torch.randn(2, 3), target=torch.zeros(2, 2), loss_fn=loss_fn)
    assert _apply._recorder is None


def test_on_each_device(device):
    model = mlp().to(device)
    x, y = torch.randn(5, 3, device=device), torch.randn(5, 2, device=device)
    assert manualgrad.explain(model, x, target=y, loss_fn=ManualMSELoss()).passed


# ---- the command line --------------------------------------------------------------------


def test_manualgrad_explain_without_options_prints_the_tutorials_chain_rule(monkeypatch, capsys):
    from manualgrad.lightning import cli

    monkeypatch.setattr(sys, "argv", ["manualgrad", "explain"])
    with pytest.raises(SystemExit) as exit:
        cli.main()
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("manualgrad explain: PASSED (loss 9)")
    assert "dL/dw = dL/dy_hat * dy_hat/dw = -6 * 3 = -18" in out
    assert "dL/db = dL/dy_hat * dy_hat/db = -6 * 1 = -6" in out


@pytest.mark.parametrize("config", CONFIGS)
def test_every_experiment_config_is_explained_and_passes(config, workdir, capsys):
    from manualgrad.lightning.explain_cli import main

    assert main(["--config", f"experiments/{config}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("manualgrad explain: PASSED")
    assert "ManualLinearFunction" in out and " max abs " in out
    assert sorted(p.name for p in workdir.iterdir()) == ["experiments"]  # nothing written


def test_the_command_names_a_planted_wrong_derivation_and_fails(monkeypatch, workdir, capsys):
    from manualgrad.lightning.explain_cli import main

    monkeypatch.setattr(activations, "_tanh", _apply.ManualOp(wrong_twin(ManualTanhFunction)))
    assert main(["--config", "experiments/mlp_sine.yaml"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("manualgrad explain: FAILED")
    wrong = [line for line in out.splitlines() if line.startswith("WRONG DERIVATION")]
    assert [line.split(":")[1].strip() for line in wrong] == [
        "WrongManualTanhFunction in module net.3",
        "WrongManualTanhFunction in module net.1",
    ]


class NoLossFn(pl.LightningModule):
    """A model without ``loss_fn``: its loss is computed inside ``training_step``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = manualgrad.ManualLinear(1, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = manualgrad.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss)
        return loss


def test_a_model_without_loss_fn_is_explained_through_its_training_step(workdir, capsys):
    from manualgrad.lightning.explain_cli import main

    config = workdir / "no_loss_fn.yaml"
    config.write_text("model:\n  class_path: test_explain.NoLossFn\n")
    assert main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("manualgrad explain: PASSED")
    assert "ManualMSEFunction     -  " in out and "ManualLinearFunction  layer" in out


def test_a_bad_config_is_an_error_not_a_failed_check(workdir, capsys):
    from manualgrad.lightning.explain_cli import main

    with pytest.raises(SystemExit) as exit:
        main(["--config", "experiments/no_such_experiment.yaml"])
    assert exit.value.code == 2
    assert "no_such_experiment.yaml" in capsys.readouterr().err


# ---- TensorBoard -------------------------------------------------------------------------


def test_the_audit_logs_per_op_differences_gradient_histograms_and_the_text(tmp_path):
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import (
        HISTOGRAMS,
        SCALARS,
        TENSORS,
        EventAccumulator,
    )

    from manualgrad.lightning import GradientAudit, Regressor, SineData

    pl.seed_everything(0, verbose=False)
    logger = TensorBoardLogger(tmp_path, name="run", version=0, default_hp_metric=False)
    audit = GradientAudit(every_n_steps=2)
    model = Regressor(layers=[1, 4, 1])
    trainer(max_steps=4, logger=logger, callbacks=[audit], limit_val_batches=0).fit(
        model, SineData(size=100, batch_size=20)
    )
    events = EventAccumulator(
        str(tmp_path / "run" / "version_0"), size_guidance={SCALARS: 0, HISTOGRAMS: 0, TENSORS: 0}
    )
    events.Reload()
    tags = events.Tags()
    ops = ["ManualLinearFunction", "ManualMSEFunction", "ManualTanhFunction"]
    for op in ops:
        values = events.Scalars(f"audit/op_max_abs_diff/{op}")
        assert [v.step for v in values] == [0, 2]
        assert max(v.value for v in values) < 1e-6
    assert sorted(t for t in tags[SCALARS] if t.startswith("audit/op_")) == [
        f"audit/op_max_abs_diff/{op}" for op in ops
    ]
    names = [n for n, _ in model.named_parameters()]
    assert sorted(t for t in tags[HISTOGRAMS]) == sorted(f"audit/grad/{n}" for n in names)
    assert [h.step for h in events.Histograms("audit/grad/net.0.weight")] == [0, 2]
    (text,) = events.Tensors("audit/explain/text_summary")  # the first audited step only
    assert text.step == 0
    body = text.tensor_proto.string_val[0].decode()
    assert "manualgrad explain: PASSED" in body and "ManualTanhFunction" in body
    assert audit.explanation.passed
