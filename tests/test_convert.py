"""replace_linear / restore_linear on architectures written by others."""

import copy
import logging

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize, prune

from manualgrad import (
    ManualLinear,
    conversion_report,
    hand_derived_nodes,
    replace_linear,
    restore_linear,
)

# ---- models written by others, and their inputs ------------------------------------------


class TiedLM(nn.Module):
    """An embedding tied to the output layer, plus two Linears sharing one weight."""

    def __init__(self, vocab=11, dim=8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.a = nn.Linear(dim, dim)
        self.b = nn.Linear(dim, dim)
        self.b.weight = self.a.weight
        self.decoder = nn.Linear(dim, vocab, bias=False)
        self.decoder.weight = self.embed.weight

    def forward(self, tokens):
        h = self.embed(tokens)
        return self.decoder(torch.tanh(self.b(torch.tanh(self.a(h)))))


def _mlp():
    return nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )


def _encoder():
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=2)


def _transformer():
    return nn.Transformer(16, 2, 2, 2, 32, dropout=0.0, batch_first=True)


def _shared():
    a = nn.Linear(5, 5)
    return nn.Sequential(a, nn.ReLU(), a)


def _inputs(name):
    gen = torch.Generator().manual_seed(3)
    return {
        "mlp": (torch.randn(8, 6, generator=gen),),
        "encoder": (torch.randn(3, 5, 16, generator=gen),),
        "transformer": (torch.randn(3, 5, 16, generator=gen), torch.randn(3, 4, 16, generator=gen)),
        "tied": (torch.randint(0, 11, (4, 6), generator=gen),),
        "shared": (torch.randn(7, 5, generator=gen),),
    }[name]


# name -> (factory, ManualLinearFunction calls in one forward)
MODELS = {
    "mlp": (_mlp, 3),
    "encoder": (_encoder, 4),  # linear1 and linear2 of each layer; out_proj is MHA's own
    "transformer": (_transformer, 8),
    "tied": (TiedLM, 3),
    "shared": (_shared, 2),  # one module, called twice
}


def _manual_nodes(tensor):
    """How many ManualLinearFunction backward nodes the graph below ``tensor`` holds."""
    return hand_derived_nodes(tensor)["ManualLinearFunction"]


def _linears(report):
    """The report's rows for nn.Linear modules (subclasses included)."""
    return [m for m in report.modules if m.type_name.endswith("Linear")]


def _loss(model, inputs):
    out = model(*inputs)
    target = torch.linspace(-1, 1, out.numel(), device=out.device).reshape(out.shape)
    return F.mse_loss(out, target), out


def _twins(name, device="cpu"):
    torch.manual_seed(0)
    native = MODELS[name][0]().to(device)
    return native, copy.deepcopy(native)


# ---- outputs, gradients, training ---------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_outputs_and_gradients_equal_the_native_model(name, device):
    native, manual = _twins(name, device)
    params_before = [id(p) for p in manual.parameters()]
    assert replace_linear(manual) is manual
    assert [id(p) for p in manual.parameters()] == params_before  # the same Parameters
    assert manual.state_dict().keys() == native.state_dict().keys()

    inputs = [x.to(device) for x in _inputs(name)]
    loss_n, out_n = _loss(native, inputs)
    loss_m, out_m = _loss(manual, inputs)
    torch.testing.assert_close(out_m, out_n, atol=1e-5, rtol=0)
    assert _manual_nodes(out_n) == 0
    assert _manual_nodes(out_m) == MODELS[name][1]  # the hand-derived backward is in the graph

    loss_n.backward()
    loss_m.backward()
    grads_n = dict(native.named_parameters())
    for key, p in manual.named_parameters():
        assert p.grad is not None
        torch.testing.assert_close(p.grad, grads_n[key].grad, atol=1e-5, rtol=0)

    assert restore_linear(manual) is manual
    assert not any(isinstance(m, ManualLinear) for m in manual.modules())
    assert _manual_nodes(manual(*inputs)) == 0


@pytest.mark.parametrize("name", MODELS)
def test_optimizer_made_before_the_swap_trains_like_native(name):
    native, manual = _twins(name)
    opt_n = torch.optim.Adam(native.parameters(), lr=1e-2)
    opt_m = torch.optim.Adam(manual.parameters(), lr=1e-2)  # made before the swap
    replace_linear(manual)
    start = {key: p.detach().clone() for key, p in manual.named_parameters()}
    inputs = _inputs(name)
    for _ in range(3):
        for model, opt in [(native, opt_n), (manual, opt_m)]:
            opt.zero_grad()
            _loss(model, inputs)[0].backward()
            opt.step()
    params_n = dict(native.named_parameters())
    for key, p in manual.named_parameters():
        assert not torch.equal(p, start[key])  # it trained
        torch.testing.assert_close(p, params_n[key], atol=1e-5, rtol=0)
    if name == "tied":  # still tied after training
        assert manual.decoder.weight is manual.embed.weight and manual.b.weight is manual.a.weight


