"""A tiny GPT trained on next-token prediction (:class:`TinyGPT`), on hand-derived gradients
or on native autograd.

The network (:class:`GPT`) is built from native modules only: token and position
``nn.Embedding``, pre-LN blocks of ``nn.LayerNorm``, causal ``nn.MultiheadAttention``,
``nn.Linear``, ``nn.GELU`` and ``nn.Dropout``, and a final ``nn.LayerNorm`` and ``nn.Linear``
head; the loss is ``nn.CrossEntropyLoss``. ``backend='manual'`` then converts them with
:func:`manualgrad.replace_modules`, as the MLPs do (see :mod:`manualgrad.lightning.model`):
every op of the table is trained on its hand-derived backward, and one not (yet) in it,
say ``nn.MultiheadAttention``, stays native and is named in a warning on the ``manualgrad``
logger.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from manualgrad.lightning.model import _MLP, Backend, on_backend
from manualgrad.lightning.sequence_data import IGNORE_INDEX

__all__ = ["GPT", "Block", "NextTokenLoss", "TinyGPT"]


class Block(nn.Module):
    """One GPT-2 block (pre-LN): ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``, with a
    causal self-attention and a ``4 n_embd`` GELU MLP. Input and output ``(B, T, n_embd)``."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = nn.MultiheadAttention(n_embd, n_head, dropout=dropout, batch_first=True)
        self.attn_dropout = nn.Dropout(dropout)  # on the attention's output, as GPT-2's
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd),
            nn.GELU(),
            nn.Linear(4 * n_embd, n_embd),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor, causal_mask: Tensor) -> Tensor:
        h = self.ln_1(x)  # (B, T, C)
        attended, _ = self.attn(
            h, h, h, attn_mask=causal_mask, need_weights=False, is_causal=True
        )  # (B, T, C)
        x = x + self.attn_dropout(attended)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token indices ``(B, T)`` to next-token logits ``(B, T, vocab_size)``, ``T <=
    block_size``: embeddings of tokens and positions, ``n_layer`` :class:`Block` s, a final
    LayerNorm and a linear head. Weights start as GPT-2's: normal(0, 0.02), biases 0."""

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        # True above the diagonal: position t attends to positions <= t only
        mask = torch.ones(block_size, block_size, dtype=torch.bool).triu(1)
        self.register_buffer("causal_mask", mask, persistent=False)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:  # embeddings, Linear and attention projection weights
                nn.init.normal_(p, std=0.02)

    def forward(self, idx: Tensor) -> Tensor:
        t = idx.shape[1]
        if t > self.block_size:
            raise ValueError(f"sequence of {t} tokens, but block_size is {self.block_size}")
        positions = torch.arange(t, device=idx.device)  # (T,)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(positions))  # (B, T, C)
        mask = self.causal_mask[:t, :t]  # (T, T)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln_f(x))  # (B, T, vocab_size)


class NextTokenLoss(nn.Module):
    """Mean cross-entropy of logits ``(B, T, V)`` against targets ``(B, T)`` over the
    positions whose target is not :data:`~manualgrad.lightning.sequence_data.IGNORE_INDEX`
    (an ``nn.CrossEntropyLoss`` on the flattened positions)."""

    def __init__(self) -> None:
        super().__init__()
        self.cross_entropy = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return self.cross_entropy(logits.flatten(0, 1), targets.flatten())  # (B T, V), (B T,)


