"""Training order and loading: a seeded shuffle dealt out to DDP processes, and a
``DataLoader`` that resumes in mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DataLoader, DistributedSampler

__all__ = ["EpochShuffle", "ResumableLoader"]


class EpochShuffle(DistributedSampler):
    """A random order that depends only on ``(seed, epoch)``, dealt out to ``num_replicas``
    processes.

    Epoch ``e`` visits ``torch.randperm(size)`` drawn from a generator seeded with
    ``seed + e``; process ``rank`` of ``num_replicas`` takes every ``num_replicas``-th entry
    of it, starting at ``rank`` (torch's ``DistributedSampler`` with ``shuffle=True``, whose
    order this is). So batch ``t`` of ``num_replicas`` processes with ``batch_size`` rows each
    holds exactly the rows of batch ``t`` of one process with ``num_replicas * batch_size``
    rows, when the rows divide evenly among the processes (otherwise a few are repeated to
    even them out).

    Lightning calls ``set_epoch`` at the start of every epoch, so a run resumed from a
    checkpoint sees exactly the batches an unbroken run would have seen.
    """

    def __init__(self, size: int, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)


class ResumableLoader(DataLoader):
    """A ``DataLoader`` that can resume in the middle of an epoch.

    Lightning stores the ``state_dict`` of a training loader that has one in each checkpoint
    (how many batches of which epoch it has handed out) and gives it back through
    ``load_state_dict`` when fit resumes. The next pass then skips the batches already
    trained on, provided it is the same epoch: the epoch is read from the sampler when the
    first batch is drawn, after Lightning has called ``set_epoch``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._epoch, self._batches = 0, 0
        self._resume: tuple[int, int] | None = None

    def __iter__(self) -> Iterator:
        epoch = getattr(self.sampler, "epoch", 0)
        skip = 0
        if self._resume is not None:
            (resume_epoch, skip), self._resume = self._resume, None
            skip = skip if resume_epoch == epoch else 0
        self._epoch, self._batches = epoch, 0
        for index, batch in enumerate(super().__iter__()):
            if index >= skip:
                self._batches = index + 1
                yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches": self._batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume = (state_dict["epoch"], state_dict["batches"])
