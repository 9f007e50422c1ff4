"""The fused formulas (manualgrad/ops/_fused.py): on large eager CPU tensors a backward runs
its hand-derived formula compiled into one loop. Shown here: that path is taken exactly
where it should be, its gradients are native's, they are the compiled formula's own (a
planted error in it reaches the gradient), and a compiler failure falls back with a warning.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import tolerances
from torch.nn import functional as F

from manualgrad import functional as M
from manualgrad.ops import _fused

ROWS, COLS = 512, 512  # 2^18 elements: exactly the size from which the compiled form is used
assert ROWS * COLS == _fused.MIN_NUMEL

# float32; LayerNorm's weight and bias gradients are sums over 512 rows, which differ from
# native's by their summation order (native against the unfused formula: 3e-5 at 78)
TOL = dict(rtol=1e-5, atol=1e-4)


def _norm_args(x):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(COLS, generator=gen, dtype=x.dtype, requires_grad=True)
    b = torch.randn(COLS, generator=gen, dtype=x.dtype, requires_grad=True)
    return (COLS,), w, b


#: (op, the fused formula its backward runs, extra arguments from the input)
CASES = [
    ("relu", "activations.ManualReLUFunction.chain", lambda x: ()),
    ("tanh", "activations.ManualTanhFunction.chain", lambda x: ()),
    ("sigmoid", "activations.ManualSigmoidFunction.chain", lambda x: ()),
    ("gelu", "activations.ManualGELUFunction.chain", lambda x: ()),
    ("silu", "activations.ManualSiLUFunction.chain", lambda x: ()),
    ("softmax", "softmax._symmetric_jacobian_product", lambda x: (-1,)),
    ("log_softmax", "softmax._log_softmax_vjp", lambda x: (-1,)),
    ("layer_norm", "layer_norm._vjp", _norm_args),
]


def _grads(fn, x, extra, upstream):
    x = x.detach().clone().requires_grad_()
    extra = tuple(e.detach().clone().requires_grad_() if torch.is_tensor(e) else e for e in extra)
    out = fn(x, *extra)
    leaves = [x] + [e for e in extra if torch.is_tensor(e)]
    return out, torch.autograd.grad(out, leaves, upstream)


@pytest.fixture
def counted():
    """The compiled-call counter of every fused formula, as a function of its name."""
    before = {name: run.state["compiled_calls"] for name, run in _fused.FUSED.items()}
    return lambda name: _fused.FUSED[name].state["compiled_calls"] - before[name]


@pytest.mark.parametrize("op, formula, extra", CASES, ids=[c[0] for c in CASES])
def test_large_eager_backward_runs_the_compiled_formula_and_matches_native(
    op, formula, extra, counted
):
    x = torch.randn(ROWS, COLS)
    upstream = torch.randn(ROWS, COLS)
    out_m, grads_m = _grads(getattr(M, op), x, extra(x), upstream)
    out_n, grads_n = _grads(getattr(F, op), x, extra(x), upstream)
    assert counted(formula) == 1
    torch.testing.assert_close(out_m, out_n, **TOL)
    for gm, gn in zip(grads_m, grads_n, strict=True):
        torch.testing.assert_close(gm, gn, **TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_large_forward_and_backward_are_the_compiled_formula_and_native(dtype, counted):
    """Forward (``(X * M) * s``) and backward (``(G * M) * s``) both run the compiled
    formula, and still equal native's ``X * noise`` and ``G * noise`` to the bit."""
    x = torch.randn(ROWS, COLS, dtype=dtype, requires_grad=True)
    upstream = torch.randn(ROWS, COLS, dtype=dtype)
    torch.manual_seed(0)
    out_m = M.dropout(x, 0.3)
    (grad_m,) = torch.autograd.grad(out_m, x, upstream)
    torch.manual_seed(0)
    out_n = F.dropout(x, 0.3)
    (grad_n,) = torch.autograd.grad(out_n, x, upstream)
    assert counted("dropout._times_mask") == 2
    assert torch.equal(out_m, out_n) and torch.equal(grad_m, grad_n)


def test_a_planted_error_in_the_compiled_formula_reaches_the_gradient(monkeypatch):
    """The gradient is the compiled formula's own output: scale what it returns and the
    gradient comes out scaled (so it is not native's kernel, nor the unfused ops)."""
    run = _fused.FUSED["activations.ManualTanhFunction.chain"]
    x = torch.randn(ROWS, COLS, requires_grad=True)
    upstream = torch.randn(ROWS, COLS)
    (right,) = torch.autograd.grad(M.tanh(x), x, upstream)  # makes the compiled form
    compiled = run.state["compiled"]
    monkeypatch.setitem(run.state, "compiled", lambda *args: 3 * compiled(*args))
    (wrong,) = torch.autograd.grad(M.tanh(x), x, upstream)
    torch.testing.assert_close(wrong, 3 * right)


@pytest.mark.parametrize(
    "why",
    ["small", "create_graph", "disabled", "vmap", "float64 small", "empty"],
)
def test_plain_formula_where_the_compiled_one_does_not_fit(why, counted, monkeypatch):
    name = "activations.ManualTanhFunction.chain"
    shape = (8, 8) if why in ("small", "float64 small") else (ROWS, COLS)
    if why == "empty":
        shape = (0, COLS)
    dtype = torch.float64 if why == "float64 small" else torch.float32
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    upstream = torch.randn(shape, dtype=dtype)
    if why == "disabled":
        monkeypatch.setattr(_fused, "ENABLED", False)
    if why == "vmap":
        grads = torch.func.vmap(torch.func.vjp(M.tanh, x)[1])(upstream.unsqueeze(0))
        expected = torch.func.vmap(torch.func.vjp(torch.tanh, x)[1])(upstream.unsqueeze(0))
    else:
        create_graph = why == "create_graph"
        grads = torch.autograd.grad(M.tanh(x), x, upstream, create_graph=create_graph)
        expected = torch.autograd.grad(torch.tanh(x), x, upstream)
    assert counted(name) == 0
    torch.testing.assert_close(grads[0], expected[0], **tolerances(dtype))


def test_inside_torch_compile_the_formula_is_traced_into_the_graph(counted):
    torch.compiler.reset()
    try:
        x = torch.randn(ROWS, COLS, requires_grad=True)
        upstream = torch.randn(ROWS, COLS)
        out = torch.compile(M.tanh, fullgraph=True)(x)
        (grad,) = torch.autograd.grad(out, x, upstream)
    finally:
        torch.compiler.reset()
    assert counted("activations.ManualTanhFunction.chain") == 0
    torch.testing.assert_close(
        grad, upstream * (1 - torch.tanh(x) ** 2), **tolerances(torch.float32)
    )


def test_a_formula_that_cannot_be_compiled_warns_once_and_runs_unfused(monkeypatch):
    def formula(v, y):
        return v * (1 - y * y)

    def broken_compile(fn, **kwargs):
        def fail(*args):
            raise RuntimeError("no C++ compiler")

        return fail

    run = _fused.fused(formula)
    del _fused.FUSED[f"test_fused.{formula.__qualname__}"]  # a throwaway, not an op's
    monkeypatch.setattr(torch, "compile", broken_compile)
    v, y = torch.randn(ROWS, COLS), torch.rand(ROWS, COLS)
    with torch.no_grad():
        with pytest.warns(UserWarning, match="could not compile .*formula.*no C\\+\\+ compiler"):
            first = run(v, y)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            second = run(v, y)  # no second warning: it stays unfused
    assert run.state["failed"]
    torch.testing.assert_close(first, v * (1 - y * y))
    torch.testing.assert_close(second, first)
