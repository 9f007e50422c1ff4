"""Classification losses with hand-derived backward passes: negative log-likelihood, and
cross-entropy with its log-softmax fused in. Each a Function, its functional form, its module."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd import Function

from manualgrad.ops import _loss_checks as checks
from manualgrad.ops import _torch_private
from manualgrad.ops._apply import ManualOp, autocast_dtype

__all__ = [
    "ManualNLLLossFunction",
    "nll_loss",
    "ManualNLLLoss",
    "ManualCrossEntropyFunction",
    "cross_entropy",
    "ManualCrossEntropyLoss",
]


class ManualNLLLossFunction(Function):
    r"""``L = reduce(-w[y_n] X[n, y_n])``, the negative log-likelihood, by hand.

    Shapes: ``X (N, C, *)`` log-probabilities, ``y (N, *)`` class indices, ``w (C,)`` class
    weights (all ones when None), where ``*`` is ``d_1, ..., d_K`` (none for ``(N, C)``). A
    *row* ``n`` is one of the ``N d_1 ... d_K`` positions; rows with ``y_n = ignore_index``
    are ignored: their loss and their gradient are 0.

    Forward: ``l_n = -w[y_n] X[n, y_n]``; ``'none'``: ``L = l  (N, *)``, ``'sum'``:
    ``L = sum_n l_n``, ``'mean'``: ``L = sum_n l_n / W`` with the *total weight*
    ``W = sum of w[y_n] over the rows kept`` (torch's convention: the count of rows kept
    when unweighted, not ``N``; all rows ignored gives ``0 / 0 = nan``).

    Backward. A row's loss touches one entry: ``dl_n/dX[n, j] = -w[y_n] [j = y_n]``. With
    the upstream gradient ``g`` (a scalar, or ``(N, *)`` for ``'none'``)::

        'mean':  dL/dX[n, j] = -w[y_n] g / W  [j = y_n]      (N, C, *)
        'sum':   dL/dX[n, j] = -w[y_n] g      [j = y_n]
        'none':  dL/dX[n, j] = -w[y_n] g_n    [j = y_n]

    zero elsewhere and on ignored rows: one scatter into zeros. ``L`` is linear in ``X``,
    so the backward is linear in ``g`` and double backward follows from it.

    Keeps ``y``, ``w`` and ``W`` (for ``'mean'``); native also keeps ``X``, of which the
    backward needs only the shape. The forward is native's ``nll_loss_forward`` kernel
    (which raises ``IndexError`` for a class index out of range), and ``W`` its second
    output: a tensor made in ``forward`` may only be saved as an output (pytorch issue
    104040). ``W`` is not differentiable, nor are ``y`` and ``w`` (the functional form
    refuses a ``w`` that requires grad, as native does).

    Forward-mode (jvp): ``L`` is linear in ``X``, so ``dL = reduce(-w[y_n] dX[n, y_n])``.

    Reference: the conventions (total weight, ignore_index, empty input) are those of
    PyTorch's ``aten/src/ATen/native/LossNLL.cpp``.
    """

    #: each gradient's formula, by forward argument (shown by manualgrad.explain)
    formulas = {
        "input": "dL/dX[n, j] = -w[y_n] g / W [j = y_n] ('sum': no / W)  (N, C, *)",
    }

    generate_vmap_rule = True

    @staticmethod
    def forward(input, target, weight, reduction, ignore_index):
        return _nll_forward(input, target, weight, reduction, ignore_index)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, target, weight, reduction, ignore_index = inputs
        _, total = output
        ctx.mark_non_differentiable(total)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(target, weight, total if reduction == "mean" else None)
        ctx.save_for_forward(target, weight, total)
        ctx.reduction, ctx.ignore_index, ctx.input_shape = reduction, ignore_index, inputs[0].shape

    @staticmethod
    def backward(ctx, grad_loss, _grad_total):
        if grad_loss is None or not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        target, weight, total = ctx.saved_tensors
        keep, safe = _kept(target, ctx.ignore_index)
        scale = grad_loss / total if ctx.reduction == "mean" else grad_loss  # () or (N, *)
        coef = -scale if weight is None else weight[safe] * -scale  # -w[y_n] g [/ W]  (N, *)
        src = torch.where(keep, coef, 0).unsqueeze(1)  # (N, 1, *)
        # zeros batched like src under vmap; the in-place scatter (no batching rule) outside
        # torch.func transforms, a large saving on CPU
        zeros = src.new_zeros(ctx.input_shape)
        scatter = zeros.scatter if _torch_private.functorch_active() else zeros.scatter_
        return scatter(1, safe.unsqueeze(1), src), None, None, None, None

    @staticmethod
    def jvp(ctx, input_t, *_):
        if input_t is None:  # only the input has a tangent
            return None, None
        target, weight, total = ctx.saved_tensors
        keep, safe = _kept(target, ctx.ignore_index)
        picked = -input_t.gather(1, safe.unsqueeze(1)).squeeze(1)  # -dX[n, y_n]  (N, *)
        picked = picked if weight is None else weight[safe] * picked
        return _reduce(torch.where(keep, picked, 0), ctx.reduction, total), None


class ManualCrossEntropyFunction(Function):
    r"""``L = reduce(-sum_j a_nj log p_nj)``, ``p = softmax(X)`` over the classes, by hand.

    Shapes: ``X (N, C, *)`` logits (``*`` is ``d_1, ..., d_K``, possibly none), ``w (C,)``
    class weights (ones when None), and a target of one of two kinds:

    - class indices ``y (N, *)``: ``a_nj = w_j ((1 - e) [j = y_n] + e / C)`` with label
      smoothing ``e``, and ``a_n = 0`` on rows with ``y_n = ignore_index``. Then
      ``l_n = (1 - e) (-w[y_n] log p_{n y_n}) + (e / C) (-sum_j w_j log p_nj)``, torch's
      ``(1 - e) nll + e smooth_loss / C``; ``'mean'`` divides the sum by the total weight
      ``W = sum of w[y_n] over the rows kept`` (the count kept, unweighted), both terms.
    - class probabilities ``q (N, C, *)`` (float, the input's shape): ``a_nj = w_j q'_nj``
      with ``q' = (1 - e) q + e / C``; ``'mean'`` divides by the row count ``R = N d_1..d_K``.

    Backward, from one row. ``log p_j = x_j - log sum_k exp x_k`` gives
    ``d log p_j / d x_k = [j = k] - p_k``, so for ``l = -sum_j a_j log p_j``::

        dl/dx_k = -a_k + p_k sum_j a_j = p_k s - a_k,     s = sum_j a_j

    (one class ``y``, weight ``w_y``, no smoothing: ``s = w_y`` and
    ``dl/dx = w_y (p - onehot(y))``). With ``r_n = g / W`` (or ``g / R``), ``g``, ``g_n`` for
    'mean', 'sum', 'none', and ``r_n = 0`` on ignored rows::

        dL/dX = r (p s - a)                          (N, C, *)
        class indices: s_n = (1 - e) w[y_n] + (e / C) sum_j w_j, and ``a`` is a scatter
                       of (1 - e) w[y_n] at y_n plus (e / C) w_j everywhere
        dL/dq = -(1 - e) r w log p                   (N, C, *)
        dL/dw = -sum over n, * of r q' log p         (C,)

    ``q`` and ``w`` are differentiable with probability targets only (native refuses a
    ``w`` that requires grad with class indices; the functional form does too).

    Keeps ``log p`` (an output), ``y`` or ``q``, ``w`` and ``W`` (for 'mean', class indices):
    what native's ``log_softmax`` and ``nll_loss`` nodes keep (native keeps ``log p``
    twice). ``log p`` and ``W`` are outputs because a tensor made in ``forward`` may only be
    saved as an output (pytorch issue 104040): ``log p`` on the graph through this Function,
    whose backward then also receives ``G = dL'/d log p`` (double backward only) and adds
    ``G - p sum_j G_j``, the log-softmax backward. ``W`` is not differentiable. One case
    keeps more than native: probability targets where only ``w`` requires grad (native
    keeps the product ``q' log p``; this keeps ``log p`` and ``q``).

    Forward-mode (jvp): ``d log p = dX - sum_j p_j dX_j``; ``L`` is linear in ``log p``, in
    ``q'`` and in ``w``, so ``dL = L(d log p) + L(q' -> (1 - e) dq) + L(w -> dw)``. The
    forward calls native's ``log_softmax`` and ``nll_loss_forward`` kernels.

    References: Goodfellow, Bengio and Courville, *Deep Learning* (2016), 6.2.2.3 (softmax
    and its log-likelihood gradient ``p - onehot``); Szegedy et al., *Rethinking the
    Inception Architecture*, arXiv:1512.00567 (label smoothing); PyTorch's
    ``aten/src/ATen/native/LossNLL.cpp`` (``cross_entropy_loss_label_smoothing`` and
    ``cross_entropy_loss_prob_target``: the weights and 'mean' conventions matched here).
    """

    #: each gradient's formula, by forward argument (shown by manualgrad.explain)
    formulas = {
        "input": "dL/dX = r (p s - a), r = g / W (or g / R)  (N, C, *)",
        "target": "dL/dq = -(1 - e) r w log p  (N, C, *)",
        "weight": "dL/dw = -sum over n, * of r q' log p  (C,)",
    }

    generate_vmap_rule = True

    @staticmethod
    def forward(input, target, weight, reduction, ignore_index, label_smoothing):
        logp = torch.log_softmax(input, 1)  # (N, C, *)
        eps = label_smoothing
        if target.is_floating_point():
            q = _smoothed(target, eps, input.shape[1])
            loss = _prob_loss(logp, q, weight, reduction, _rows(logp))
            return loss, logp, loss.new_full((), _rows(logp))
        nll, total = _nll_forward(logp, target, weight, reduction, ignore_index)
        return (
            _index_loss(nll, logp, target, weight, reduction, ignore_index, eps, total),
            logp,
            total,
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, reduction, ignore_index, label_smoothing = inputs
        _, logp, total = output
        ctx.mark_non_differentiable(total)
        ctx.set_materialize_grads(False)  # the log p output is unused outside double backward
        need_x, need_q, need_w = ctx.needs_input_grad[:3]
        if target.is_floating_point():  # each gradient keeps what its formula reads
            ctx.save_for_backward(
                logp, target if need_x or need_w else None, weight if need_x or need_q else None
            )
        else:
            ctx.save_for_backward(logp, target, weight, total if reduction == "mean" else None)
        ctx.save_for_forward(logp, target, weight, total)
        ctx.reduction, ctx.ignore_index, ctx.eps = reduction, ignore_index, label_smoothing
        ctx.probs, ctx.rows = target.is_floating_point(), _rows(logp)
        ctx.dtypes = input.dtype, target.dtype, _dtype(weight)

    @staticmethod
    def backward(ctx, grad_loss, grad_logp, _grad_total):
        logp, target, weight, *total = ctx.saved_tensors
        grad_x = grad_q = grad_w = None
        if grad_loss is not None and ctx.probs:
            grad_x, grad_q, grad_w = _prob_grads(ctx, logp, target, weight, grad_loss)
        elif grad_loss is not None:
            scale = grad_loss / total[0] if ctx.reduction == "mean" else grad_loss
            grad_x = _index_grad(logp, target, weight, ctx.ignore_index, ctx.eps, scale)
        if grad_logp is not None and ctx.needs_input_grad[0]:
            # through the log p output: the log-softmax backward, G - p sum_j G_j  (N, C, *)
            extra = grad_logp - logp.exp() * grad_logp.sum(1, keepdim=True)
            grad_x = extra if grad_x is None else grad_x + extra
        if grad_x is not None:
            grad_x = grad_x.to(ctx.dtypes[0])
        return grad_x, grad_q, grad_w, None, None, None

    @staticmethod
    def jvp(ctx, input_t, target_t, weight_t, *_):
        logp, target, weight, total = ctx.saved_tensors
        red, eps, logp_t = ctx.reduction, ctx.eps, None  # d log p = dX - sum_j p_j dX_j
        if input_t is not None:
            logp_t = input_t - (logp.exp() * input_t).sum(1, keepdim=True)  # (N, C, *)
        if not ctx.probs:
            if logp_t is None:  # only the input has a tangent with class indices
                return None, None, None
            nll_t, _ = _nll_forward(logp_t, target, weight, red, ctx.ignore_index)
            return (
                _index_loss(nll_t, logp_t, target, weight, red, ctx.ignore_index, eps, total),
                logp_t,
                None,
            )
        q, terms = _smoothed(target, eps, logp.shape[1]), []
        if logp_t is not None:
            terms.append(_prob_loss(logp_t, q, weight, red, ctx.rows))
        if target_t is not None:
            terms.append(_prob_loss(logp, (1 - eps) * target_t, weight, red, ctx.rows))
        if weight_t is not None:
            terms.append(_prob_loss(logp, q, weight_t, red, ctx.rows))
        # torch asserts on a None tangent for log p here: a zero one when X has none
        logp_t = torch.zeros_like(logp) if logp_t is None else logp_t
        return sum(terms[1:], terms[0]), logp_t, None


# ---- the formulas both Functions share ----------------------------------------------------

_ENUM = {"none": 0, "mean": 1, "sum": 2}  # torch's reduction enum


def _nll_forward(logp, target, weight, reduction, ignore_index) -> tuple[Tensor, Tensor]:
    """Native ``nll_loss_forward`` (``nll_loss2d_forward`` for ``(N, C, *)``, viewed as
    ``nll_loss_nd`` does): the loss and the total weight ``W``."""
    enum, aten = _ENUM[reduction], torch.ops.aten
    if logp.dim() == 2:
        return aten.nll_loss_forward(logp, target, weight, enum, ignore_index)
    if logp.dim() == 4:
        return aten.nll_loss2d_forward(logp, target, weight, enum, ignore_index)
    n, c, k = logp.shape[0], logp.shape[1], logp.shape[2:].numel()
    loss, total = aten.nll_loss2d_forward(
        logp.reshape(n, c, 1, k), target.reshape(n, 1, k), weight, enum, ignore_index
    )
    return (loss.view(target.shape) if reduction == "none" else loss), total


def _kept(target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Per row ``(N, *)``: whether it is kept, and its class index made safe to gather (0
    when ignored). uint8 targets compare and index as int64."""
    target = target.long()
    keep = target != ignore_index
    return keep, torch.where(keep, target, 0)


