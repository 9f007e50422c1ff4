"""The one native -> manual table: an op registered there alone is picked up everywhere."""

import pytest
import torch
from helpers_registry import FACTOR, Exp, ManualExp
from torch import nn

import manualgrad
from manualgrad import registry
from manualgrad.check import backward_coverage


@pytest.fixture
def exp_registered(monkeypatch):
    monkeypatch.setitem(registry.MANUAL_CLASSES, Exp, ManualExp)
    monkeypatch.setitem(FACTOR, "backward", 1.0)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), Exp(), nn.Linear(4, 1))


def test_without_the_row_the_op_is_reported_native():
    model = manualgrad.replace_modules(_model())
    assert type(model[1]) is Exp
    assert manualgrad.conversion_report(model).skipped == {"1": "no hand-derived op for Exp"}
    assert backward_coverage(model(torch.randn(2, 3))).native == {"ExpBackward0": 1}
    report = manualgrad.check_gradients(model, torch.randn(2, 3))
    assert report.passed and report.native_nodes == {"ExpBackward0": 1}
    assert "hand-derived 2 of 3 backward nodes; native: ExpBackward0 x1" in str(report)


def test_one_table_row_is_all_conversion_and_the_check_need(exp_registered):
    model = manualgrad.replace_modules(_model())
    assert [type(m) for m in model] == [manualgrad.ManualLinear, ManualExp, manualgrad.ManualLinear]
    assert manualgrad.conversion_report(model).skipped == {}
    x = torch.randn(5, 3)
    coverage = backward_coverage(model(x))
    assert coverage.complete and coverage.hand_derived == {
        "ManualLinearFunction": 2,
        "ExpFunction": 1,
    }
    report = manualgrad.check_gradients(model, x)
    assert report.passed, str(report)
    assert report.backward_calls["ExpFunction"] == 1
    assert "hand-derived 3 of 3 backward nodes; native: none" in str(report)
    assert type(model[1]) is ManualExp  # the native run's swap was undone

    manualgrad.restore_modules(model)
    assert [type(m) for m in model] == [nn.Linear, Exp, nn.Linear]


def test_a_wrong_derivation_of_the_registered_op_is_caught(exp_registered):
    model = manualgrad.replace_modules(_model())
    FACTOR["backward"] = 2.0
    report = manualgrad.check_gradients(model, torch.randn(5, 3))
    assert not report.passed
    failing = {r.name for r in report.rows if not r.passed}
    assert failing == {"0.weight", "0.bias"}  # upstream of Exp only


def test_register_refuses_a_class_that_is_not_a_subclass(monkeypatch):
    monkeypatch.setattr(registry, "MANUAL_CLASSES", dict(registry.MANUAL_CLASSES))
    with pytest.raises(TypeError, match="subclass of Exp"):
        registry.register(Exp, nn.Linear)
    registry.register(Exp, ManualExp)
    assert registry.manual_class(Exp) is ManualExp and registry.native_class(ManualExp) is Exp


def test_every_row_of_the_table_is_a_forward_only_subclass():
    for native, manual in registry.MANUAL_CLASSES.items():
        assert issubclass(manual, native)
        overridden = {k for k in vars(manual) if not k.startswith("__")} - {"forward"}
        assert overridden <= {"from_pretrained"}, (manual, overridden)
        assert registry.native_class(manual) is native