# ---- nothing is lost ----------------------------------------------------------------------


def test_a_linear_model_returns_itself_as_its_replacement():
    layer = nn.Linear(3, 2)
    assert replace_linear(layer) is layer and type(layer) is ManualLinear
    assert restore_linear(layer) is layer and type(layer) is nn.Linear


def test_shared_module_is_converted_once_and_stays_shared():
    model = _shared()
    seen = []
    replace_linear(model, filter_fn=lambda m, name: seen.append((m, name)) or name == "2")
    assert [(m is model[0], name) for m, name in seen] == [(True, "0"), (True, "2")]
    assert model[0] is model[2] and type(model[0]) is ManualLinear
    (status,) = _linears(conversion_report(model))
    assert status.names == ("0", "2") and status.converted


def test_filter_fn_gets_each_module_and_its_qualified_name():
    model = nn.Sequential(_mlp(), nn.Linear(3, 3))
    seen = []

    def keep(module, name):
        seen.append((name, type(module)))  # the class when filter_fn sees it
        return name != "0.4"

    replace_linear(model, filter_fn=keep)
    assert seen == [(n, nn.Linear) for n in ("0.0", "0.2", "0.4")] + [("1", nn.Linear)]
    report = conversion_report(model)
    assert report.converted == ("0.0", "0.2", "1")
    linears = {m.name for m in _linears(report)}
    assert {k: v for k, v in report.skipped.items() if k in linears} == {
        "0.4": "plain nn.Linear, not converted"
    }
    assert [m.name for m in report.modules] == ["0.0", "0.1", "0.2", "0.3", "0.4", "1"]
    restore_linear(model, filter_fn=lambda m, name: name == "1")
    assert conversion_report(model).converted == ("0.0", "0.2")


def test_mode_dtype_device_and_meta_are_kept():
    model = _mlp().double()
    model[2].eval()
    replace_linear(model)
    assert [m.training for m in model] == [True, True, False, True, True]
    assert all(p.dtype == torch.float64 for p in model.parameters())
    with torch.device("meta"):
        meta = _mlp()
    replace_linear(meta)
    assert all(type(meta[i]) is ManualLinear for i in (0, 2, 4))
    assert all(p.device.type == "meta" for p in meta.parameters())
    out = meta(torch.empty(4, 6, device="meta"))
    assert out.device.type == "meta" and _manual_nodes(out) == 3


def test_hooks_and_pruning_keep_working():
    def build():
        torch.manual_seed(0)
        model = _mlp()
        model[0].register_forward_pre_hook(lambda m, args: (args[0] * 2,))
        model[2].register_forward_hook(lambda m, args, kwargs, out: out + 1, with_kwargs=True)
        prune.l1_unstructured(model[4], "weight", amount=0.5)  # a pre-hook and a mask buffer
        return model

    native, manual = build(), build()
    grads_seen = []
    for model in (native, manual):
        model[2].register_full_backward_hook(lambda m, gi, go: grads_seen.append(go[0]))
    replace_linear(manual)
    assert all(type(manual[i]) is ManualLinear for i in (0, 2, 4))
    x = torch.randn(5, 6)
    out_n, out_m = native(x), manual(x)
    assert _manual_nodes(out_m) == 3
    torch.testing.assert_close(out_m, out_n, atol=1e-5, rtol=0)
    out_n.sum().backward()
    out_m.sum().backward()
    assert len(grads_seen) == 2
    torch.testing.assert_close(grads_seen[1], grads_seen[0])
    for (key, p), q in zip(manual.named_parameters(), native.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=0, msg=key)
    assert torch.equal(manual[4].weight, manual[4].weight_orig * manual[4].weight_mask)


class Symmetric(nn.Module):
    def forward(self, w):
        return w.triu() + w.triu(1).transpose(0, 1)