def _reduce(per_row: Tensor, reduction: str, divisor: Tensor | int) -> Tensor:
    if reduction == "none":
        return per_row
    total = per_row.sum()
    return total / divisor if reduction == "mean" else total


def _rows(logp: Tensor) -> int:
    """``R = N d_1 ... d_K``, the number of rows (0 for an empty class dimension)."""
    return logp.numel() // logp.shape[1] if logp.shape[1] else 0


def _dtype(t: Tensor | None) -> torch.dtype | None:
    return None if t is None else t.dtype


def _classes(weight: Tensor, ndim: int) -> Tensor:
    """``w (C,)`` viewed to broadcast along the class dimension of an ``ndim``-dim tensor."""
    return weight.view(-1, *([1] * (ndim - 2)))


def _smoothed(target: Tensor, eps: float, n_classes: int) -> Tensor:
    """``q' = (1 - e) q + e / C``, in the target's dtype as in native."""
    return target * (1 - eps) + eps / n_classes if eps > 0 else target


def _index_loss(nll, logp, target, weight, reduction, ignore_index, eps, total) -> Tensor:
    """Class indices: ``(1 - e) nll + (e / C) smooth(log p)``, torch's formula, reduced, from
    ``nll = nll_loss(log p)``; linear in ``log p``, so the jvp calls it on the tangent."""
    if eps == 0:
        return nll
    summed = logp.sum(1) if weight is None else (logp * _classes(weight, logp.dim())).sum(1)
    keep = target.long() != ignore_index
    smooth = _reduce(torch.where(keep, -summed, 0), reduction, total)  # (N, *) or ()
    return (1 - eps) * nll + (eps / logp.shape[1]) * smooth


