"""Hugging Face models converted by replace_modules: GPT-2's Conv1D as a hand-derived op
(every setting an op is used in), tiny random GPT-2 and BERT built from configs (no
download) with native's gradients, and an honest account of what stays native."""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from conftest import AUTOCAST, assert_hand_derived_only, compare_with_native, wrong_twin
from helpers_transformer import compare_models, twins
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.autograd.graph import saved_tensors_hooks
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vmap
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

import manualgrad
from manualgrad import registry
from manualgrad.check import backward_coverage
from manualgrad.ops._apply import ManualOp
from manualgrad.ops.hf_conv1d import ManualConv1DFunction, hf_conv1d

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models come from configs: nothing to download
transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402

from manualgrad.ops.hf_conv1d import ManualConv1D  # noqa: E402  (made now: transformers is in)

conv1d_module = importlib.import_module("manualgrad.ops.hf_conv1d")
pytestmark = [
    # Warnings raised inside transformers and its hub client are theirs (as for torch's).
    pytest.mark.filterwarnings(
        "default::Warning:(transformers|huggingface_hub|tokenizers|safetensors)([.]|$)"
    ),
    pytest.mark.usefixtures("one_thread"),
]
WRONG = 3.0  # wrong_twin's factor on every gradient and tangent


def native_conv1d(x, weight, bias):
    """``transformers.pytorch_utils.Conv1D.forward``, word for word, as a function."""
    size_out = x.size()[:-1] + (weight.size(-1),)
    return torch.addmm(bias, x.view(-1, x.size(-1)), weight).view(size_out)


def _inputs(x_shape=(2, 5, 6), out=4, dtype=torch.float64, device="cpu"):
    gen = torch.Generator().manual_seed(3)
    x, w, b = (
        torch.randn(s, generator=gen, dtype=dtype).to(device).requires_grad_()
        for s in (x_shape, (x_shape[-1], out), (out,))
    )
    return x, w, b


@pytest.fixture(params=["hand-derived", "wrong"])
def factor(request, monkeypatch) -> float:
    """Run a test with the real rule (factor 1), then with the 3x wrong twin."""
    if request.param == "wrong":
        monkeypatch.setattr(conv1d_module, "_conv1d", ManualOp(wrong_twin(ManualConv1DFunction)))
        return WRONG
    return 1.0


# ---- optional import: the table gets its Conv1D row only once transformers is imported ---


