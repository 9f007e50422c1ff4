"""ManualMultiheadAttention against nn.MultiheadAttention: every constructor and forward
argument, PyTorch's ModuleInfo samples, outputs, attention weights and every input and
parameter gradient in float64; a backward graph of hand-derived nodes only; conversion,
torch.compile and autocast."""

from __future__ import annotations

import copy
import logging
import pickle
import warnings

import pytest
import torch
from conftest import assert_hand_derived_only, tolerances, wrong_twin
from torch import nn

import manualgrad
import manualgrad.ops.attention
from manualgrad import ManualAttentionFunction, ManualMultiheadAttention, registry
from manualgrad.check import backward_coverage
from manualgrad.ops._apply import ManualOp

F64 = torch.float64
E, H, L, S, N = 8, 2, 4, 5, 3


def _t(shape, dtype=F64, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=F64).to(device, dtype)


def _pair(device="cpu", dtype=F64, **kwargs):
    """Native and manual modules, built under the same seed, manual holding native's state."""
    torch.manual_seed(0)
    native = nn.MultiheadAttention(E, H, device=device, dtype=dtype, **kwargs)
    torch.manual_seed(0)
    manual = ManualMultiheadAttention(E, H, device=device, dtype=dtype, **kwargs)
    for (name, p), (name_n, p_n) in zip(
        manual.state_dict().items(), native.state_dict().items(), strict=True
    ):
        assert name == name_n and torch.equal(p, p_n)  # same init under the same seed
    return native, manual


def _run(module, inputs, kwargs, seed=5):
    """Output, weights and the gradients of every input and parameter, for a random
    upstream gradient on the output and on the weights."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    query, key, value = inputs[0], inputs[min(1, len(inputs) - 1)], inputs[-1]
    if len(inputs) == 2:  # key is value
        key = value = inputs[1]
    torch.manual_seed(seed)
    out, weights = module(query, key, value, **kwargs)
    gen = torch.Generator().manual_seed(1)
    loss = (out * torch.randn(out.shape, generator=gen, dtype=out.dtype)).sum()
    if weights is not None:
        loss = loss + (weights * torch.randn(weights.shape, generator=gen, dtype=out.dtype)).sum()
    params = list(module.parameters())
    grads = torch.autograd.grad(loss, inputs + params, allow_unused=True)
    return out, weights, grads


def _compare(native, manual, inputs, kwargs, tol=None):
    tol = tol or tolerances(F64)
    out_n, w_n, grads_n = _run(native, inputs, kwargs)
    out, w, grads = _run(manual, inputs, kwargs)
    torch.testing.assert_close(out, out_n, equal_nan=True, **tol)
    assert (w is None) == (w_n is None)
    if w is not None:
        torch.testing.assert_close(w, w_n, equal_nan=True, **tol)
    for g, g_n in zip(grads, grads_n, strict=True):
        if g_n is None:
            assert g is None or not g.any()
        else:
            assert g is not None and g.dtype == g_n.dtype and g.shape == g_n.shape
            torch.testing.assert_close(g, g_n, equal_nan=True, **tol)
    return out, w


def _coverage(out, weights):
    target = out if weights is None else torch.cat([out.flatten(), weights.flatten()])
    return backward_coverage(target)


# ---- PyTorch's own samples ----------------------------------------------------------------


def test_moduleinfo_samples_match_native(device):
    """Every ModuleInfo sample (unbatched, batch_first, bias, add_bias_kv, add_zero_attn,
    key_padding_mask and attn_mask): outputs, weights, every input and parameter gradient
    equal native's in float64, and the graph is hand-derived only."""
    from torch.testing._internal.common_modules import module_db

    (info,) = [m for m in module_db if m.module_cls is nn.MultiheadAttention]
    samples = info.module_inputs_func(
        info, device=device, dtype=F64, requires_grad=True, training=True
    )
    assert len(samples) >= 32
    for sample in samples:
        c_args, c_kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
        torch.manual_seed(0)
        native = nn.MultiheadAttention(*c_args, **c_kwargs).to(device, F64)
        torch.manual_seed(0)
        manual = ManualMultiheadAttention(*c_args, **c_kwargs).to(device, F64)
        manual.load_state_dict(native.state_dict())
        out, weights = _compare(
            native, manual, sample.forward_input.args, sample.forward_input.kwargs
        )
        assert _coverage(out, weights).complete, str(_coverage(out, weights))


