"""Gradient audit: live proof, during real training, that the hand-derived gradients are right
and that they are the ones the model trains on."""

from __future__ import annotations

import copy

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor, nn

import manualgrad
from manualgrad.check import Coverage, backward_coverage

__all__ = ["GradientAudit", "native_twin"]


def native_twin(module: nn.Module) -> nn.Module:
    """A copy of ``module`` in which every manual module is its native class again (the table
    in :mod:`manualgrad.registry`), with the same parameter values.

    The manual classes add nothing to their native base classes but ``forward``, so on a
    deep copy (which keeps shared submodules shared) :func:`manualgrad.restore_modules`
    gives exactly the native modules, holding the same weights.
    """
    return manualgrad.restore_modules(copy.deepcopy(module))


class GradientAudit(Callback):
    """Every ``every_n_steps`` training steps, recompute the batch's gradients with native
    autograd and log how far the hand-derived ones are from them, and how much of the
    training loss's backward was hand-derived.

    On an audited step the gradients the optimizer is about to use (hand-derived, already
    averaged across processes under DDP) are compared with those of a native twin of the
    model (see :func:`native_twin`), run on the same batch with the same weights and the same
    random state (a dropout draws the same mask). Logged:

    - ``audit/grad_max_abs_diff``: the largest ``|g_manual - g_native|`` over all parameters.
    - ``audit/grad_max_rel_diff``: the largest, over parameters, of that parameter's largest
      absolute difference divided by its largest native gradient entry.
    - ``audit/hand_derived_nodes`` and ``audit/native_math_nodes``: in the backward graph of
      the model's loss on the batch, the nodes of hand-derived Functions, and the native
      nodes with math in them (views, reshapes and the like are neither; see
      :func:`manualgrad.check.backward_coverage`). With every op hand-derived the second is 0.

    - ``audit/op_max_abs_diff/<Function>`` (one tag per hand-derived op type): each op's
      *local* difference, its own vector-Jacobian product against native autograd's from
      the same inputs and incoming gradient (:func:`manualgrad.explain`): it names the op
      whose derivation is wrong, where the differences above name the parameters.
    - with a TensorBoard logger, ``audit/grad/<parameter>``: a histogram of each gradient,
      and on the first audited step ``audit/explain``: the explanation's table as text.

    Float32 round-off puts both differences near 1e-7; a wrong derivative shows up as order 1.
    :attr:`last` holds the latest audit's values, and under ``"coverage"`` its text
    (``"hand-derived 5 of 5 backward nodes; native: none"``).

    The model must have ``net`` (the network) and ``loss_fn`` (the loss) attributes, as
    :class:`~manualgrad.lightning.Regressor` and :class:`~manualgrad.lightning.Classifier`
    do, its training loss must be ``loss_fn(net(x), y)`` and its batches ``(x, y)``.
    Gradient accumulation is not supported (the gradients would span several batches).
    The audit's own forward passes leave the random state of training as it was.

    Args:
        every_n_steps: audit every this many optimizer steps (step 0 included); ``0`` turns
            the audit off, and then it does nothing at all.
    """

    def __init__(self, every_n_steps: int = 0) -> None:
        if every_n_steps < 0:
            raise ValueError(
                f"every_n_steps must be >= 0 (0 turns the audit off), got {every_n_steps}"
            )
        self.every_n_steps = every_n_steps
        self.last: dict[str, float | str] | None = None
        self._batch = None
        self._rng: tuple[Tensor, list[int], list[Tensor]] | None = None
        self._twin: tuple[nn.Module, nn.Module] | None = None
        #: the latest audited step's :func:`manualgrad.explain` (None before the first)
        self.explanation: manualgrad.Explanation | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.every_n_steps or stage != "fit":
            return
        if not (hasattr(pl_module, "net") and hasattr(pl_module, "loss_fn")):
            raise TypeError(
                f"GradientAudit needs a model with `net` and `loss_fn` attributes; "
                f"{type(pl_module).__name__} has none"
            )
        if trainer.accumulate_grad_batches != 1:
            raise ValueError("GradientAudit does not support accumulate_grad_batches > 1")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._batch = batch
            device = pl_module.device
            cuda = [device.index or 0] if device.type == "cuda" else []
            self._rng = (
                torch.get_rng_state(),
                cuda,
                [torch.cuda.get_rng_state(d) for d in cuda],
            )

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._batch is None:
            return
        batch, self._batch = self._batch, None
        abs_diff, rel_diff, coverage = self._audit(trainer, pl_module, batch)
        self.last = {
            "grad_max_abs_diff": abs_diff,
            "grad_max_rel_diff": rel_diff,
            "hand_derived_nodes": float(sum(coverage.hand_derived.values())),
            "native_math_nodes": float(sum(coverage.native.values())),
            "coverage": str(coverage),
        }
        # Straight to the loggers, once, at this step: a value given to `self.log` here would
        # be logged again on the following steps.
        metrics = {f"audit/{k}": v for k, v in self.last.items() if not isinstance(v, str)}
        explanation = self._explain(pl_module, batch)
        metrics |= _op_differences(explanation)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, trainer.global_step)
        self._log_tensorboard(trainer, pl_module, explanation, first=self.explanation is None)
        self.explanation = explanation

    def _explain(self, pl_module, batch) -> manualgrad.Explanation:
        """:func:`manualgrad.explain` of the step's batch, from the step's random state."""
        x, y = batch
        with torch.random.fork_rng(devices=self._rng[1]):
            self._replay_rng()
            return manualgrad.explain(pl_module.net, x, target=y, loss_fn=pl_module.loss_fn)

    def _log_tensorboard(self, trainer, pl_module, explanation, first: bool) -> None:
        """Histograms of the gradients the optimizer is about to use, and (on the first audit)
        the explanation as text, for each TensorBoard logger."""
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                continue
            writer = logger.experiment
            for name, p in pl_module.named_parameters():
                if p.grad is not None:
                    writer.add_histogram(f"audit/grad/{name}", p.grad.detach(), trainer.global_step)
            if first:
                text = "\n".join("    " + line for line in str(explanation).splitlines())
                writer.add_text("audit/explain", text, trainer.global_step)

    def _audit(self, trainer, pl_module, batch) -> tuple[float, float, Coverage]:
        if self._twin is None:
            self._twin = (native_twin(pl_module.net), native_twin(pl_module.loss_fn))
        net, loss_fn = self._twin
        net.load_state_dict(pl_module.net.state_dict())
        net.train(pl_module.net.training)
        x, y = batch
        params = [p for p in pl_module.net.parameters() if p.grad is not None]
        twin_params = [
            t
            for p, t in zip(pl_module.net.parameters(), net.parameters(), strict=True)
            if p.grad is not None
        ]
        with torch.random.fork_rng(devices=self._rng[1]), torch.enable_grad():
            self._replay_rng()
            coverage = backward_coverage(pl_module.loss_fn(pl_module.net(x), y))
            self._replay_rng()
            native = torch.autograd.grad(loss_fn(net(x), y), twin_params)
        if trainer.world_size > 1:  # the optimizer sees gradients averaged over processes
            native = [trainer.strategy.reduce(g, reduce_op="mean") for g in native]
        abs_diff, rel_diff = 0.0, 0.0
        for p, g in zip(params, native, strict=True):
            diff = _max_abs(p.grad - g)
            abs_diff = max(abs_diff, diff)
            rel_diff = max(rel_diff, diff / max(_max_abs(g), torch.finfo(g.dtype).tiny))
        return abs_diff, rel_diff, coverage

    def _replay_rng(self) -> None:
        """Put back the random state that the training step's forward began with."""
        cpu_state, cuda, cuda_states = self._rng
        torch.set_rng_state(cpu_state)
        for device, state in zip(cuda, cuda_states, strict=True):
            torch.cuda.set_rng_state(state, device)


def _op_differences(explanation: manualgrad.Explanation) -> dict[str, float]:
    """``audit/op_max_abs_diff/<Function>``: per hand-derived op type, the largest local
    difference from native autograd's vector-Jacobian product (see :func:`manualgrad.explain`)."""
    diffs: dict[str, float] = {}
    for row in explanation.rows:
        if row.hand_derived and row.max_abs_diff is not None:
            tag = f"audit/op_max_abs_diff/{row.op}"
            diffs[tag] = max(diffs.get(tag, 0.0), row.max_abs_diff)
    return diffs


def _max_abs(t: Tensor) -> float:
    return t.detach().abs().max().item() if t.numel() else 0.0