def _prob_loss(logp, q, weight, reduction, rows) -> Tensor:
    """``reduce(-sum_j w_j q_nj log p_nj)``, dividing by the row count for 'mean', as native
    (the mean of nothing is nan). Linear in each of ``log p``, ``q`` and ``w``."""
    product = logp * q if weight is None else logp * q * _classes(weight, logp.dim())
    if reduction == "none":
        return -product.sum(1)
    total = -product.sum()
    return total / rows if reduction == "mean" else total


def _addcmul(fresh: Tensor, a: Tensor, b: Tensor, value: float) -> Tensor:
    """``fresh + value a b``, written into ``fresh`` (a product just made, batched like
    every operand under vmap and saved by no backward node): no ``(N, C, *)`` temporary, a
    large saving on CPU. Out of place under a torch.func transform, which has no batching
    rule for ``addcmul_``."""
    if _torch_private.functorch_active():
        return torch.addcmul(fresh, a, b, value=value)
    return fresh.addcmul_(a, b, value=value)


def _index_grad(logp, target, weight, ignore_index, eps, scale) -> Tensor:
    """``dL/dX = r (p s - a)`` for class indices (see the Function's docstring)  (N, C, *)."""
    keep, safe = _kept(target, ignore_index)
    r = torch.where(keep, scale, 0)  # per row: g / W, g or g_n; 0 on ignored rows  (N, *)
    wr = r if weight is None else weight[safe] * r  # w[y_n] r_n  (N, *)
    n_classes = logp.shape[1]
    sr = wr  # s_n r_n = (1 - e) w[y_n] r_n + (e / C) (sum_j w_j) r_n
    if eps > 0:
        total = n_classes if weight is None else weight.sum()
        sr = (1 - eps) * wr + (eps / n_classes) * total * r
    grad = logp.exp() * sr.unsqueeze(1)  # p s r  (N, C, *)
    if eps > 0:  # minus the uniform part of a r: (e / C) w_j r_n
        w = grad.new_ones(()) if weight is None else _classes(weight, grad.dim())
        grad = _addcmul(grad, w, r.unsqueeze(1), -eps / n_classes)
    # minus the class part of a r: (1 - e) w[y_n] r_n at y_n
    class_part = (-(1 - eps) * wr).unsqueeze(1)  # (N, 1, *)
    if torch.compiler.is_compiling():
        # traced: as a comparison with the class index, which inductor fuses with the rest
        # into one loop (a scatter is a kernel of its own)
        classes = _classes(torch.arange(n_classes, device=grad.device), grad.dim())  # (C, 1..)
        return grad + torch.where(classes == safe.unsqueeze(1), class_part, 0)
    # eager: written into ``grad`` (fresh, batched like every operand under vmap, and saved
    # by no backward node)
    return grad.scatter_add_(1, safe.unsqueeze(1), class_part)