# ---- every argument ---------------------------------------------------------------------

CONSTRUCTORS = {
    "default": {},
    "batch_first": {"batch_first": True},
    "no-bias": {"bias": False},
    "bias_kv-zero_attn": {"add_bias_kv": True, "add_zero_attn": True, "batch_first": True},
    "kdim-vdim": {"kdim": 6, "vdim": 7},
}
FORWARDS = {
    "need_weights=False": {"need_weights": False},
    "weights": {},
    "weights-per-head": {"average_attn_weights": False},
    "key_padding_mask-bool": {"kpm": "bool"},
    "float-masks-3d": {"kpm": "float", "attn_mask": "float3"},
    "bool-masks-sdpa": {"attn_mask": "bool2", "kpm": "bool", "need_weights": False},
    "causal-sdpa": {"attn_mask": "causal", "is_causal": True, "need_weights": False},
    "causal-weights": {"attn_mask": "causal", "is_causal": True},
}


def _inputs(kwargs, mode, batched, device="cpu"):
    kdim, vdim = kwargs.get("kdim", E), kwargs.get("vdim", E)
    first = kwargs.get("batch_first", False)

    def shape(n, e):
        return (n, e) if not batched else ((N, n, e) if first else (n, N, e))

    query = _t(shape(L, E), device=device, seed=1)
    if mode == "self":
        return [query], L
    key = _t(shape(S, kdim), device=device, seed=2)
    if mode == "key-is-value":
        return [query, key], S
    return [query, key, _t(shape(S, vdim), device=device, seed=3)], S


