"""Shared by the tests of whole models (test_transformer, test_huggingface): a native model
against its converted copy, outputs and the gradients of every input and parameter."""

from __future__ import annotations

from collections.abc import Callable

import torch
from conftest import tolerances
from torch import nn

import manualgrad


def twins(build: Callable[[], nn.Module], seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """``build()`` twice under the same seed: the native model, and the same model (equal
    state_dict) converted by ``replace_modules``. Not a deep copy: a deep-copied
    ``nn.TransformerDecoderLayer`` whose activation is a module runs ``F.relu`` instead
    (its ``__setstate__`` looks for ``activation`` in ``__dict__``, torch 2.13-2.14)."""
    torch.manual_seed(seed)
    native = build()
    torch.manual_seed(seed)
    manual = manualgrad.replace_modules(build())
    for (k, a), (k2, b) in zip(
        native.state_dict().items(), manual.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b), k
    manual.train(native.training)
    return native, manual


def compare_models(native: nn.Module, manual: nn.Module, *args, tol=None, seed=0, **kwargs):
    """Run ``native`` and ``manual`` (a converted copy) on clones of ``args`` under the same
    seed (dropout draws the same masks) and assert that their outputs agree, and, for a
    random upstream gradient, the gradients of every floating input that requires grad and
    of every parameter (dtypes and shapes exactly). Returns the manual output."""

    def clone(t):
        if not isinstance(t, torch.Tensor):
            return t
        return t.detach().clone().requires_grad_(t.requires_grad)

    in_n, in_m = [clone(a) for a in args], [clone(a) for a in args]
    kw_n = {k: clone(v) for k, v in kwargs.items()}
    kw_m = {k: clone(v) for k, v in kwargs.items()}
    torch.manual_seed(seed)
    out_n = native(*in_n, **kw_n)
    torch.manual_seed(seed)
    out_m = manual(*in_m, **kw_m)
    tol = tol or tolerances(out_n.dtype)
    assert out_m.shape == out_n.shape and out_m.dtype == out_n.dtype
    torch.testing.assert_close(out_m, out_n, **tol, equal_nan=True)

    def wrt(inputs, kw, model):
        tensors = list(inputs) + list(kw.values())
        grads = [t for t in tensors if isinstance(t, torch.Tensor) and t.requires_grad]
        return grads + [p for p in model.parameters() if p.requires_grad]

    wrt_n, wrt_m = wrt(in_n, kw_n, native), wrt(in_m, kw_m, manual)
    assert len(wrt_n) == len(wrt_m) > 0
    gen = torch.Generator().manual_seed(seed)
    upstream = torch.randn(out_n.shape, generator=gen, dtype=out_n.dtype).to(out_n.device)
    grads_n = torch.autograd.grad(out_n, wrt_n, upstream, allow_unused=True)
    grads_m = torch.autograd.grad(out_m, wrt_m, upstream, allow_unused=True)
    for t, gm, gn in zip(wrt_m, grads_m, grads_n, strict=True):
        assert (gm is None) == (gn is None)
        if gn is None:
            continue
        assert gm.shape == gn.shape == t.shape and gm.dtype == gn.dtype
        torch.testing.assert_close(gm, gn, **tol, equal_nan=True)
    return out_m
