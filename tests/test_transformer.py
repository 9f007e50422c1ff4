"""Whole Transformers converted by replace_modules: nn.TransformerEncoderLayer,
TransformerDecoderLayer, TransformerEncoder, TransformerDecoder and nn.Transformer give
native's outputs and gradients (float64, every input and parameter), with every backward
node that has math in it hand-derived."""

from __future__ import annotations

import copy
import functools
import logging
import warnings

import pytest
import torch
from conftest import tolerances, wrong_twin
from helpers_transformer import compare_models, twins
from torch import nn
from torch.nn import functional as F

import manualgrad
from manualgrad import registry
from manualgrad.check import backward_coverage
from manualgrad.ops import layer_norm as ln
from manualgrad.ops._apply import ManualOp
from manualgrad.ops.transformer import ManualTransformerDecoderLayer, ManualTransformerEncoderLayer

D, HEADS, FF = 16, 2, 32  # tiny: d_model 16, 2 heads
S, T, N = 5, 4, 3  # source and target lengths, batch

pytestmark = [
    # nn.TransformerEncoder says why it will not make nested tensors (norm_first, ...)
    pytest.mark.filterwarnings("ignore:enable_nested_tensor is True:UserWarning"),
    pytest.mark.usefixtures("one_thread"),
]


def _seq(length: int, batch_first: bool, requires_grad: bool = True) -> torch.Tensor:
    shape = (N, length, D) if batch_first else (length, N, D)
    return torch.randn(shape, dtype=torch.float64, requires_grad=requires_grad)


def _layer_kwargs(activation, norm_first: bool, batch_first: bool, dropout: float) -> dict:
    return dict(
        d_model=D,
        nhead=HEADS,
        dim_feedforward=FF,
        dropout=dropout,
        activation=activation,
        norm_first=norm_first,
        batch_first=batch_first,
        dtype=torch.float64,
    )


def _build(kind: str, **kw) -> nn.Module:
    """A native model of ``kind`` (layers built from ``kw``)."""
    if kind == "encoder_layer":
        return nn.TransformerEncoderLayer(**kw)
    if kind == "decoder_layer":
        return nn.TransformerDecoderLayer(**kw)
    norm = nn.LayerNorm(D, dtype=kw["dtype"])
    if kind == "encoder":
        return nn.TransformerEncoder(nn.TransformerEncoderLayer(**kw), 2, norm=norm)
    if kind == "decoder":
        return nn.TransformerDecoder(nn.TransformerDecoderLayer(**kw), 2, norm=norm)
    return nn.Transformer(num_encoder_layers=1, num_decoder_layers=1, **kw)


def _inputs(kind: str, batch_first: bool, dtype=torch.float64) -> tuple:
    """The positional inputs of a model of ``kind``: (src,), (tgt, memory) or (src, tgt)."""
    src, tgt = _seq(S, batch_first).to(dtype), _seq(T, batch_first).to(dtype)
    src, tgt = src.detach().requires_grad_(), tgt.detach().requires_grad_()
    return {"decoder_layer": (tgt, src), "decoder": (tgt, src), "transformer": (src, tgt)}.get(
        kind, (src,)
    )


KINDS = ["encoder_layer", "decoder_layer", "encoder", "decoder", "transformer"]
# activation as a string, as a function (torch's and functional's), as a module, as a
# partial with keyword arguments
ACTIVATIONS = {
    "relu": "relu",
    "gelu": "gelu",
    "F.relu": F.relu,
    "F.gelu": F.gelu,
    "torch.tanh": torch.tanh,
    "torch.sigmoid": torch.sigmoid,
    "F.silu": F.silu,
    "nn.GELU": nn.GELU(approximate="tanh"),
    "nn.ReLU": nn.ReLU(),
    "partial_gelu_tanh": functools.partial(F.gelu, approximate="tanh"),
    "manualgrad.functional.silu": manualgrad.functional.silu,  # given by hand: kept
}