def _prob_grads(ctx, logp, target, weight, grad_loss):
    """``dL/dX``, ``dL/dq`` and ``dL/dw`` for probability targets, each when asked for."""
    need_x, need_q, need_w = ctx.needs_input_grad[:3]
    eps, ndim = ctx.eps, logp.dim()
    if ctx.reduction == "none":
        r = grad_loss.unsqueeze(1)  # g_n  (N, 1, *)
    else:
        r = grad_loss / ctx.rows if ctx.reduction == "mean" else grad_loss  # ()
    w = None if weight is None else _classes(weight, ndim)  # (C, 1, ...)
    grad_x = grad_q = grad_w = None
    if need_x:
        a = _smoothed(target, eps, logp.shape[1])
        a = a if w is None else a * w  # a = w q'  (N, C, *)
        sr = a.sum(1, keepdim=True) * r  # s r  (N, 1, *)
        grad_x = _addcmul(logp.exp() * sr, a, r, -1)  # r (p s - a)
    if need_q:
        grad_q = logp * r if w is None else logp * w * r
        grad_q = (-(1 - eps) * grad_q).to(ctx.dtypes[1])  # -(1 - e) r w log p  (N, C, *)
    if need_w:
        per_class = _smoothed(target, eps, logp.shape[1]) * logp * r  # (N, C, *)
        dims = [d for d in range(ndim) if d != 1]
        grad_w = (-per_class.sum(dims)).to(ctx.dtypes[2])  # (C,)
    return grad_x, grad_q, grad_w