def _forward_kwargs(spec, source, batched, device="cpu"):
    kwargs = dict(spec)
    gen = torch.Generator().manual_seed(4)
    kpm = kwargs.pop("kpm", None)
    if kpm is not None:
        mask = torch.rand((N, source) if batched else (source,), generator=gen) > 0.6
        mask[..., 0] = False  # keep one key per row: native's fast path aside, no NaN rows
        if kpm == "float":
            mask = torch.zeros(mask.shape, dtype=F64).masked_fill(mask, -1e9)
        kwargs["key_padding_mask"] = mask.to(device)
    attn = kwargs.pop("attn_mask", None)
    if attn == "causal":
        mask = torch.triu(torch.full((L, source), float("-inf"), dtype=F64), diagonal=1)
    elif attn == "bool2":
        mask = torch.rand(L, source, generator=gen) > 0.7
        mask[:, 0] = False
    elif attn == "float3":
        mask = torch.randn((N * H if batched else H, L, source), generator=gen, dtype=F64)
    if attn is not None:
        kwargs["attn_mask"] = mask.to(device)
    return kwargs


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("mode", ["self", "key-is-value", "separate"])
@pytest.mark.parametrize("ctor", list(CONSTRUCTORS))
def test_every_argument_matches_native(ctor, mode, batched, device):
    """Each constructor (batch_first, bias, add_bias_kv + add_zero_attn, kdim/vdim) with
    self-attention, key-is-value and separate inputs, batched and not, through every forward
    argument (need_weights, average_attn_weights, bool and float key_padding_mask, 2-D and
    3-D attn_mask, is_causal on both paths): everything equals native in float64, and the
    backward graph has hand-derived nodes only."""
    kwargs = CONSTRUCTORS[ctor]
    if "kdim" in kwargs and mode != "separate":
        pytest.skip("kdim/vdim: key and value are separate tensors")
    native, manual = _pair(device, **kwargs)
    inputs, source = _inputs(kwargs, mode, batched, device)
    for name, spec in FORWARDS.items():
        if "bias_kv" in ctor and spec.get("attn_mask") == "causal":
            continue  # the bias key / zero key columns make the mask (L, S + 2)
        forward = _forward_kwargs(spec, source, batched, device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # native: mismatched mask types deprecated
            out, weights = _compare(native, manual, inputs, forward)
        assert _coverage(out, weights).complete, f"{name}: {_coverage(out, weights)}"


@pytest.mark.parametrize("need_weights", [True, False])
def test_dropout_draws_native_masks(need_weights):
    """In training, dropout on the attention probabilities: the same draws as native's
    (F.dropout on the weights, or SDPA's math backend on CPU), so the same values."""
    native, manual = _pair(dropout=0.4, batch_first=True)
    inputs, _ = _inputs({"batch_first": True}, "self", True)
    _compare(native, manual, inputs, {"need_weights": need_weights})


def test_eval_mode_matches_native_fast_path():
    """In eval mode without grad, native takes its fused fast path; the values agree."""
    native, manual = _pair(dropout=0.4, batch_first=True)
    native.eval(), manual.eval()
    (x,), _ = _inputs({"batch_first": True}, "self", True)
    with torch.no_grad():
        out, weights = manual(x, x, x)
        out_n, weights_n = native(x, x, x)
    torch.testing.assert_close(out, out_n, **tolerances(F64))
    torch.testing.assert_close(weights, weights_n, **tolerances(F64))


def test_double_backward_matches_native():
    native, manual = _pair(batch_first=True)
    (x,), _ = _inputs({"batch_first": True}, "self", True)
    results = []
    for module in (native, manual):
        xr = x.clone().requires_grad_()
        out, weights = module(xr, xr, xr)
        loss = out.square().sum() + weights.square().sum()
        (gx,) = torch.autograd.grad(loss, xr, create_graph=True)
        results.append(torch.autograd.grad(gx.square().sum(), [xr, *module.parameters()]))
    torch.testing.assert_close(results[1], results[0], **tolerances(F64))


# ---- the module is a drop-in --------------------------------------------------------------


def test_drop_in_and_registered():
    native, manual = _pair(batch_first=True, add_bias_kv=True, kdim=6, vdim=7)
    assert isinstance(manual, nn.MultiheadAttention)
    assert manual.state_dict().keys() == native.state_dict().keys()
    assert repr(manual) == repr(native).replace("MultiheadAttention", "ManualMultiheadAttention", 1)
    assert type(pickle.loads(pickle.dumps(manual))) is ManualMultiheadAttention
    assert type(copy.deepcopy(manual)) is ManualMultiheadAttention
    assert registry.manual_class(nn.MultiheadAttention) is ManualMultiheadAttention
    assert "ManualMultiheadAttention" in manualgrad.__all__
    assert "multi_head_attention_forward" in manualgrad.functional.__all__
    overridden = {k for k, v in vars(ManualMultiheadAttention).items() if callable(v)}
    assert overridden == {"forward"}


def test_conversion_leaves_no_native_out_proj(caplog):
    """After replace_modules the MHA is manual and its out_proj (whose weight the manual
    attention runs through ManualLinear) is not reported left native; gradients check."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(E, E), nn.MultiheadAttention(E, H, batch_first=True))
    before = manualgrad.conversion_report(model)
    assert "1.out_proj" in before.skipped
    with caplog.at_level(logging.INFO, logger="manualgrad"):
        manualgrad.replace_modules(model)
    assert "left native" not in caplog.text
    report = manualgrad.conversion_report(model)
    assert type(model[1]) is ManualMultiheadAttention
    assert report.skipped == {}
    assert "1.out_proj" in report.converted

    class Wrap(nn.Module):
        def __init__(self, seq):
            super().__init__()
            self.seq = seq

        def forward(self, x):
            h = self.seq[0](x)
            return self.seq[1](h, h, h, need_weights=False)[0]

    check = manualgrad.check_gradients(Wrap(model), _t((N, L, E), torch.float32))
    assert check.passed, str(check)
    assert check.coverage.complete, str(check.coverage)
    manualgrad.restore_modules(model)
    assert type(model[1]) is nn.MultiheadAttention
    assert "1.out_proj" in manualgrad.conversion_report(model).skipped


# ---- torch.compile: no graph break, and the hand-derived rule ------------------------------


@pytest.mark.parametrize("rules", ["hand-derived", "wrong"])
def test_compiled_fullgraph_gradient_is_the_rule(rules, monkeypatch):
    """Causal self-attention, compiled with fullgraph: native's input gradient; with the
    attention routed through the wrong twin, exactly 3x native's, so the compiled backward
    is the hand-derived one."""
    if rules == "wrong":
        wrong = ManualOp(wrong_twin(ManualAttentionFunction))
        monkeypatch.setattr(manualgrad.ops.attention, "_attention", wrong)
    native, manual = _pair(dtype=torch.float32, batch_first=True)
    x = _t((N, L, E), torch.float32)
    mask = nn.Transformer.generate_square_subsequent_mask(L)

    def step(module, compile_it):
        def f(x):
            return module(x, x, x, attn_mask=mask, is_causal=True, need_weights=False)[0]

        f = torch.compile(f, fullgraph=True, backend="aot_eager") if compile_it else f
        xr = x.clone().requires_grad_()
        f(xr).square().sum().backward()
        return xr.grad

    torch._dynamo.reset()
    got = step(manual, True)
    torch._dynamo.reset()
    expected = step(native, False)
    factor = 3.0 if rules == "wrong" else 1.0  # x reaches the loss through attention only
    torch.testing.assert_close(got, factor * expected, **tolerances(torch.float32))


# ---- autocast ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "autocast"),
    [
        pytest.param("cpu", torch.bfloat16, id="cpu-bfloat16"),
        pytest.param(
            "cuda",
            torch.float16,
            id="cuda-float16",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ),
        pytest.param(
            "cuda",
            torch.bfloat16,
            id="cuda-bfloat16",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ),
    ],
)
@pytest.mark.parametrize("need_weights", [True, False])
def test_autocast_dtypes_match_native(device, autocast, need_weights):
    native, manual = _pair(device, torch.float32, batch_first=True)
    x = _t((N, L, E), torch.float32, device)
    results = []
    for module in (native, manual):
        xr = x.clone().requires_grad_()
        with torch.autocast(device, dtype=autocast):
            out, weights = module(xr, xr, xr, need_weights=need_weights)
        grads = torch.autograd.grad(out.float().sum(), [xr, *module.parameters()])
        results.append((out, weights, grads))
    (out_n, w_n, g_n), (out, w, g) = results
    assert out.dtype == out_n.dtype
    assert (w is None) == (w_n is None) and (w is None or w.dtype == w_n.dtype)
    assert [t.dtype for t in g] == [t.dtype for t in g_n]
    tol = dict(rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(out, out_n, **tol)
    torch.testing.assert_close(g, g_n, **tol)


# ---- bad input: native's exception types -------------------------------------------------


def _bad_calls():
    x = _t((L, N, E))
    return {
        "4-D query": ((_t((1, L, N, E)), _t((1, L, N, E)), _t((1, L, N, E))), {}),
        "2-D key for 3-D query": ((x, x[:, 0], x[:, 0]), {}),
        "is_causal without mask": ((x, x, x), {"is_causal": True}),
        "attn_mask shape": ((x, x, x), {"attn_mask": torch.zeros(L, L + 1)}),
        "attn_mask 4-D": ((x, x, x), {"attn_mask": torch.zeros(1, 1, L, L, dtype=F64)}),
        "int attn_mask": ((x, x, x), {"attn_mask": torch.zeros(L, L, dtype=torch.long)}),
        "key_padding_mask shape": ((x, x, x), {"key_padding_mask": torch.zeros(N, L + 1) > 0}),
        "key/value shapes": ((x, x, x[:-1]), {}),
        "embed dim": ((_t((L, N, E + 1)),) * 3, {}),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
def test_bad_input_raises_like_native(case):
    native, manual = _pair()
    args, kwargs = _bad_calls()[case]
    try:
        native(*args, **kwargs)
    except Exception as error:
        expected = type(error)
    else:
        pytest.fail("native accepted it")
    with pytest.raises(expected):
        manual(*args, **kwargs)


def test_mismatched_mask_types_warn_like_native():
    native, manual = _pair()
    x = _t((L, N, E))
    kwargs = {"key_padding_mask": torch.zeros(N, L) > 0, "attn_mask": torch.zeros(L, L, dtype=F64)}
    for module in (native, manual):
        with pytest.warns(UserWarning, match="Support for mismatched key_padding_mask"):
            module(x, x, x, **kwargs)
    out, _ = manual(x.requires_grad_(), x, x, need_weights=False)
    assert_hand_derived_only(out)