class TinyGPT(pl.LightningModule):
    """A tiny GPT trained on next-token prediction, with hand-derived gradients.

    Batches are ``(x, y)``, token indices ``(B, T)`` each, ``y`` the next tokens, with
    :data:`~manualgrad.lightning.sequence_data.IGNORE_INDEX` where no prediction is scored
    (a prompt); the scored positions must be a suffix, the answer (as
    :class:`~manualgrad.lightning.SortData` gives them).

    Args:
        vocab_size: the number of token values (the data's must not exceed it).
        block_size: the longest input, in tokens (the data's must not exceed it).
        n_layer: transformer blocks.
        n_head: attention heads per block (``n_embd`` must be a multiple).
        n_embd: the width of the residual stream.
        dropout: dropout probability on the embeddings, the attention weights, and each
            block's two outputs.
        backend: ``'manual'``: every op of the model with a hand-derived op in the table
            (:mod:`manualgrad.registry`) on its hand-derived backward; ``'native'``: the
            identical model on native autograd. ``'autograd'`` is an alias of ``'native'``.
        optimizer: the optimizer class and its arguments (AdamW in the experiment).
        lr_scheduler: an optional ``torch.optim.lr_scheduler`` class and its arguments,
            stepped once per epoch (``ReduceLROnPlateau`` watches ``val/loss``).

    Logged: ``train/loss`` (the cross-entropy on the answer tokens) and
    ``train/acc_teacher_forced`` (the share of the batch's sequences whose every answer
    token is the argmax given the true tokens before it) every step; every epoch,
    ``val/loss`` and ``val/acc``, the **exact-sequence accuracy of greedy decoding**: from
    the prompt alone, the model writes the answer one token at a time, each its argmax
    after the ones it wrote itself, and a sequence counts when all of them are right
    (likewise ``test/...``); ``train/grad_norm`` every step.
    """

    def __init__(
        self,
        vocab_size: int = 3,
        block_size: int = 11,
        n_layer: int = 2,
        n_head: int = 4,
        n_embd: int = 64,
        dropout: float = 0.0,
        backend: Backend = "manual",
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = on_backend(
            GPT(vocab_size, block_size, n_layer, n_head, n_embd, dropout), backend
        )
        self.loss_fn = on_backend(NextTokenLoss(), backend)
        self._optimizer = optimizer
        self._lr_scheduler = lr_scheduler

    def forward(self, idx: Tensor) -> Tensor:
        return self.net(idx)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        name = type(datamodule).__name__
        for what in ("vocab_size", "block_size"):
            want, have = getattr(datamodule, what, None), self.hparams[what]
            if want is not None and want > have:
                raise ValueError(
                    f"the data ({name}) has {what} {want}, but model.{what} is {have}: "
                    f"set model.{what} to {want}"
                )

    @torch.no_grad()
    def generate(self, prompt: Tensor, new_tokens: int) -> Tensor:
        """Greedy decoding: ``prompt (B, P)`` continued by ``new_tokens`` tokens, each the
        argmax of the next-token logits given all before it. Returns ``(B, P + new_tokens)``."""
        idx = prompt
        for _ in range(new_tokens):
            next_token = self.net(idx)[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
            idx = torch.cat([idx, next_token], dim=1)
        return idx

    def greedy_accuracy(self, x: Tensor, y: Tensor) -> Tensor:
        """The share of rows whose answer (the scored suffix of ``y``), written by
        :meth:`generate` from the prompt before it, is exactly right."""
        scored = (y != IGNORE_INDEX).any(dim=0)  # (T,)
        start = int(scored.nonzero()[0])  # the first scored position: the prompt's last
        answer = y[:, start:]  # (B, A)
        written = self.generate(x[:, : start + 1], answer.shape[1])[:, start + 1 :]  # (B, A)
        return (written == answer).all(dim=1).float().mean()

    def _step(self, batch: Sequence[Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)  # (B, T, V)
        loss = self.loss_fn(logits, y)
        with torch.no_grad():
            values = {"loss": loss}
            if stage == "train":
                right = (logits.argmax(dim=-1) == y) | (y == IGNORE_INDEX)  # (B, T)
                values["acc_teacher_forced"] = right.all(dim=1).float().mean()
            else:
                values["acc"] = self.greedy_accuracy(x, y)
        per_step = stage == "train"
        for name, value in values.items():
            self.log(
                f"{stage}/{name}",
                value,
                on_step=per_step,
                on_epoch=not per_step,
                prog_bar=True,
                batch_size=len(x),
                sync_dist=True,
            )
        return loss

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    def predict_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        return self(batch[0])

    # the same gradient norm, optimizer and scheduler as the MLPs'
    on_before_optimizer_step = _MLP.on_before_optimizer_step
    configure_optimizers = _MLP.configure_optimizers