_nll = ManualOp(ManualNLLLossFunction)
_cross_entropy = ManualOp(ManualCrossEntropyFunction)


def _widened(*tensors: Tensor | None):
    """Autocast runs these losses in float32: lift float16/bfloat16 tensors, as native does."""
    return tuple(
        t.float() if t is not None and t.dtype in (torch.float16, torch.bfloat16) else t
        for t in tensors
    )


def _float32_under_autocast(loss, input, target, weight, *options, lift_target=False) -> Tensor:
    """``loss(input, target, weight, *options)``; under autocast, as native runs these losses:
    with autocast off and the input and weight (the target too, if ``lift_target``: a
    class-probability target) lifted to float32 from float16/bfloat16."""
    if autocast_dtype(input.device.type) is None:
        return loss(input, target, weight, *options)
    input, weight = _widened(input, weight)
    if lift_target:
        (target,) = _widened(target)
    with torch.autocast(input.device.type, enabled=False):
        return loss(input, target, weight, *options)


def _batched(input: Tensor, target: Tensor, probs: bool) -> tuple[Tensor, Tensor]:
    """An unbatched ``(C,)`` input (with target ``()``/``(1,)`` or ``(C,)``) as a batch of one."""
    return input.unsqueeze(0), target.unsqueeze(0) if probs else target.reshape(1)