def test_parametrized_linear_is_converted_and_keeps_its_parametrization():
    torch.manual_seed(0)
    native = nn.Linear(4, 4)
    parametrize.register_parametrization(native, "weight", Symmetric())
    manual = copy.deepcopy(native)
    replace_linear(manual)
    assert isinstance(manual, ManualLinear) and parametrize.is_parametrized(manual, "weight")
    assert parametrize.type_before_parametrizations(manual) is ManualLinear
    assert manual.state_dict().keys() == native.state_dict().keys()
    x = torch.randn(3, 4)
    out_n, out_m = native(x), manual(x)
    assert _manual_nodes(out_m) == 1
    torch.testing.assert_close(out_m, out_n)
    out_n.pow(2).sum().backward()
    out_m.pow(2).sum().backward()
    original = manual.parametrizations.weight.original
    torch.testing.assert_close(original.grad, native.parametrizations.weight.original.grad)
    assert not torch.equal(original.grad, original.grad.t())  # the parametrization's own grad
    assert _manual_nodes(copy.deepcopy(manual)(x)) == 1

    restore_linear(manual)
    assert parametrize.type_before_parametrizations(manual) is nn.Linear
    assert _manual_nodes(manual(x)) == 0
    replace_linear(manual)
    parametrize.remove_parametrizations(manual, "weight")
    assert type(manual) is ManualLinear  # removing it unwinds to the converted class
    torch.testing.assert_close(manual.weight, manual.weight.t())


def test_parametrization_added_after_conversion_restores():
    layer = replace_linear(nn.Linear(4, 4))
    parametrize.register_parametrization(layer, "weight", Symmetric())
    restore_linear(layer)
    assert parametrize.type_before_parametrizations(layer) is nn.Linear
    parametrize.remove_parametrizations(layer, "weight")
    assert type(layer) is nn.Linear


# ---- honest reporting ---------------------------------------------------------------------


def test_attention_out_proj_is_reported_and_would_change_nothing(caplog):
    model = _encoder()
    with caplog.at_level(logging.INFO, logger="manualgrad"):
        replace_linear(model)
    report = conversion_report(model)
    out_projs = [f"layers.{i}.self_attn.out_proj" for i in range(2)]
    linears = {m.name for m in _linears(report)}
    assert {k for k in report.skipped if k in linears} == set(out_projs)
    assert {k: v for k, v in report.skipped.items() if k in out_projs}
    assert all(
        "MultiheadAttention reads this weight directly" in report.skipped[k] for k in out_projs
    )
    assert len(report.converted) == 4
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and out_projs[0] in record.getMessage()
    assert "'layers.0.linear1' (ManualLinear) manual" in str(report)

    # The reason is true: forcing the class on out_proj adds no hand-derived backward.
    x = _inputs("encoder")[0]
    before = _manual_nodes(model(x))
    for key in out_projs:
        model.get_submodule(key).__class__ = ManualLinear
    assert _manual_nodes(model(x)) == before == 4


def test_subclasses_and_lazy_linears_are_skipped_with_a_reason(caplog):
    class MyLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(MyLinear(3, 3), nn.LazyLinear(2), nn.Linear(2, 2))
    with caplog.at_level(logging.INFO, logger="manualgrad"):
        replace_linear(model)
    skipped = conversion_report(model).skipped
    assert type(model[0]) is MyLinear and "MyLinear subclasses nn.Linear" in skipped["0"]
    assert "uninitialized LazyLinear" in skipped["1"]
    assert type(model[2]) is ManualLinear
    assert "left native: 0 (" in caplog.records[0].getMessage()
    model(torch.randn(4, 3))  # materializes the LazyLinear into an nn.Linear
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="manualgrad"):
        replace_linear(model)
    assert type(model[1]) is ManualLinear
    assert "converted 1 module;" in caplog.records[0].getMessage()


def test_plain_model_logs_info_and_restore_logs_count(caplog):
    model = _mlp()
    with caplog.at_level(logging.INFO, logger="manualgrad"):
        replace_linear(model)
        restore_linear(model)
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.INFO]
    assert "converted 3 modules; 3 of 3 nn.Linear modules are manual" in caplog.records[0].message
    assert "restored 3 modules" in caplog.records[1].message
    assert str(conversion_report(nn.Sequential())).startswith("0 of 0")
    assert str(conversion_report(nn.ReLU())).startswith("0 of 1")


def test_public_names():
    import manualgrad

    assert {
        "replace_linear",
        "restore_linear",
        "conversion_report",
        "ConversionReport",
        "check_gradients",
        "GradientReport",
    } <= set(manualgrad.__all__)
    assert all(hasattr(manualgrad, name) for name in manualgrad.__all__)
