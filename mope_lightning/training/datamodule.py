"""The Lightning side of a dataset: its DataModule hooks (the loaders, the training order, the state a checkpoint
keeps) over the dataset's own class (data/, which reads, checks and encodes without Lightning).

`datamodule(data_cfg)` builds the DataModule of `data.name`. Its class is the dataset's class with `LightningHooks`
mixed in, under the dataset's class name: Lightning keeps a DataModule's state in a checkpoint under its class name
(`EasyVQADataModule`), so checkpoints written before the split still resume where they stopped.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader

from mope_lightning.data.base import MultimodalDataModule
from mope_lightning.data.registry import dataset_class
from mope_lightning.data.shards import ShardStream
from mope_lightning.errors import DataError
from mope_lightning.training.training_order import TrainingOrder, training_position


class LightningHooks(L.LightningDataModule):
    """Lightning's hooks over a `MultimodalDataModule` subclass (mixed in after it: `lightning_class`)."""

    def __init__(self):
        super().__init__()
        self.resume_position: Optional[dict[str, int]] = None  # where the resumed run stopped (training_order.py)

    def prepare_data(self) -> None:
        # One process per node: scan and check the files, then build the feature caches once; the stage setup
        # will get is checked before anything is encoded.
        fn = self.trainer.state.fn if self.trainer is not None else None
        self.prepare(fn.value if fn is not None else None)

    def setup(self, stage: Optional[str] = None) -> None:
        self.build_datasets(stage)

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _sampler(self, split: str, train: bool):
        """The samplers are ours (the Trainer runs with use_distributed_sampler=False):

        - training: shuffled by (seed, epoch) and sharded over the processes, so the order does not depend on the
          global RNG, and resumed where the checkpoint stopped, even mid-epoch (`TrainingOrder`): a resumed run
          sees the same batches as an uninterrupted one;
        - evaluation: every sample on exactly one process, no padding duplicates, so metrics under DDP are exact.
        """
        from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

        world, rank = self._world()
        dataset = self.datasets[split]
        if train:
            sampler = TrainingOrder(dataset, world, rank, self.seed, self.cfg.batch_size, self.resume_position)
            if self.trainer is not None:  # built before the trainer's state is restored, its epoch reads 0
                sampler.set_epoch(max(self.trainer.current_epoch, sampler.epoch))
            return sampler
        if world == 1:
            return None
        return UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)

    def _loader_options(self, train: bool) -> dict:
        """What every loader of this DataModule shares: batch size, workers, pinning, prefetch and the collate."""
        c = self.cfg
        return dict(
            batch_size=c.batch_size if train else (c.eval_batch_size or 2 * c.batch_size),
            num_workers=c.num_workers,
            pin_memory=c.pin_memory if c.pin_memory is not None else torch.cuda.is_available(),
            persistent_workers=c.persistent_workers and c.num_workers > 0,
            # Workers that load further ahead than torch's 2 batches ride out slow batches that would idle a GPU
            prefetch_factor=(c.get("prefetch_factor") or (4 if torch.cuda.is_available() else None))
            if c.num_workers > 0
            else None,
            collate_fn=self.collate(),
        )

    def _loader(self, split: str, train: bool) -> DataLoader:
        if isinstance(self.datasets[split], ShardStream):
            return self._stream_loader(split, train)
        sampler = self._sampler(split, train)
        # Every loader draws its workers' seed from a generator of its own, never from the global RNG, so that how
        # often loaders are iterated (a resumed run, persistent workers or none) changes no routing noise or dropout.
        generator = sampler.generator if train else torch.Generator().manual_seed(self.seed)
        # drop_last in training: a last batch of one sample would break the mapper's BatchNorm
        return DataLoader(
            self.datasets[split], sampler=sampler, generator=generator, drop_last=train, **self._loader_options(train)
        )

    def _stream_loader(self, split: str, train: bool) -> DataLoader:
        """The loader of a split streamed from shards (data/shards.py): the stream deals its shards to the
        processes and workers and shuffles them itself, so there is no sampler; its epoch is the trainer's."""
        stream = self.datasets[split]
        stream.world, stream.rank = self._world()
        epoch = (lambda: self.trainer.current_epoch) if self.trainer is not None else (lambda: 0)
        return EpochStreamLoader(stream, epoch, **self._loader_options(train))

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """With the decoded-image cache, images cross to the device as uint8 and become floats there."""
        return self.pixels.device(batch) if self.pixels is not None else batch

    def state_dict(self) -> dict:
        """Saved in every checkpoint: where training stands in the epoch's order."""
        position = training_position(self.trainer)
        return {"training_position": position} if position else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self.resume_position = state_dict.get("training_position")

    def train_dataloader(self) -> DataLoader:
        size, world = len(self.splits["train"]), self._world()[0]
        if not size:
            raise DataError(
                f"{self.cfg.name}: the train split is empty (its samples come from "
                f"{self.split_source('train')}); add samples, or run `mope check-data` to see what was "
                "read"
            )
        if size < self.cfg.batch_size * world:  # drop_last would leave no batch at all
            raise DataError(
                f"{self.cfg.name}: the train split has {size} samples, fewer than data.batch_size="
                f"{self.cfg.batch_size} x {world} process(es); lower data.batch_size"
            )
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split, train=False)


class EpochStreamLoader(DataLoader):
    """A DataLoader over a `ShardStream` that tells it the epoch before each pass: the trainer's, read after a
    resumed run restored it (persistent workers count on from the epoch they started in)."""

    def __init__(self, stream: ShardStream, epoch: Callable[[], int], **kwargs):
        super().__init__(stream, **kwargs)
        self.epoch = epoch

    def __iter__(self):
        self.dataset.epoch = self.epoch()
        return super().__iter__()


@functools.cache
def lightning_class(dataset: type[MultimodalDataModule]) -> type:
    """`dataset` with Lightning's hooks, named as the dataset (the key of its state in a checkpoint)."""
    return type(
        dataset.__name__, (dataset, LightningHooks), {"__module__": __name__, "__qualname__": dataset.__qualname__}
    )


def datamodule(data_cfg) -> L.LightningDataModule:
    """The Lightning DataModule of the dataset `data_cfg.name`."""
    return lightning_class(dataset_class(data_cfg))(data_cfg)
