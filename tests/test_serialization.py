"""Safe loading: manualgrad weights load with torch.load(weights_only=True), both ways."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from manualgrad import ManualLinear, replace_linear


def _mlp(linear=nn.Linear):
    return nn.Sequential(linear(5, 8), nn.Tanh(), linear(8, 2))


def _transformer():
    return nn.Transformer(8, 2, 1, 1, 16, dropout=0.0, batch_first=True)


class _Halve(nn.Module):
    def forward(self, w):
        return w / 2


def _parametrized_mlp():
    model = _mlp()
    parametrize.register_parametrization(model[2], "weight", _Halve())
    return model


def _inputs(factory):
    gen = torch.Generator().manual_seed(0)
    if factory is _transformer:
        return torch.randn(2, 3, 8, generator=gen), torch.randn(2, 4, 8, generator=gen)
    return (torch.randn(4, 5, generator=gen),)


FACTORIES = [_mlp, _transformer, _parametrized_mlp]


def _save_and_load(obj, path):
    torch.save(obj, path)
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("direction", ["manual->native", "native->manual"])
def test_state_dict_loads_with_weights_only_both_ways(factory, direction, tmp_path):
    torch.manual_seed(0)
    manual = replace_linear(factory())
    torch.manual_seed(1)  # a different initialisation, so loading must change it
    native = factory()
    assert any(isinstance(m, ManualLinear) for m in manual.modules())
    assert not any(isinstance(m, ManualLinear) for m in native.modules())
    src, dst = (manual, native) if direction == "manual->native" else (native, manual)

    state = _save_and_load(src.state_dict(), tmp_path / "weights.pt")
    dst.load_state_dict(state, strict=True)  # the check: raises on a missing or extra key
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key
    inputs = _inputs(factory)
    torch.testing.assert_close(dst(*inputs), src(*inputs), atol=1e-6, rtol=0)


def test_a_model_built_from_manual_linear_loads_native_weights(tmp_path):
    torch.manual_seed(0)
    native = _mlp()
    built = _mlp(ManualLinear)
    built.load_state_dict(_save_and_load(native.state_dict(), tmp_path / "w.pt"))
    x = torch.randn(3, 5)
    torch.testing.assert_close(built(x), native(x))


def test_a_training_checkpoint_resumes_into_a_native_model(tmp_path):
    torch.manual_seed(0)
    manual = replace_linear(_mlp())
    opt = torch.optim.Adam(manual.parameters(), lr=1e-2)
    x, y = torch.randn(16, 5), torch.randn(16, 2)

    def step(model, optimizer):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()

    step(manual, opt)
    checkpoint = {"model": manual.state_dict(), "optimizer": opt.state_dict(), "step": 1}
    loaded = _save_and_load(checkpoint, tmp_path / "ckpt.pt")

    native = _mlp()
    native_opt = torch.optim.Adam(native.parameters(), lr=1e-2)
    native.load_state_dict(loaded["model"])
    native_opt.load_state_dict(loaded["optimizer"])
    step(manual, opt)
    step(native, native_opt)
    for (key, p), q in zip(manual.named_parameters(), native.parameters(), strict=True):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=0, msg=key)


def test_tied_weights_stay_tied_after_loading(tmp_path):
    def tied():
        model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
        model[2].weight = model[0].weight
        return model

    torch.manual_seed(0)
    manual = replace_linear(tied())
    # Still tied after the swap: else its two weight entries (equal in value) would load
    # into native's one shared weight and the check below could not tell.
    assert manual[2].weight is manual[0].weight
    native = tied()
    native.load_state_dict(_save_and_load(manual.state_dict(), tmp_path / "tied.pt"))
    assert torch.equal(native[0].weight, manual[0].weight)