def test_import_manualgrad_does_not_import_transformers_and_the_row_joins_lazily():
    code = (
        "import sys, manualgrad, manualgrad.functional\n"
        "from manualgrad import registry\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'transformers']\n"
        "assert 'transformers.pytorch_utils:Conv1D' in registry.LAZY_CLASSES\n"
        "from transformers.pytorch_utils import Conv1D\n"
        "manual = registry.manual_class(Conv1D)\n"
        "assert manual.__name__ == 'ManualConv1D' and issubclass(manual, Conv1D), manual\n"
        "assert Conv1D in registry.MANUAL_CLASSES\n"
        "from manualgrad.ops.hf_conv1d import ManualConv1D\n"
        "assert manual is ManualConv1D and registry.native_class(ManualConv1D) is Conv1D\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---- Conv1D: the op --------------------------------------------------------------------


@pytest.mark.parametrize("x_shape", [(2, 5, 6), (7, 6), (6,), (0, 6), (2, 0, 6)], ids=str)
def test_matches_native(x_shape, device):
    out, _ = compare_with_native(hf_conv1d, native_conv1d, *_inputs(x_shape, device=device))
    assert_hand_derived_only(out)
    torch.testing.assert_close(out, native_conv1d(*_inputs(x_shape, device=device)), rtol=0, atol=0)


def test_gradcheck_gradgradcheck_and_forward_ad():
    x, w, b = _inputs((3, 2, 4), 3)
    gradcheck(hf_conv1d, (x, w, b), check_forward_ad=True, check_batched_grad=True)
    gradgradcheck(hf_conv1d, (x, w, b), check_fwd_over_rev=True, check_batched_grad=True)


def _saved_bytes(fn) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


@pytest.mark.parametrize(
    "needs", [(1, 1, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1)], ids=["all", "input", "weight", "bias"]
)
def test_saves_no_more_than_native_and_forms_only_requested_gradients(needs):
    x, w, b = (t.detach().requires_grad_(bool(n)) for t, n in zip(_inputs(), needs, strict=True))
    manual, native = (
        _saved_bytes(lambda: hf_conv1d(x, w, b)),
        _saved_bytes(lambda: native_conv1d(x, w, b)),
    )
    assert manual <= native
    expected = 8 * (needs[1] * x.numel() + needs[0] * w.numel())  # X for dW, W for dX
    assert manual == expected
    hf_conv1d(x, w, b).sum().backward()
    assert [t.grad is not None for t in (x, w, b)] == [bool(n) for n in needs]


def _compiled_grads(device):
    # aot_eager: AOTAutograd is the stage that traces the backward (the hand-derived one or
    # autograd's); inductor would only lower that same graph, at ~30 s of warm-up here.
    torch._dynamo.reset()
    x, w, b = _inputs(dtype=torch.float32, device=device)
    fn = lambda x, w, b: hf_conv1d(x, w, b).square().sum()  # noqa: E731
    step = torch.compile(fn, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(step(x, w, b), (x, w, b))
    native = torch.autograd.grad(native_conv1d(x, w, b).square().sum(), (x, w, b))
    torch._dynamo.reset()
    return got, native


def test_compiled_fullgraph_runs_the_hand_derived_rule(factor, device):
    """Compiled with fullgraph, native gradients; with the op routed through the 3x wrong
    twin, 3x native: compile kept the hand-derived backward."""
    got, native = _compiled_grads(device)
    for g, n in zip(got, native, strict=True):
        torch.testing.assert_close(g, factor * n)


def test_per_sample_gradients_with_vmap_grad(factor):
    torch.manual_seed(0)
    layer = ManualConv1D(4, 6).double()
    params = {name: p.detach() for name, p in layer.named_parameters()}
    xs, target = torch.randn(5, 3, 6, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)

    def loss(params, x):
        return (functional_call(layer, params, (x,)) * target).sum()

    got = vmap(grad(loss), in_dims=(None, 0))(params, xs)
    w, b = (params[name].clone().requires_grad_() for name in ("weight", "bias"))
    rows = [torch.autograd.grad((native_conv1d(x, w, b) * target).sum(), (w, b)) for x in xs]
    for i, name in enumerate(("weight", "bias")):
        torch.testing.assert_close(got[name], factor * torch.stack([r[i] for r in rows]))


@pytest.mark.parametrize("transform", ["grad", "jacrev", "jacfwd", "hessian"])
def test_func_transforms_match_native(transform, factor):
    x, w, b = (t.detach() for t in _inputs((3, 4), 2))
    t = torch.randn(3, 2, dtype=torch.float64)
    make = {"grad": grad, "jacrev": jacrev, "jacfwd": jacfwd, "hessian": hessian}[transform]
    scalar = transform in ("grad", "hessian")

    def wrap(fn):
        return lambda x, w, b: (fn(x, w, b).tanh() * t).sum() if scalar else fn(x, w, b)

    for argnum in range(3):
        got = make(wrap(hf_conv1d), argnums=argnum)(x, w, b)
        expected = make(wrap(native_conv1d), argnums=argnum)(x, w, b)
        if transform == "hessian":  # the twin's rule twice over: 9x (its jvp and backward)
            torch.testing.assert_close(got, factor**2 * expected)
        else:
            torch.testing.assert_close(got, factor * expected)


def test_forward_ad_dual_numbers_match_native(factor):
    primals = tuple(t.detach() for t in _inputs())
    tangents = tuple(torch.randn_like(t) for t in primals)
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, t) for p, t in zip(primals, tangents, strict=True)]
        out_t = fwAD.unpack_dual(hf_conv1d(*duals)).tangent
    _, native_t = jvp(native_conv1d, primals, tangents)
    torch.testing.assert_close(out_t, factor * native_t)


