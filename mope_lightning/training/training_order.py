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
    # From the global step alone: every epoch takes ceil(batches / accumulate) optimizer steps (the last one may
    # accumulate fewer). Lightning's epoch counter is no guide: a run stopped by max_steps or max_time in the middle
    # of an epoch counts that epoch as completed.
    steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
    epoch, steps = divmod(trainer.global_step, steps_per_epoch)
    return {"epoch": epoch, "batches": steps * trainer.accumulate_grad_batches}


def saved_position(checkpoint: dict) -> Optional[dict[str, int]]:
    """The training position a checkpoint records: the DataModule's (Lightning keeps a DataModule's state under its
    class name); else what Lightning's loop counters say (checkpoints written before the position was recorded)."""
    for value in checkpoint.values():
        if isinstance(value, dict) and isinstance(value.get("training_position"), dict):
            return value["training_position"]
    fit_loop = checkpoint.get("loops", {}).get("fit_loop")
    if not fit_loop:
        return None
    epochs = fit_loop["epoch_progress"]["total"]
    unfinished = epochs["processed"] < epochs["ready"]
    return {
        "epoch": epochs["processed"],
        "batches": fit_loop["epoch_loop.batch_progress"]["current"]["completed"] if unfinished else 0,
    }


def align_loop_progress(fit_loop: dict, position: dict[str, int]) -> None:
    """Rewrite the fit loop's saved progress so that Lightning resumes at `position`, whatever the new run's
    `max_steps`.

    Lightning closes an epoch's counters when training stops, at the epoch's end or in its middle (max_steps,
    max_time), and whether it restarts inside that epoch depends on the resuming run: with `max_steps` set it
    always does, and takes the saved in-epoch batch count as the new epoch's progress (an epoch that had ended is
    then over before it starts, so the run trains nothing and reports success); without it, it starts a new epoch
    (the rest of an epoch cut short is never trained). Closed counters are therefore rewritten to what they would
    read at `position`: at an epoch's start, epoch e begins afresh; in its middle, epoch e is in progress with k
    batches done (the state Lightning saves and restores mid-epoch). Counters of an epoch in progress are left as
    they are."""
    epochs, batches = fit_loop["epoch_progress"], fit_loop["epoch_loop.batch_progress"]
    if epochs["total"]["processed"] < epochs["total"]["ready"]:
        return
    epoch, done = position["epoch"], position["batches"]
    in_progress = epoch + 1 if done else epoch
    for counts in (epochs["total"], epochs["current"]):
        counts.update(ready=in_progress, started=in_progress, processed=epoch, completed=epoch)
    batches["current"].update(ready=done, started=done, processed=done, completed=done)
    batches["is_last_batch"] = False


class TrainingOrder(DistributedSampler):
    """This process's share of the training set, shuffled by (seed, epoch); epoch `start["epoch"]` begins after its
    first `start["batches"]` batches, where the run it resumes stopped. Its length stays the whole epoch's, which
    is what Lightning counts the resumed epoch's batches against.

    `generator`, reseeded by (seed, epoch), is the train DataLoader's: a DataLoader draws a seed for its workers each
    time it is iterated, from the global RNG unless it has its own generator. The global RNG (routing noise, prompt
    dropout) is saved in checkpoints, and a run resumed mid-epoch iterates its loader once more than an uninterrupted
    one, so that draw would shift every later random number of the resumed run."""

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int,
        rank: int,
        seed: int,
        batch_size: int,
        start: Optional[dict[str, int]] = None,
    ):
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