# ---- the functional forms ----------------------------------------------------------------


def nll_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Functional form of :class:`ManualNLLLoss`.

    Same signature, semantics, errors and warnings as :func:`torch.nn.functional.nll_loss`;
    see :class:`ManualNLLLossFunction` for the derivation of the backward.
    """
    checks.check_types("nll_loss", input, target, weight, ignore_index)
    reduction = checks.reduction_of(size_average, reduce, reduction)
    return _float32_under_autocast(_nll_loss, input, target, weight, reduction, int(ignore_index))


def _nll_loss(input, target, weight, reduction, ignore_index) -> Tensor:
    checks.check_index_target("nll_loss", input, target, weight)
    if input.dim() == 1:
        input, target = _batched(input, target, probs=False)
        loss = _nll(input, target, weight, reduction, ignore_index)[0]
        return loss.squeeze(0) if reduction == "none" else loss
    return _nll(input, target, weight, reduction, ignore_index)[0]


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Functional form of :class:`ManualCrossEntropyLoss`.

    Same signature, semantics, errors and warnings as
    :func:`torch.nn.functional.cross_entropy`: class-index targets ``(N, *)`` or ``()``, and
    class-probability targets (float, the input's shape); see
    :class:`ManualCrossEntropyFunction` for the derivation of the backward.
    """
    checks.check_types("cross_entropy", input, target, weight, ignore_index)
    reduction = checks.reduction_of(size_average, reduce, reduction)
    return _float32_under_autocast(
        _cross_entropy_loss, input, target, weight, reduction, int(ignore_index),
        label_smoothing, lift_target=True,
    )  # fmt: skip


