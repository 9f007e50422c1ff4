"""A sequence task generated in code, for the tiny GPT: sorting short digit sequences, as
minGPT's demo does."""

from __future__ import annotations

import torch
from torch import Tensor

from manualgrad.lightning.data import CLI_CLASS_PATH, SplitData

__all__ = ["IGNORE_INDEX", "SortData"]

#: the target of a position whose prediction is not scored (the prompt's); the default
#: ``ignore_index`` of :class:`torch.nn.CrossEntropyLoss`
IGNORE_INDEX = -100


class SortData(SplitData):
    """Sort ``length`` digits from ``0 .. digits - 1``: the prompt ``2 0 1 0 2 1`` is to be
    continued by ``0 0 1 1 2 2``.

    Each row is one sequence ``s`` and its sorted copy ``t`` read as one token stream
    ``c = s t`` of ``2 length`` tokens, for next-token prediction: the input is
    ``x = c[:-1]`` and the target ``y = c[1:]``, both ``(N, 2 length - 1)`` int64, with the
    targets of the prompt's positions (all but its last) set to :data:`IGNORE_INDEX`: only
    the answer, ``y[:, length - 1:] = t``, is scored.

    The sequences are ``size`` draws (seeded by ``seed``) with the duplicates dropped, so
    every sequence is in one split only, and a validation sequence was never trained on.
    When ``size`` is at least ``digits ** length``, every possible sequence is there once.

    Args:
        length: digits per sequence.
        digits: the digits are ``0 .. digits - 1`` (the vocabulary).
        size: sequences drawn, before duplicates are dropped and the rest split.
        batch_size: sequences per batch.
        val_fraction: share of the sequences held out for validation.
        seed: seeds the draws, the train/validation split and the shuffling.
    """

    def __init__(
        self,
        length: int = 6,
        digits: int = 3,
        size: int = 10000,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, val_fraction, seed)
        if length < 2 or digits < 2 or size < 2:
            raise ValueError(
                f"length, digits and size must be at least 2, got {length}, {digits} and {size}"
            )
        self.save_hyperparameters(ignore=CLI_CLASS_PATH)
        self.length, self.digits, self.size = length, digits, size

    @property
    def vocab_size(self) -> int:
        """The number of token values: the digits."""
        return self.digits

    @property
    def block_size(self) -> int:
        """Tokens per input row: ``2 length - 1``."""
        return 2 * self.length - 1

    def load(self) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        if self.size >= self.digits**self.length:  # every sequence, once
            codes = torch.arange(self.digits**self.length)
            powers = self.digits ** torch.arange(self.length - 1, -1, -1)  # (length,)
            seqs = codes[:, None] // powers % self.digits  # (N, length)
        else:
            draws = torch.randint(self.digits, (self.size, self.length), generator=generator)
            seqs = torch.unique(draws, dim=0)  # (N, length), N <= size, lexicographic order
        stream = torch.cat([seqs, seqs.sort(dim=1).values], dim=1)  # (N, 2 length)
        x, y = stream[:, :-1].clone(), stream[:, 1:].clone()  # (N, 2 length - 1) each
        y[:, : self.length - 1] = IGNORE_INDEX
        return x, y
