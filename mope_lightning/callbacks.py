"""Lightning callbacks of the framework."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from mope_lightning.fileio import atomic_write


class PredictionWriter(BasePredictionWriter):
    """Writes one CSV row per input: id, predicted class(es), and the probability of every class.

    Multi-label predictions list every class with probability > 0.5, joined by `|`. Under several processes each
    rank writes its own `<stem>.rank<r>.csv`.
    """

    def __init__(self, out: str | Path, classes: Sequence[str], multilabel: bool = False):
        super().__init__(write_interval="epoch")
        self.out, self.classes, self.multilabel = Path(out), list(classes), multilabel

    def _target(self, trainer: L.Trainer) -> Path:
        if trainer.world_size == 1:
            return self.out
        return self.out.with_name(f"{self.out.stem}.rank{trainer.global_rank}{self.out.suffix}")

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Sequence[Any],
                           batch_indices: Sequence[Any]) -> None:
        def write(fh):
            writer = csv.writer(fh)
            writer.writerow(["id", "prediction", *(f"prob_{c}" for c in self.classes)])
            for batch in predictions:
                for sample_id, probs in zip(batch["ids"], batch["probs"]):
                    writer.writerow([sample_id, self._label(probs), *(f"{p:.6f}" for p in probs.tolist())])

        atomic_write(self._target(trainer), write)

    def _label(self, probs: torch.Tensor) -> str:
        if self.multilabel:
            return "|".join(c for c, p in zip(self.classes, probs.tolist()) if p > 0.5)
        return self.classes[int(probs.argmax())]