@pytest.mark.parametrize(("device", "dtype"), AUTOCAST)
def test_autocast_dtype_and_gradients_match_native(device, dtype):
    """addmm runs in the autocast dtype; gradients come back in each tensor's dtype."""
    x, w, b = _inputs(dtype=torch.float32, device=device)
    with torch.autocast(device, dtype=dtype):
        out_m, out_n = hf_conv1d(x, w, b), native_conv1d(x, w, b)
    assert out_m.dtype == out_n.dtype == dtype
    torch.testing.assert_close(out_m, out_n)
    g = torch.randn_like(out_n)
    for gm, gn in zip(
        torch.autograd.grad(out_m, (x, w, b), g),
        torch.autograd.grad(out_n, (x, w, b), g),
        strict=True,
    ):
        assert gm.dtype == gn.dtype == torch.float32
        torch.testing.assert_close(gm, gn, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpoint_gives_native_gradients(use_reentrant, factor):
    torch.manual_seed(0)
    native = Conv1D(4, 6).double()
    manual = ManualConv1D(4, 6).double()
    manual.load_state_dict(native.state_dict())
    x = torch.randn(3, 6, dtype=torch.float64)

    def grads(fn, layer):  # by .backward(): reentrant checkpointing refuses autograd.grad
        xr = x.clone().requires_grad_()
        fn(xr).tanh().sum().backward()
        return [t.grad.clone() for t in (xr, *layer.parameters())]

    got = grads(lambda x: checkpoint(manual, x, use_reentrant=use_reentrant), manual)
    for g, n in zip(got, grads(native, native), strict=True):
        torch.testing.assert_close(g, factor * n)


@pytest.mark.parametrize(
    "args",
    [
        (torch.randn(2, 5), torch.randn(4, 3), torch.randn(3)),  # in features
        (torch.randn(2, 4), torch.randn(4, 3), torch.randn(2)),  # bias
        (torch.randn(2, 4), torch.randn(4, 3, dtype=torch.float64), torch.randn(3)),  # dtype
        (torch.randn(4, 3, 2).permute(2, 1, 0), torch.randn(4, 3), torch.randn(3)),  # no view
        (torch.tensor(1.0), torch.randn(1, 3), torch.randn(3)),  # 0-dim
    ],
    ids=["in-features", "bias", "dtype", "non-contiguous", "0-dim"],
)
def test_bad_input_raises_like_native(args):
    """The very error native Conv1D raises: the same checks run first (view, addmm)."""
    with pytest.raises(Exception) as native:
        native_conv1d(*args)
    with pytest.raises(type(native.value)) as manual:
        hf_conv1d(*args)
    assert str(manual.value) == str(native.value)


def test_module_is_a_drop_in():
    torch.manual_seed(0)
    native = Conv1D(48, 16)
    torch.manual_seed(0)
    manual = ManualConv1D(48, 16)
    assert isinstance(manual, Conv1D) and repr(manual) == repr(native) == "Conv1D(nf=48, nx=16)"
    assert manual.state_dict().keys() == native.state_dict().keys()
    for a, b in zip(manual.state_dict().values(), native.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    x = torch.randn(2, 5, 16)
    assert torch.equal(manual(x), native(x))
    clone = pickle.loads(pickle.dumps(manual))
    assert type(clone) is ManualConv1D and torch.equal(clone(x), manual(x))
    assert registry.manual_class(Conv1D) is ManualConv1D
    assert "hf_conv1d" in manualgrad.functional.__all__
    assert "ManualConv1DFunction" in manualgrad.__all__


# ---- whole models: tiny random GPT-2 and BERT, from configs ------------------------------

LAYERS = 2
VOCAB, LENGTH, BATCH = 50, 7, 3


class Logits(nn.Module):
    """A Hugging Face model's logits as one tensor (what the comparisons differentiate)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, **kwargs):
        return self.model(input_ids=input_ids, **kwargs).logits


def _gpt2(attn: str, dropout: float = 0.1) -> nn.Module:
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=LAYERS, n_head=2,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
        bos_token_id=0, eos_token_id=0, attn_implementation=attn,
    )  # fmt: skip
    return Logits(transformers.GPT2LMHeadModel(config)).double()


def _bert(attn: str, dropout: float = 0.1) -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=LAYERS, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout, attn_implementation=attn,
    )  # fmt: skip
    return Logits(transformers.BertForMaskedLM(config)).double()


# What stays native, and why: Hugging Face's attention functions (eager and sdpa) and its
# activation modules call torch functions directly, inside a module's forward that is no
# native class of the table, so no conversion reaches them.
ATTENTION_NODES = {
    "BmmBackward0",  # scores Q K^T and output P V: torch.matmul
    "SoftmaxBackward0",  # eager: nn.functional.softmax of the scores
    "SafeSoftmaxBackward0",  # sdpa: F.scaled_dot_product_attention's math path (float64)
    "MulBackward0",  # the 1/sqrt(d) scaling (and NewGELU's products)
    "MulBackward1",
    "DivBackward0",  # older GPT-2 eager: scores / sqrt(d)
    "WhereBackward0",  # older GPT-2 eager: causal mask by torch.where
    "ScaledDotProductFlashAttentionForCpuBackward0",  # sdpa's fused CPU kernel (float32)
}
GPT2_ACTIVATION_NODES = {"PowBackward0", "TanhBackward0", "MulBackward0"}  # NewGELUActivation
BERT_ACTIVATION_NODES = {"GeluBackward0"}  # GELUActivation calls nn.functional.gelu


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_gpt2_gradients_match_native_and_only_attention_and_activation_stay_native(attn):
    native, manual = twins(lambda: _gpt2(attn).train())
    ids = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=torch.Generator().manual_seed(0))
    out = compare_models(native, manual, ids)
    coverage = backward_coverage(out)
    assert set(coverage.native) <= ATTENTION_NODES | GPT2_ACTIVATION_NODES, str(coverage)
    assert coverage.native["BmmBackward0"] == 2 * LAYERS  # per layer: Q K^T and P V
    assert coverage.native["TanhBackward0"] == coverage.native["PowBackward0"] == LAYERS
    hand = coverage.hand_derived
    assert hand["ManualConv1DFunction"] == 4 * LAYERS  # c_attn, c_proj, c_fc, mlp.c_proj
    assert hand["ManualLayerNormFunction"] == 2 * LAYERS + 1
    assert hand["ManualEmbeddingFunction"] == 2 and hand["ManualLinearFunction"] == 1
    lm = manual.model
    assert lm.lm_head.weight is lm.transformer.wte.weight  # tied weights stay tied


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_bert_gradients_match_native_and_only_attention_and_activation_stay_native(attn):
    native, manual = twins(lambda: _bert(attn).train())
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=gen)
    mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
    mask[0, -3:] = 0  # padding
    types = torch.randint(0, 2, (BATCH, LENGTH), generator=gen)
    out = compare_models(native, manual, ids, attention_mask=mask, token_type_ids=types)
    coverage = backward_coverage(out)
    assert set(coverage.native) <= ATTENTION_NODES | BERT_ACTIVATION_NODES, str(coverage)
    assert coverage.native["BmmBackward0"] == 2 * LAYERS
    assert coverage.native["GeluBackward0"] == LAYERS + 1  # and the masked-LM head's
    assert coverage.hand_derived["ManualLinearFunction"] == 6 * LAYERS + 2  # q k v o, ff x2


def test_conversion_report_names_the_native_activation_modules():
    _, manual = twins(lambda: _gpt2("eager"))
    report = manualgrad.conversion_report(manual)
    assert report.skipped == {
        f"model.transformer.h.{i}.mlp.act": "no hand-derived op for NewGELUActivation"
        for i in range(LAYERS)
    }
    assert "model.transformer.h.0.attn.c_attn" in report.converted


def test_check_gradients_on_gpt2_with_a_language_model_loss():
    _, manual = twins(lambda: _gpt2("sdpa"))
    ids = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=torch.Generator().manual_seed(1))

    def loss_fn(logits):  # next-token prediction
        return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))

    report = manualgrad.check_gradients(manual, ids, loss_fn=loss_fn)
    assert report.passed, str(report)
    assert report.loss_manual == pytest.approx(report.loss_native, rel=1e-12)


def test_gpt2_float32_matches_native():
    native, manual = twins(lambda: _gpt2("sdpa", dropout=0.0).float())
    ids = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=torch.Generator().manual_seed(2))
    compare_models(native, manual, ids)
