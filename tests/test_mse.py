import pytest
import torch
from conftest import assert_hand_derived_only, compare_with_native, native_mse_loss
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.nn import functional as F

from manualgrad import ManualMSELoss, hand_derived_nodes
from manualgrad.functional import mse_loss

REDUCTIONS = ["mean", "sum", "none"]
SHAPES = [(7,), (4, 3), (2, 3, 4), (2, 1, 3, 2, 2), (0,), (0, 3)]
# (input shape, target shape) pairs that broadcast, as F.mse_loss allows with a warning
BROADCAST = [((4, 3), (3,)), ((4, 1), (4, 3)), ((2, 1, 3), (4, 1)), ((3,), ())]


def _pair(shape_in, shape_tgt, dtype, device, target_grad=True):
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(shape_in, generator=gen, dtype=dtype).to(device).requires_grad_()
    b = torch.randn(shape_tgt, generator=gen, dtype=dtype).to(device).requires_grad_(target_grad)
    return a, b


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target_grad", [True, False])
def test_gradcheck_and_gradgradcheck(shape, reduction, target_grad, device):
    a, b = _pair(shape, shape, torch.float64, device, target_grad)

    def fn(a, b):
        return mse_loss(a, b, reduction)

    # The mean of nothing is NaN, and gradcheck cannot compare NaN tangents (native
    # F.mse_loss fails that check the same way), so forward AD is checked on non-empty input.
    forward_ad = a.numel() > 0 or reduction != "mean"
    assert gradcheck(fn, (a, b), check_forward_ad=forward_ad, check_batched_grad=True)
    assert gradgradcheck(fn, (a, b), check_batched_grad=True)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_native(shape, reduction, dtype, device):
    a, b = _pair(shape, shape, dtype, device)
    compare_with_native(
        lambda a, b: mse_loss(a, b, reduction),
        lambda a, b: F.mse_loss(a, b, reduction=reduction),
        a,
        b,
    )


@pytest.mark.filterwarnings("ignore:Using a target size")
@pytest.mark.parametrize(("shape_in", "shape_tgt"), BROADCAST, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_broadcast_gradients_sum_back_to_each_shape(shape_in, shape_tgt, reduction):
    a, b = _pair(shape_in, shape_tgt, torch.float64, "cpu")
    compare_with_native(
        lambda a, b: mse_loss(a, b, reduction),
        lambda a, b: F.mse_loss(a, b, reduction=reduction),
        a,
        b,
    )
    assert gradcheck(lambda a, b: mse_loss(a, b, reduction), (a, b))
    assert gradgradcheck(lambda a, b: mse_loss(a, b, reduction), (a, b))


def test_broadcast_warns_like_native():
    a, b = torch.randn(4, 1), torch.randn(4)
    with pytest.warns(UserWarning) as native:
        F.mse_loss(a, b)
    with pytest.warns(UserWarning) as manual:
        mse_loss(a, b)
    assert str(manual[0].message) == str(native[0].message)
    assert manual[0].filename == __file__  # points at the caller's line


def test_mixed_dtypes_promote_like_native():
    a = torch.randn(5, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    out, _ = compare_with_native(mse_loss, native_mse_loss, a, b)
    assert out.dtype == F.mse_loss(a, b).dtype == torch.float64
    compare_with_native(mse_loss, native_mse_loss, a, torch.arange(5))  # integer target
    assert mse_loss(a, torch.arange(5)).dtype == F.mse_loss(a, torch.arange(5)).dtype


def test_nan_inf_and_empty_like_native():
    a = torch.tensor([1.0, float("nan"), float("inf"), 2.0], requires_grad=True)
    b = torch.tensor([0.0, 1.0, 1.0, float("inf")])
    for reduction in REDUCTIONS:
        compare_with_native(
            lambda a, b, r=reduction: mse_loss(a, b, r),
            lambda a, b, r=reduction: F.mse_loss(a, b, reduction=r),
            a,
            b,
        )
    empty = torch.randn(0, requires_grad=True)
    assert torch.isnan(mse_loss(empty, torch.randn(0)))
    assert mse_loss(empty, torch.randn(0), "sum") == 0
    mse_loss(empty, torch.randn(0)).backward()
    assert empty.grad.shape == (0,)


def test_module_is_a_drop_in():
    for reduction in REDUCTIONS:
        manual, native = ManualMSELoss(reduction), nn.MSELoss(reduction=reduction)
        assert isinstance(manual, nn.MSELoss)
        assert manual.reduction == native.reduction
        a, b = _pair((3, 4), (3, 4), torch.float32, "cpu")
        compare_with_native(manual, native, a, b)
    assert ManualMSELoss().reduction == "mean"


def test_backward_is_hand_derived():
    a, b = _pair((3,), (3,), torch.float32, "cpu")
    loss = mse_loss(a, b)
    assert hand_derived_nodes(loss) == {"ManualMSEFunction": 1}
    assert_hand_derived_only(loss)


# ---- bad input: the native exception type, a message that names the problem ----------


def test_invalid_reduction():
    with pytest.raises(ValueError, match="avg is not a valid value for reduction"):
        mse_loss(torch.randn(3), torch.randn(3), "avg")
    with pytest.raises(ValueError, match="avg"):
        ManualMSELoss("avg")


def test_shapes_that_do_not_broadcast():
    with pytest.raises(RuntimeError, match=r"input shape \(3,\) and target shape \(4,\)"):
        mse_loss(torch.randn(3), torch.randn(4))


def test_integer_tensors():
    ints = torch.ones(3, dtype=torch.long)
    with pytest.raises(NotImplementedError, match="floating-point.*int64"):
        mse_loss(ints, ints)
    with pytest.raises(NotImplementedError):
        F.mse_loss(ints, ints)  # the native type is the same


def test_device_mismatch():
    with pytest.raises(RuntimeError, match="same device.*cpu.*meta"):
        mse_loss(torch.randn(3), torch.randn(3, device="meta"))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradient_penalty_matches_native(reduction):
    """loss + |dloss/dy_hat|^2 in one backward: the Function's backward then receives a
    gradient for L and one for its D output at once, and must add them."""

    def penalized(loss_fn):
        def fn(a, b):
            loss = loss_fn(a, b, reduction=reduction).sum()
            (grad,) = torch.autograd.grad(loss, a, create_graph=True)
            return loss + grad.square().sum()

        return fn

    a, b = _pair((4, 3), (4, 3), torch.float64, "cpu")
    compare_with_native(penalized(mse_loss), penalized(F.mse_loss), a, b)
