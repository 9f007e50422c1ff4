"""The one guarded place for private torch APIs: without them the gradients still come out
right, through the public ``Function.apply``."""

from types import SimpleNamespace

import pytest
import torch
from conftest import compare_with_native
from torch.nn import functional as F

from manualgrad import hand_derived_nodes
from manualgrad.functional import linear, mse_loss
from manualgrad.ops import _torch_private


def test_torch_check_is_used_where_it_exists():
    assert _torch_private.functorch_active is torch._C._are_functorch_transforms_active


# A torch without the private name, or with a changed one (torch itself still uses its
# own, so the name is hidden from manualgrad's lookup only).
MISSING = SimpleNamespace()
CHANGED_SIGNATURE = SimpleNamespace(_are_functorch_transforms_active=lambda level: False)
CHANGED_RESULT = SimpleNamespace(_are_functorch_transforms_active=lambda: 0)


@pytest.mark.parametrize("torch_c", [MISSING, CHANGED_SIGNATURE, CHANGED_RESULT])
def test_a_missing_or_changed_private_check_falls_back_to_the_safe_answer(torch_c):
    assert _torch_private.resolve_functorch_check(torch_c)() is True


@pytest.fixture
def without_private_apis(monkeypatch):
    fallback = _torch_private.resolve_functorch_check(MISSING)
    monkeypatch.setattr(_torch_private, "functorch_active", fallback)


def _inputs(dtype=torch.float64):
    torch.manual_seed(0)
    x = torch.randn(6, 4, dtype=dtype, requires_grad=True)
    w = torch.randn(3, 4, dtype=dtype, requires_grad=True)
    b = torch.randn(3, dtype=dtype, requires_grad=True)
    return x, w, b


def test_eager_gradients_are_right_on_the_public_path(without_private_apis):
    out, _ = compare_with_native(linear, F.linear, *_inputs())
    assert hand_derived_nodes(out) == {"ManualLinearFunction": 1}
    # the setup_context class itself ran (the public Function.apply), not the eager twin
    assert type(out.grad_fn).__name__ == "ManualLinearFunctionBackward"
    y = torch.randn(6, 3, dtype=torch.float64)
    compare_with_native(lambda a: mse_loss(a, y), lambda a: F.mse_loss(a, y), out.detach())


def test_gradcheck_forward_ad_and_func_transforms_on_the_public_path(without_private_apis):
    x, w, b = _inputs()
    assert torch.autograd.gradcheck(linear, (x, w, b), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(linear, (x, w, b))
    per_sample = torch.func.vmap(torch.func.grad(lambda r: linear(r, w, b).sum()))(x)
    torch.testing.assert_close(per_sample, w.sum(0).expand_as(x))
    jac = torch.func.jacfwd(lambda r: linear(r, w, b))(x[0])
    torch.testing.assert_close(jac, w)


def test_compiled_code_runs_the_op_outside_the_graph(without_private_apis):
    torch._dynamo.reset()
    x, w, b = (t.detach().float().requires_grad_() for t in _inputs())
    compiled = torch.compile(lambda a, c, d: linear(a, c, d).square().sum(), backend="eager")
    loss = compiled(x, w, b)
    loss.backward()
    native_w = w.detach().clone().requires_grad_()
    F.linear(x.detach(), native_w, b.detach()).square().sum().backward()
    torch.testing.assert_close(w.grad, native_w.grad)
    torch._dynamo.reset()