def _check(kind, activation, norm_first, batch_first, training, dropout=0.0, **fwd):
    kw = _layer_kwargs(activation, norm_first, batch_first, dropout)
    native, manual = twins(lambda: _build(kind, **kw).train(training))
    out = compare_models(native, manual, *_inputs(kind, batch_first), **fwd)
    coverage = backward_coverage(out)
    assert coverage.complete, str(coverage)
    return manual, coverage


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
def test_every_container_matches_native_and_is_hand_derived(kind, norm_first, batch_first):
    _check(kind, "gelu", norm_first, batch_first, training=True, dropout=0.1)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("kind", ["encoder_layer", "decoder_layer"])
def test_every_form_of_activation_is_hand_derived(name, kind):
    _check(kind, ACTIVATIONS[name], False, True, training=False)


def _causal(size: int, dtype: torch.dtype) -> torch.Tensor:
    """The causal mask: -inf (float) or True (bool) above the diagonal."""
    mask = nn.Transformer.generate_square_subsequent_mask(size, dtype=torch.float64)
    return mask.isinf() if dtype is torch.bool else mask


def _padding(length: int, row: int, count: int) -> torch.Tensor:
    """A key padding mask: the last ``count`` keys of batch entry ``row`` are padding."""
    pad = torch.zeros(N, length, dtype=torch.bool)
    pad[row, length - count :] = True
    return pad


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float64], ids=["bool", "float"])
@pytest.mark.parametrize("is_causal", [None, True], ids=["detect", "is_causal"])
def test_masks_and_causal_attention_match_native(mask_dtype, is_causal):
    if mask_dtype is torch.bool:  # masks of one dtype: mixing them is deprecated
        src = dict(src_key_padding_mask=_padding(S, 0, 2))
        pads = dict(
            tgt_key_padding_mask=_padding(T, 1, 1), memory_key_padding_mask=_padding(S, 2, 1)
        )
    else:
        src = dict(src_mask=torch.randn(S, S, dtype=torch.float64))
        pads = {}
    tgt = dict(tgt_mask=_causal(T, mask_dtype), tgt_is_causal=is_causal)
    _check("transformer", "relu", False, True, True, **src, **tgt, **pads)
    pad = dict(src_key_padding_mask=_padding(S, 0, 2).to(mask_dtype))
    if mask_dtype is torch.float64:  # an additive padding mask: -inf at padding
        pad = dict(
            src_key_padding_mask=torch.zeros(N, S, dtype=torch.float64).masked_fill(
                _padding(S, 0, 2), -torch.inf
            )
        )
    causal = _causal(S, mask_dtype)
    _check(
        "encoder_layer", "gelu", True, True, True, src_mask=causal, is_causal=bool(is_causal), **pad
    )
    _check("encoder", "gelu", True, False, True, mask=causal, is_causal=is_causal, **pad)


def test_decoder_layer_memory_masks_match_native():
    memory_mask = torch.randn(T, S, dtype=torch.float64)
    pad = torch.zeros(N, S, dtype=torch.float64)
    pad[2, 0] = -torch.inf  # additive, as the other masks: mixing bool and float is deprecated
    causal = nn.Transformer.generate_square_subsequent_mask(T, dtype=torch.float64)
    _check(
        "decoder_layer", "gelu", True, False, True,
        tgt_mask=causal, memory_mask=memory_mask, memory_key_padding_mask=pad, tgt_is_causal=True,
    )  # fmt: skip


def test_unbatched_input_matches_native():
    native, manual = twins(lambda: nn.Transformer(D, HEADS, 1, 1, FF, 0.0, dtype=torch.float64))
    src, tgt = _seq(S, False)[:, 0], _seq(T, False)[:, 0]  # (S, D), (T, D)
    out = compare_models(native, manual, src, tgt)
    assert backward_coverage(out).complete


