"""check_gradients: the user-facing proof that a converted model's gradients are right."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from manualgrad import (
    ManualLinear,
    ManualLinearFunction,
    ManualMSELoss,
    check_gradients,
    replace_linear,
)


class WeightGradTimes1p5(ManualLinearFunction):
    """A deliberately wrong backward: dL/dW is 1.5 times too large."""

    @staticmethod
    def backward(ctx, grad_output):
        grad_input, grad_weight, grad_bias = ManualLinearFunction.backward(ctx, grad_output)
        return grad_input, 1.5 * grad_weight, grad_bias


class WrongLinear(ManualLinear):
    def forward(self, input):
        return WeightGradTimes1p5.apply(input, self.weight, self.bias)


def _mlp(dtype=torch.float32):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2)
    )
    return replace_linear(model.to(dtype))


def test_a_correct_model_passes_with_every_parameter_listed(device):
    model = _mlp().to(device)
    x, y = torch.randn(32, 4, device=device), torch.randn(32, 2, device=device)
    report = check_gradients(model, x, target=y, loss_fn=ManualMSELoss())
    assert report.passed, str(report)
    assert [r.name for r in report.rows] == [n for n, _ in model.named_parameters()]
    assert report.max_abs <= 1e-6 and report.max_rel <= 1e-5
    assert all(r.scale > 0 for r in report.rows)  # real gradients, not zeros against zeros
    assert report.backward_calls == {"ManualLinearFunction": 3, "ManualMSEFunction": 1}
    assert report.module_calls == {"0": 1, "3": 1, "5": 1, "loss_fn": 1}
    assert report.loss_manual == pytest.approx(report.loss_native, rel=1e-6)
    text = str(report)
    assert text.startswith("check_gradients: PASSED")
    assert "3.weight" in text and "(8, 16)" in text and "NO" not in text


def test_a_wrong_backward_is_caught_on_the_right_parameter():
    model = _mlp(torch.float64)
    wrong = model[3]
    wrong.__class__ = WrongLinear
    x = torch.randn(32, 4, dtype=torch.float64, requires_grad=True)
    report = check_gradients(model, x)
    rows = {r.name: r for r in report.rows}
    assert not report.passed
    assert not rows["3.weight"].passed
    assert rows["3.weight"].max_rel == pytest.approx(0.5)  # |1.5 g - g| / |g|
    assert rows["3.weight"].max_abs == pytest.approx(0.5 * rows["3.weight"].scale)
    passing = [name for name, r in rows.items() if r.passed]
    assert passing == ["0.weight", "0.bias", "3.bias", "5.weight", "5.bias", "input[0]"]
    assert report.backward_calls == {"ManualLinearFunction": 2, "WeightGradTimes1p5": 1}
    assert "FAILED" in str(report) and "NO" in str(report)
    assert type(wrong) is WrongLinear  # the native run's class swap was undone


def test_the_model_is_left_unchanged():
    torch.manual_seed(0)
    model = replace_linear(
        nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Linear(8, 1))
    )
    model[2].eval()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [type(m) for m in model.modules()]
    modes = [m.training for m in model.modules()]
    x = torch.randn(16, 4)
    rng = torch.get_rng_state()
    with torch.no_grad():  # works, and the caller's grad mode does not leak in
        report = check_gradients(model, x)
        assert not torch.is_grad_enabled()
    assert report.passed, str(report)
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BN stats too
    assert [type(m) for m in model.modules()] == classes
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)


def test_dropout_draws_the_same_masks_in_both_runs():
    model = _mlp()  # Dropout(0.5) in train mode: different masks would differ by O(1)
    report = check_gradients(model, torch.randn(64, 4), seed=3)
    assert report.passed and report.max_abs == 0.0, str(report)


def test_a_linear_whose_forward_never_runs_is_named():
    class ReadsWeight(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.head = nn.Linear(3, 1)

        def forward(self, x):
            return self.head(F.linear(x, self.fc.weight, self.fc.bias))

    model = replace_linear(ReadsWeight())
    report = check_gradients(model, torch.randn(5, 3))
    assert report.module_calls == {"fc": 0, "head": 1}
    assert "manual modules whose forward never ran: fc" in str(report)
    assert report.passed  # head's hand-derived backward ran and is right

    model.head.__class__ = nn.Linear  # now nothing hand-derived runs: nothing is proven
    report = check_gradients(model, torch.randn(5, 3))
    assert report.backward_calls == {} and not report.passed


def test_a_transformer_with_dropout_passes():
    torch.manual_seed(0)
    model = replace_linear(
        nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 1)
    )
    report = check_gradients(model, torch.randn(3, 5, 8))
    assert report.passed, str(report)
    assert report.backward_calls == {"ManualLinearFunction": 2}


def test_tolerances_can_be_set():
    model = _mlp(torch.float64)
    model[3].__class__ = WrongLinear
    x = torch.randn(8, 4, dtype=torch.float64)
    assert check_gradients(model, x, rtol=0.6).passed
    assert not check_gradients(model, x, rtol=0.4).passed


def test_bad_calls_raise_with_a_message():
    with pytest.raises(ValueError, match="replace_modules"):
        check_gradients(nn.Linear(3, 3), torch.randn(2, 3))
    tuple_model = replace_linear(nn.ModuleList([nn.Linear(3, 3)]))
    tuple_model.forward = lambda x: (tuple_model[0](x), x)
    with pytest.raises(TypeError, match="pass loss_fn"):
        check_gradients(tuple_model, torch.randn(2, 3))
    with pytest.raises(RuntimeError, match="scalar"):
        check_gradients(replace_linear(nn.Linear(3, 3)), torch.randn(2, 3), loss_fn=lambda o: o)
