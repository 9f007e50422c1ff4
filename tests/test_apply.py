"""ManualOp's faces: plain eager calls are not bound per call; every face runs one backward."""

import inspect

import torch

from manualgrad import ManualLinearFunction, hand_derived_nodes
from manualgrad.functional import linear
from manualgrad.ops import linear as linear_op


def _count_signature_calls(monkeypatch):
    calls = []
    real = inspect.signature

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(inspect, "signature", counting)
    return calls


def test_eager_calls_take_the_old_style_twin_with_no_signature_binding(monkeypatch):
    x, w = torch.randn(4, 3, requires_grad=True), torch.randn(2, 3, requires_grad=True)
    calls = _count_signature_calls(monkeypatch)
    out = linear(x, w)
    assert calls == []
    assert out.grad_fn._forward_cls is linear_op._linear.eager
    assert hand_derived_nodes(out) == {"ManualLinearFunction": 1}
    ManualLinearFunction.apply(x, w, None)  # the setup_context class is bound per call
    assert calls, "the test cannot see binding: it would pass whatever the eager path does"


def test_every_face_shares_the_hand_derived_staticmethods():
    op = linear_op._linear
    for face in (op.eager, op.traceable):
        assert face.backward is ManualLinearFunction.backward
        assert face.hand_derived is ManualLinearFunction
    assert op.eager.jvp is ManualLinearFunction.jvp
    assert op.traceable.jvp is torch.autograd.Function.jvp  # Dynamo refuses a custom jvp