@pytest.mark.parametrize("kind", KINDS)
def test_float32_matches_native(kind):
    kw = _layer_kwargs("gelu", False, True, 0.0) | dict(dtype=torch.float32)
    native, manual = twins(lambda: _build(kind, **kw))
    compare_models(native, manual, *_inputs(kind, True, torch.float32))


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
@pytest.mark.parametrize("kind", ["encoder_layer", "encoder", "transformer"])
def test_inference_matches_native_fast_path(kind):
    """In eval mode without grad, native takes its fused fast path (and the encoder its
    nested tensors, given a padding mask); the converted model runs its modules, with the
    same outputs to rounding."""
    kw = _layer_kwargs("relu", False, True, 0.1)
    native, manual = twins(lambda: _build(kind, **kw).eval())
    inputs = _inputs(kind, True)
    pad = torch.zeros(N, S, dtype=torch.bool)
    pad[0, -2:] = True
    pads = {
        "encoder_layer": dict(src_key_padding_mask=pad),
        "encoder": dict(src_key_padding_mask=pad),
        "transformer": dict(src_key_padding_mask=pad, memory_key_padding_mask=pad),
    }[kind]
    with torch.no_grad():
        out_n = native(*inputs, **pads)
        out_m = manual(*inputs, **pads)
    torch.testing.assert_close(out_m, out_n, **tolerances(torch.float64))


def test_nested_tensor_input_goes_to_the_native_fast_path():
    native, manual = twins(
        lambda: nn.TransformerEncoderLayer(D, HEADS, FF, batch_first=True).eval()
    )
    nested = torch.nested.nested_tensor([torch.randn(3, D), torch.randn(5, D)])
    with torch.no_grad():
        out_n, out_m = native(nested), manual(nested)
    assert out_m.is_nested
    for a, b in zip(out_m.unbind(), out_n.unbind(), strict=True):
        torch.testing.assert_close(a, b)


def test_activation_without_hand_derived_form_stays_native_and_is_reported(caplog):
    layer = functools.partial(nn.TransformerEncoderLayer, D, HEADS, FF, 0.0, F.leaky_relu)
    with caplog.at_level(logging.WARNING, logger="manualgrad"):
        native, manual = twins(lambda: nn.TransformerEncoder(layer(dtype=torch.float64), 2))
    src = _seq(S, False)
    out = compare_models(native, manual, src)
    coverage = backward_coverage(out)
    assert coverage.native == {"LeakyReluBackward0": 2}, str(coverage)  # nothing else
    report = str(manualgrad.conversion_report(manual))
    assert "'layers.0' (ManualTransformerEncoderLayer) manual; its activation function " in report
    assert "leaky_relu has no hand-derived form" in report
    assert "left native: layers.0, layers.1 (its activation function leaky_relu" in caplog.text


@pytest.mark.parametrize(
    "activation", [torch.tanh, manualgrad.functional.gelu], ids=["torch.tanh", "manual_gelu"]
)
def test_hand_derived_activation_reports_nothing_native(activation):
    _, manual = twins(lambda: nn.TransformerDecoderLayer(D, HEADS, FF, activation=activation))
    report = manualgrad.conversion_report(manual)
    assert report.modules[0].names == ("",) and report.modules[0].converted  # the layer
    assert report.modules[0].reason == "", str(report)
    # out_proj: computed by hand inside ManualMultiheadAttention, which reads its weight
    assert {n for n in report.skipped if not n.endswith(".out_proj")} == set(), str(report)


def test_registry_rows_and_round_trip():
    assert registry.manual_class(nn.TransformerEncoderLayer) is ManualTransformerEncoderLayer
    assert registry.manual_class(nn.TransformerDecoderLayer) is ManualTransformerDecoderLayer
    assert "ManualTransformerEncoderLayer" in manualgrad.__all__
    assert "ManualTransformerDecoderLayer" in manualgrad.__all__
    torch.manual_seed(0)
    native = nn.Transformer(D, HEADS, 1, 1, FF)
    keys = native.state_dict()
    model = copy.deepcopy(native)
    params = list(model.parameters())
    manualgrad.replace_modules(model)
    assert type(model.encoder.layers[0]) is ManualTransformerEncoderLayer
    assert type(model.decoder.layers[0]) is ManualTransformerDecoderLayer
    assert isinstance(model.encoder.layers[0], nn.TransformerEncoderLayer)
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))  # the same
    assert model.state_dict().keys() == keys.keys()
    manualgrad.restore_modules(model)
    assert [type(m) for m in model.modules()] == [type(m) for m in native.modules()]


