"""Property tests: hand-derived gradients equal autograd's for every legal input hypothesis finds.

Shapes with 0 to 4 leading dimensions (size 0 included), bias on and off, float32 and
float64, transposed, strided and expanded (stride 0) inputs and upstream gradients, every
MSE reduction, broadcasting targets and mixed dtypes. Each case goes through the shared
``compare_with_native`` (outputs, every gradient's value, dtype and shape).

Profiles: ``ci`` (the default: 50 derandomized examples per test, so CI is reproducible and
fast) and ``long`` (2000 random examples per test, failures kept in ``.hypothesis/``)::

    MANUALGRAD_HYPOTHESIS_PROFILE=long pytest tests/test_properties.py
"""

import os

import pytest
import torch
from conftest import DEVICES, compare_with_native, native_mse_loss, tolerances
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from manualgrad.functional import linear, mse_loss

settings.register_profile(
    "manualgrad-ci", max_examples=50, derandomize=True, database=None, deadline=None
)
settings.register_profile("manualgrad-long", max_examples=2000, deadline=None)
# Applied per test (not loaded globally), so other tests' hypothesis settings are untouched.
PROFILE = settings.get_profile(
    "manualgrad-" + os.environ.get("MANUALGRAD_HYPOTHESIS_PROFILE", "ci")
)

MIN_FEATURES = 0  # nn.Linear(0, 3) and nn.Linear(3, 0) are legal

dims = st.lists(st.integers(0, 4), min_size=0, max_size=4)
dtypes = st.sampled_from([torch.float32, torch.float64])


def _tensor(shape, layout, dtype, device, gen):
    """A leaf tensor and a view of it with ``shape`` and the requested memory layout.

    The view is taken inside the op under test, so its backward really sees the layout
    (``compare_with_native`` clones its inputs, which would make them contiguous).
    """
    shape = tuple(shape)
    if layout == "transposed" and len(shape) >= 2:
        base_shape = shape[:-2] + (shape[-1], shape[-2])
        view = lambda t: t.transpose(-1, -2)  # noqa: E731
    elif layout == "strided" and len(shape) >= 1:
        base_shape = shape[:-1] + (2 * shape[-1],)
        view = lambda t: t[..., ::2]  # noqa: E731
    elif layout == "expanded" and len(shape) >= 1:
        base_shape = (1,) * (len(shape) - 1) + shape[-1:]  # one row, stride 0 elsewhere
        view = lambda t: t.expand(shape)  # noqa: E731
    else:
        base_shape, view = shape, lambda t: t  # noqa: E731
    base = torch.randn(base_shape, generator=gen, dtype=dtype).to(device)
    return base, view


LAYOUTS = st.sampled_from(["contiguous", "transposed", "strided", "expanded"])
UPSTREAM = {
    "plain": lambda out: out,
    "transposed": lambda out: out.transpose(0, -1) if out.dim() >= 2 else out,
    "expanded": lambda out: out.sum(-1),  # the upstream gradient arrives with stride 0
}


@pytest.mark.parametrize("device", DEVICES)
@PROFILE
@given(
    lead=dims,
    features=st.tuples(st.integers(MIN_FEATURES, 6), st.integers(MIN_FEATURES, 6)),
    bias=st.booleans(),
    dtype=dtypes,
    layouts=st.tuples(LAYOUTS, st.sampled_from(["contiguous", "transposed"])),
    upstream=st.sampled_from(sorted(UPSTREAM)),
    needs=st.tuples(st.booleans(), st.booleans(), st.booleans()).filter(any),
    seed=st.integers(0, 2**16),
)
def test_linear_matches_native(device, lead, features, bias, dtype, layouts, upstream, needs, seed):
    in_features, out_features = features
    gen = torch.Generator().manual_seed(seed)
    x, x_view = _tensor([*lead, in_features], layouts[0], dtype, device, gen)
    w, w_view = _tensor([out_features, in_features], layouts[1], dtype, device, gen)
    b = torch.randn(out_features, generator=gen, dtype=dtype).to(device) if bias else None
    x.requires_grad_(needs[0])
    w.requires_grad_(needs[1] or not (needs[0] or bias))
    if b is not None:
        b.requires_grad_(needs[2])
    after = UPSTREAM[upstream]

    compare_with_native(
        lambda x, w, b: after(linear(x_view(x), w_view(w), b)),
        lambda x, w, b: after(F.linear(x_view(x), w_view(w), b)),
        x,
        w,
        b,
        seed=seed,
    )


@st.composite
def broadcast_shapes(draw):
    """An (input, target) pair of shapes that broadcast together, as F.mse_loss allows."""
    full = draw(dims)
    roles = draw(st.lists(st.sampled_from(["both", "input 1", "target 1"]), min_size=len(full)))
    shape_in = [1 if r == "input 1" else s for s, r in zip(full, roles, strict=False)]
    shape_tgt = [1 if r == "target 1" else s for s, r in zip(full, roles, strict=False)]
    drop_in, drop_tgt = draw(st.integers(0, len(full))), draw(st.integers(0, len(full)))
    return shape_in[drop_in:], shape_tgt[drop_tgt:]


@pytest.mark.filterwarnings("ignore:Using a target size")  # F.mse_loss warns on broadcasting
@pytest.mark.parametrize("device", DEVICES)
@PROFILE
@given(
    shapes=st.one_of(dims.map(lambda s: (s, s)), broadcast_shapes()),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    dtypes=st.tuples(dtypes, dtypes),
    layouts=st.tuples(LAYOUTS, LAYOUTS),
    target_grad=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_mse_matches_native(device, shapes, reduction, dtypes, layouts, target_grad, seed):
    gen = torch.Generator().manual_seed(seed)
    a, a_view = _tensor(shapes[0], layouts[0], dtypes[0], device, gen)
    b, b_view = _tensor(shapes[1], layouts[1], dtypes[1], device, gen)
    a.requires_grad_()
    b.requires_grad_(target_grad)
    compare_with_native(
        lambda a, b: mse_loss(a_view(a), b_view(b), reduction),
        lambda a, b: native_mse_loss(a_view(a), b_view(b), reduction),
        a,
        b,
        # a float32 operand's gradient is only as exact as float32, even if the loss is float64
        tol=tolerances(min(dtypes, key=lambda d: torch.finfo(d).bits)),
        seed=seed,
    )


# Once a bug: the backward folded leading dims with reshape(-1, 0), which is ambiguous.
@pytest.mark.parametrize("features", [(0, 3), (3, 0)], ids=str)
def test_zero_features(features):
    x = torch.randn(2, features[0], requires_grad=True)
    w = torch.randn(features[1], features[0], requires_grad=True)
    b = torch.randn(features[1], requires_grad=True)
    compare_with_native(linear, F.linear, x, w, b)


# Found by test_mse_matches_native: F.mse_loss broadcasts before it promotes, so a wider
# 0-dim operand sets the dtype (torch.result_type would ignore it).
@pytest.mark.filterwarnings("ignore:Using a target size")
@pytest.mark.parametrize("zero_dim", ["target", "input"])
def test_mixed_dtypes_with_a_wider_0dim_operand(zero_dim):
    wide = torch.randn((), dtype=torch.float64, requires_grad=True)
    narrow = torch.randn(3, dtype=torch.float32, requires_grad=True)
    a, b = (narrow, wide) if zero_dim == "target" else (wide, narrow)
    assert F.mse_loss(a.detach(), b.detach()).dtype == torch.float64
    out, _ = compare_with_native(mse_loss, native_mse_loss, a, b, tol=tolerances(torch.float32))
    assert out.dtype == torch.float64
