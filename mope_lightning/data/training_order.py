"""The training order: shuffled by (seed, epoch), sharded over the processes, and resumable in the middle of an epoch.

Lightning restarts the order of a plain DataLoader's epoch when a run resumes from a checkpoint written in the middle
of one (a validation at `trainer.val_check_interval` < 1, an interrupt): the resumed epoch would see its first
batches twice and its last ones never, and the run would not be the one it continues. So every checkpoint records
where training stands (`training_position`: the epoch and how many of its batches were trained, from the global
step, which is saved with the weights), the DataModule's state, and the resumed run's sampler starts that epoch
after those batches. Lightning restores a DataModule's state before it first builds the train loader, so the
position holds however early the loader is built and iterated (data workers fetch their first indices at once).
"""

from __future__ import annotations

import itertools
import math
from typing import Iterator, Optional

import torch
from torch.utils.data import Dataset, DistributedSampler


def training_position(trainer) -> Optional[dict[str, int]]:
    """{"epoch": e, "batches": k}: the next batch to train is batch k of epoch e (of this process's order); None
    outside fitting or before the train loader's length is known."""
    from lightning.pytorch.trainer.states import TrainerFn

    if trainer is None or trainer.state.fn != TrainerFn.FITTING:
        return None
    batches = trainer.num_training_batches
    if not isinstance(batches, int) or batches <= 0:  # float("inf") before the train loader's length is known
        return None
    accumulate = trainer.accumulate_grad_batches
    epoch = trainer.current_epoch
    # Every finished epoch took ceil(batches / accumulate) optimizer steps (the last one may accumulate fewer).
    done = (trainer.global_step - epoch * math.ceil(batches / accumulate)) * accumulate
    if done < 0:
        return None
    return {"epoch": epoch + 1, "batches": 0} if done >= batches else {"epoch": epoch, "batches": done}


class TrainingOrder(DistributedSampler):
    """This process's share of the training set, shuffled by (seed, epoch); epoch `start["epoch"]` begins after its
    first `start["batches"]` batches, where the run it resumes stopped. Its length stays the whole epoch's, which
    is what Lightning counts the resumed epoch's batches against.

    `generator`, reseeded by (seed, epoch), is the train DataLoader's: a DataLoader draws a seed for its workers each
    time it is iterated, from the global RNG unless it has its own generator. The global RNG (routing noise, prompt
    dropout) is saved in checkpoints, and a run resumed mid-epoch iterates its loader once more than an uninterrupted
    one, so that draw would shift every later random number of the resumed run."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, batch_size: int,
                 start: Optional[dict[str, int]] = None):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size = batch_size
        self.start = start
        self.generator = torch.Generator()
        self.set_epoch(start["epoch"] if start else 0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.generator.manual_seed(self.seed + epoch)

    def __iter__(self) -> Iterator[int]:
        indices = super().__iter__()
        if self.start and self.epoch == self.start["epoch"]:
            return itertools.islice(indices, self.start["batches"] * self.batch_size, None)
        return indices