def test_same_constructor_state_dict_and_init_under_the_same_seed():
    for native_cls, manual_cls, args in [
        (nn.TransformerEncoderLayer, ManualTransformerEncoderLayer, (D, HEADS, FF)),
        (nn.TransformerDecoderLayer, ManualTransformerDecoderLayer, (D, HEADS, FF)),
    ]:
        torch.manual_seed(0)
        native = native_cls(*args, activation="gelu", norm_first=True)
        torch.manual_seed(0)
        manual = manual_cls(*args, activation="gelu", norm_first=True)
        for (k, a), (k2, b) in zip(
            native.state_dict().items(), manual.state_dict().items(), strict=True
        ):
            assert k == k2 and torch.equal(a, b)


def test_check_gradients_on_a_converted_transformer():
    torch.manual_seed(0)
    model = manualgrad.replace_modules(
        nn.Transformer(D, HEADS, 2, 2, FF, dropout=0.1, batch_first=True, dtype=torch.float64)
    )
    report = manualgrad.check_gradients(model, _seq(S, True), _seq(T, True))
    assert report.passed and report.coverage.complete, str(report)
    assert all(n > 0 for n in report.module_calls.values()), str(report)


_MODULE_INFO = [
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.TransformerEncoder,
    nn.Transformer,
]


@pytest.mark.parametrize("native_cls", _MODULE_INFO, ids=lambda c: c.__name__)
def test_moduleinfo_samples_match_native(native_cls):
    """PyTorch's own ModuleInfo samples (module_db; nn.TransformerDecoder has none): each
    native module and its converted copy, float64, training mode."""
    from torch.testing._internal.common_modules import module_db

    (info,) = [m for m in module_db if m.module_cls is native_cls]
    with warnings.catch_warnings():  # the samples build encoders that warn about nesting
        warnings.simplefilter("ignore", UserWarning)
        samples = info.module_inputs_func(
            info, device="cpu", dtype=torch.float64, requires_grad=True, training=True
        )
    assert len(samples) >= 4
    for sample in samples:
        c, f = sample.constructor_input, sample.forward_input
        build = functools.partial(native_cls, *c.args, **c.kwargs)
        native, manual = twins(lambda build=build: build().to(torch.float64))
        out = compare_models(native, manual, *f.args, **f.kwargs)
        assert backward_coverage(out).complete, (sample.desc, str(backward_coverage(out)))


def _compiled_and_eager_grads(model, x, mask):
    """Gradients of a compiled (fullgraph) and of an eager run of ``model``."""

    def loss(x):
        return model(x, src_mask=mask, is_causal=True).square().sum()

    wrt = [x, *model.parameters()]
    torch._dynamo.reset()
    # aot_eager: AOTAutograd is the stage that traces the backward; inductor would only
    # lower that same graph
    compiled = torch.autograd.grad(torch.compile(loss, fullgraph=True, backend="aot_eager")(x), wrt)
    torch._dynamo.reset()
    return compiled, torch.autograd.grad(loss(x), wrt)


def test_compiled_fullgraph_runs_the_hand_derived_rules(monkeypatch):
    """A converted layer compiles with no graph break (fullgraph), and its compiled
    gradients are those of its eager hand-derived rules: with LayerNorm routed through a
    3x wrong twin, they are the wrong twin's (as eager's), not native's. (Eager equals
    native with the real rules: the tests above.) One compile: ~15 s of tracing here."""
    monkeypatch.setattr(ln, "_layer_norm", ManualOp(wrong_twin(ln.ManualLayerNormFunction)))
    kw = _layer_kwargs("gelu", True, True, 0.0) | dict(dtype=torch.float32)
    native, manual = twins(lambda: nn.TransformerEncoderLayer(**kw))
    x = _seq(S, True).float().detach().requires_grad_()
    mask = _causal(S, torch.float32)
    compiled, eager = _compiled_and_eager_grads(manual, x, mask)
    for got, wrong in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, wrong)
    expected = torch.autograd.grad(
        native(x, src_mask=mask, is_causal=True).square().sum(), [x, *native.parameters()]
    )
    assert not torch.allclose(compiled[0], expected[0])  # dL/dx passes through both norms
