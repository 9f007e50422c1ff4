import copy
import io

import pytest
import torch
from conftest import assert_hand_derived_only, compare_with_native
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.nn import functional as F

import manualgrad
from manualgrad import ManualLinear, hand_derived_nodes
from manualgrad.functional import linear

SHAPES = [(5,), (4, 5), (2, 3, 5), (2, 1, 3, 2, 5), (0, 5), (3, 0, 5)]


def _inputs(shape, bias, dtype, device, out_features=3):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen, dtype=dtype).to(device).requires_grad_()
    w = torch.randn(out_features, shape[-1], generator=gen, dtype=dtype).to(device)
    b = torch.randn(out_features, generator=gen, dtype=dtype).to(device) if bias else None
    return x, w.requires_grad_(), None if b is None else b.requires_grad_()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_and_gradgradcheck(shape, bias, device):
    x, w, b = _inputs(shape, bias, torch.float64, device)
    assert gradcheck(linear, (x, w, b), check_forward_ad=True, check_batched_grad=True)
    assert gradgradcheck(linear, (x, w, b), check_batched_grad=True)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_native(shape, bias, dtype, device):
    compare_with_native(linear, F.linear, *_inputs(shape, bias, dtype, device))


@pytest.mark.parametrize(
    "needs", [(True, False, False), (False, True, False), (False, False, True)]
)
def test_only_requested_gradients(needs):
    x, w, b = (
        t.detach().requires_grad_(r)
        for t, r in zip(_inputs((4, 5), True, torch.float64, "cpu"), needs, strict=True)
    )
    compare_with_native(linear, F.linear, x, w, b)
    out = linear(x, w, b)
    # What the backward itself returns: autograd drops a gradient formed for an input that
    # needs none, so the leaves' .grad could not tell.
    formed = out.grad_fn.apply(torch.ones_like(out))
    assert [g is not None for g in formed] == list(needs)


def test_backward_is_hand_derived():
    out = linear(*_inputs((4, 5), True, torch.float32, "cpu"))
    assert hand_derived_nodes(out) == {"ManualLinearFunction": 1}
    assert_hand_derived_only(out)


def test_odd_but_legal_inputs_match_native():
    x, w, b = _inputs((6, 5), True, torch.float64, "cpu")
    x_t = torch.randn(5, 6, dtype=torch.float64).t().requires_grad_()  # non-contiguous
    compare_with_native(linear, F.linear, x_t, w, b)
    x_e = torch.randn(1, 5, dtype=torch.float64).expand(4, 5).requires_grad_()  # expanded
    compare_with_native(linear, F.linear, x_e, w, b)
    x_s = torch.randn(4, 10, dtype=torch.float64)[:, ::2].requires_grad_()  # strided
    compare_with_native(linear, F.linear, x_s, w.t().contiguous().t(), b)
    x_nan = x.detach().clone()
    x_nan[0, 0], x_nan[1, 1] = float("nan"), float("inf")
    compare_with_native(linear, F.linear, x_nan.requires_grad_(), w, b)


def test_empty_batch_gives_zero_parameter_gradients():
    x, w, b = _inputs((0, 5), True, torch.float32, "cpu")
    linear(x, w, b).sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))
    assert torch.equal(b.grad, torch.zeros_like(b))
    assert x.grad.shape == (0, 5)


# ---- the module is a drop-in for nn.Linear ----------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_module_is_a_drop_in(bias):
    torch.manual_seed(0)
    manual = ManualLinear(5, 3, bias=bias, dtype=torch.float64)
    torch.manual_seed(0)
    native = nn.Linear(5, 3, bias=bias, dtype=torch.float64)
    assert isinstance(manual, nn.Linear)
    assert repr(manual) == repr(native).replace("Linear", "ManualLinear", 1)
    assert manual.state_dict().keys() == native.state_dict().keys()
    for key, value in native.state_dict().items():  # same init under the same seed
        assert torch.equal(manual.state_dict()[key], value)
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    out_m, out_n = manual(input=x), native(input=x)
    torch.testing.assert_close(out_m, out_n)
    g = torch.randn_like(out_n)
    grads_m = torch.autograd.grad(out_m, [x, *manual.parameters()], g)
    grads_n = torch.autograd.grad(out_n, [x, *native.parameters()], g)
    for gm, gn in zip(grads_m, grads_n, strict=True):
        torch.testing.assert_close(gm, gn)