def _cross_entropy_loss(input, target, weight, reduction, ignore_index, label_smoothing):
    probs = input.shape == target.shape  # native's rule: probabilities iff the same shape
    if probs:
        checks.check_prob_target(input, target, weight, ignore_index)
    eps = checks.label_smoothing(label_smoothing)
    if not probs:
        if input.dim() == 0:
            raise IndexError("cross_entropy: input must have a class dimension, got a 0-dim tensor")
        checks.check_float_input("cross_entropy", input)
        checks.check_index_target("cross_entropy", input, target, weight)
    if input.dim() == 1:
        input, target = _batched(input, target, probs)
        loss = _cross_entropy(input, target, weight, reduction, ignore_index, eps)[0]
        return loss.squeeze(0) if reduction == "none" else loss
    return _cross_entropy(input, target, weight, reduction, ignore_index, eps)[0]


# ---- the modules -------------------------------------------------------------------------


class ManualNLLLoss(nn.NLLLoss):
    r"""Drop-in for :class:`torch.nn.NLLLoss` whose backward is :class:`ManualNLLLossFunction`.

    Args:
        weight: a rescaling weight for each class, shape ``(C,)``. Default: all ones.
        size_average, reduce: deprecated (see ``reduction``), as in torch.
        ignore_index: a target value that is ignored: its loss and gradient are 0, and it
            does not count in the 'mean'. Default: -100.
        reduction: ``'mean'`` (default: divided by the total weight of the rows kept),
            ``'sum'`` or ``'none'``.

    Shape:
        - Input: ``(N, C)``, ``(C,)`` or ``(N, C, d_1, ..., d_K)``: log-probabilities.
        - Target: ``(N,)``, ``()`` or ``(N, d_1, ..., d_K)``: class indices in ``[0, C)``.
        - Output: a scalar, or the target's shape for ``reduction='none'``.

    Examples::

        >>> loss = ManualNLLLoss()
        >>> x = torch.randn(3, 5, requires_grad=True)
        >>> loss(torch.log_softmax(x, 1), torch.tensor([1, 0, 4])).backward()
    """

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return nll_loss(
            input, target, weight=self.weight, ignore_index=self.ignore_index,
            reduction=self.reduction,
        )  # fmt: skip


class ManualCrossEntropyLoss(nn.CrossEntropyLoss):
    r"""Drop-in for :class:`torch.nn.CrossEntropyLoss` whose backward is
    :class:`ManualCrossEntropyFunction` (log-softmax and the loss in one hand-derived node).

    Args:
        weight: a rescaling weight for each class, shape ``(C,)``. Default: all ones.
        size_average, reduce: deprecated (see ``reduction``), as in torch.
        ignore_index: a class-index target value that is ignored (loss and gradient 0, not
            counted in the 'mean'). Default: -100.
        reduction: ``'mean'`` (default), ``'sum'`` or ``'none'``. For class indices 'mean'
            divides by the total weight of the rows kept, for probabilities by the row count.
        label_smoothing: ``e`` in ``[0, 1]``: the target becomes ``(1 - e) target + e / C``.

    Shape:
        - Input: ``(N, C)``, ``(C,)`` or ``(N, C, d_1, ..., d_K)``: logits.
        - Target: class indices ``(N,)``, ``()`` or ``(N, d_1, ..., d_K)`` in ``[0, C)``, or
          class probabilities of the input's shape (floating point).
        - Output: a scalar, or ``(N,)``, ``()``, ``(N, d_1, ..., d_K)`` for ``reduction='none'``.

    Examples::

        >>> loss = ManualCrossEntropyLoss(label_smoothing=0.1)
        >>> loss(torch.randn(3, 5, requires_grad=True), torch.tensor([1, 0, 4])).backward()
    """

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(
            input, target, weight=self.weight, ignore_index=self.ignore_index,
            reduction=self.reduction, label_smoothing=self.label_smoothing,
        )  # fmt: skip