def test_state_dict_interchange_both_ways():
    manual, native = ManualLinear(4, 2), nn.Linear(4, 2)
    for src, dst in [(manual, native), (native, manual)]:
        buffer = io.BytesIO()
        torch.save(src.state_dict(), buffer)
        buffer.seek(0)
        dst.load_state_dict(torch.load(buffer, weights_only=True))
        for key, value in src.state_dict().items():
            assert torch.equal(dst.state_dict()[key], value)


def test_module_on_meta_device_and_dtype():
    layer = ManualLinear(4, 2, device="meta", dtype=torch.float16)
    assert layer.weight.device.type == "meta" and layer.weight.dtype == torch.float16
    assert layer(torch.empty(3, 4, device="meta", dtype=torch.float16)).shape == (3, 2)


def test_public_api():
    assert set(manualgrad.__all__) >= {
        "ManualLinear",
        "ManualLinearFunction",
        "ManualMSELoss",
        "ManualMSEFunction",
        "functional",
    }


# ---- bad input: the native exception type, a message that names the problem ----------


def test_wrong_in_features_names_both_sizes():
    layer = ManualLinear(5, 3)
    with pytest.raises(RuntimeError, match=r"4 features.*in_features=5"):
        layer(torch.randn(2, 4))
    with pytest.raises(RuntimeError):
        F.linear(torch.randn(2, 4), layer.weight)  # the native type is the same


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        ((torch.tensor(1.0), torch.randn(3, 1)), "0-dim"),
        (
            (torch.randn(2, 4), torch.randn(3, 4, dtype=torch.float64)),
            "same dtype.*float32.*float64",
        ),
        (
            (torch.randn(2, 4), torch.randn(3, 4), torch.randn(3, dtype=torch.float64)),
            "bias torch.float64",
        ),
        (
            (torch.ones(2, 4, dtype=torch.long), torch.ones(3, 4, dtype=torch.long)),
            "floating-point.*int64",
        ),
        ((torch.randn(2, 4), torch.randn(3, 4), torch.randn(4)), r"bias must have shape \(3,\)"),
        ((torch.randn(2, 4), torch.randn(4)), "weight must be 2-D"),
        ((torch.randn(2, 4), torch.randn(3, 4, device="meta")), "same device.*cpu.*meta"),
    ],
    ids=["0-dim", "dtype", "bias-dtype", "integer", "bias-shape", "1-D weight", "device"],
)
def test_bad_input(args, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        linear(*args)


@pytest.mark.parametrize("shape", [(4, 5, 8), (2, 3, 4, 8), (0, 3, 8), (0, 0, 8)])
@pytest.mark.parametrize("bias", [True, False])
def test_batched_output_can_be_modified_in_place_like_native(shape, bias):
    """A (*, in) input gives an output that is not a view, as F.linear's is not to autograd:
    an in-place op next (ReLU(inplace=True)) works, with native's outputs and gradients."""
    torch.manual_seed(0)
    native = nn.Sequential(nn.Linear(8, 6, bias=bias), nn.ReLU(inplace=True), nn.Linear(6, 2))
    manual = copy.deepcopy(native)
    manualgrad.replace_modules(manual)
    x = torch.randn(*shape, requires_grad=True)
    out_n, out_m = native(x), manual(x)
    assert out_m._base is None
    torch.testing.assert_close(out_m, out_n, rtol=0, atol=0)
    grads_n = torch.autograd.grad(out_n.sum(), [x, *native.parameters()])
    grads_m = torch.autograd.grad(out_m.sum(), [x, *manual.parameters()])
    for gm, gn in zip(grads_m, grads_n, strict=True):
        torch.testing.assert_close(gm, gn)
