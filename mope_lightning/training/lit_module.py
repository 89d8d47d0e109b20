"""The LightningModule: losses, metrics, logging, optimizer and trainable-only checkpoints around a classifier.

Only prompts, router, mapper and head train; the frozen library encoders stay in eval mode and are left out of
checkpoints (they are rebuilt from their source on load). A checkpoint records which frozen architecture and
weights it was trained on, and loading it into another backbone is a `CheckpointError`.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torchmetrics import MetricCollection
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.classification import (
    BinaryAUROC,
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassF1Score,
    MultilabelF1Score,
)

from mope_lightning.weights.checkpoints import check_fits, classifier_state
from mope_lightning.errors import ConfigError
from mope_lightning.models import build_model
from mope_lightning.training.optim import build_optimizer, build_scheduler
from mope_lightning.predictions import probabilities
from mope_lightning.analysis.routing import RoutingStats
from mope_lightning.models.registry import SEGMENTATION
from mope_lightning.mask_predictions import original_size_masks, slide_output, upsample
from mope_lightning.training.segmentation import (
    IOU_PREFIX,
    classes_present,
    defined_class_ious,
    make_segmentation_metrics,
    score_original_size,
    segmentation_loss,
)


class SamplesF1(BinaryF1Score):
    """Multi-label F1 of each sample over its labels, averaged over samples (scikit-learn's average="samples")."""

    def __init__(self, threshold: float = 0.5):
        super().__init__(threshold=threshold, multidim_average="samplewise")

    def compute(self) -> torch.Tensor:
        return super().compute().mean()


class PositiveClassAUROC(BinaryAUROC):
    """AUROC of a two-logit classifier: the score is the softmax probability of class 1 (exact, no binning).

    Undefined when the samples hold one class only (a small or skewed split): scikit-learn refuses it, torchmetrics
    would return 0 with a warning, a number that reads as a result. `compute` then returns NaN and `only_class`
    names the class present, so that the metric is left out with a note (`defined_metrics`)."""

    only_class: Optional[int] = None

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        super().update(logits.float().softmax(-1)[:, 1], target)

    def compute(self) -> torch.Tensor:
        present = dim_zero_cat(self.target).unique().tolist()  # every process's targets: compute runs synced
        self.only_class = int(present[0]) if len(present) == 1 else None
        if len(present) < 2:
            return torch.tensor(float("nan"))
        return super().compute()


def make_metrics(task: str, num_classes: int) -> MetricCollection:
    """Accuracy (single label), and AUROC and weighted F1 with two classes (Hateful Memes', MUStARD's); F1 micro,
    macro, weighted and samples at 0.5 (multi-label, as MM-IMDB papers)."""
    if task == "multilabel":
        metrics = {
            f"f1_{avg}": MultilabelF1Score(num_labels=num_classes, average=avg)
            for avg in ("micro", "macro", "weighted")
        }
        return MetricCollection({**metrics, "f1_samples": SamplesF1()})
    metrics = {"acc": MulticlassAccuracy(num_classes=num_classes, average="micro")}
    if num_classes == 2:  # Hateful Memes' AUROC; MUStARD's F-score, the weighted average of the two classes'
        metrics["auroc"] = PositiveClassAUROC()
        metrics["f1_weighted"] = MulticlassF1Score(num_classes=2, average="weighted")
    return MetricCollection(metrics)


def defined_metrics(metrics: MetricCollection, classes: list[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The collection's values, less those undefined on the samples it saw, and a note naming each one left out."""
    values, notes = metrics.compute(), []
    for name, metric in metrics.items():
        if getattr(metric, "only_class", None) is not None:
            del values[name]
            notes.append(
                f"{name} left out: it needs samples of both classes, and these are all '{classes[metric.only_class]}'"
            )
    return values, notes


class MoPELitModule(L.LightningModule):
    """Trains a classifier built from the resolved experiment config.

    Args:
        config: the resolved experiment config (a plain dict; saved as hyperparameters, so a checkpoint rebuilds
            the same model with `MoPELitModule.load_from_checkpoint`).
        classes: class names, in label-index order.
        task: "multiclass", "multilabel" or "segmentation" (logits on the head's grid, labels (B, h, w) masks
            padded with the ignore label, `mask_size` (B, 2) each mask's original size: training/segmentation.py).
    """

    def __init__(self, config: dict, classes: list[str], task: str = "multiclass"):
        super().__init__()
        self.save_hyperparameters()
        self.cfg = OmegaConf.create(config)
        self.classes, self.task = list(classes), task
        self.net = build_model(self.cfg.model, len(classes), task=task)
        self.strict_loading = False  # checkpoints hold trainable weights only; on_load_checkpoint checks them
        self.dense = task == SEGMENTATION
        # evaluation by sliding windows over images whose short side is S (data.seg_eval, checked by the data module)
        self.slide = self.dense and self.cfg.data.get("seg_eval") == "slide"
        metrics = make_segmentation_metrics(classes) if self.dense else make_metrics(task, len(classes))
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        # (routed layers, experts), or None for a model without a router; a segmented image's classes are those its
        # mask holds (multi-hot)
        shape = self.net.routing_shape()
        self.val_routing = RoutingStats(*shape, len(classes)) if shape else None
        self.test_routing = RoutingStats(*shape, len(classes)) if shape else None
        self._noted: set[str] = set()  # notes on undefined metrics, printed once per run

    # --- steps ---------------------------------------------------------------------------------------------
    def forward(self, batch: dict):
        return self.net(batch)

    def _evaluate(self, batch: dict):
        """The model's output on an evaluation batch: whole, or by sliding windows (`slide_output`)."""
        return slide_output(self.net, batch, self.cfg.data.get("seg_stride")) if self.slide else self(batch)

    def _task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return segmentation_loss(logits, labels, dice=self.cfg.model.get("seg_loss", "ce") == "ce_dice")
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return F.cross_entropy(logits, labels)

    def _targets(self, labels: torch.Tensor) -> torch.Tensor:
        return labels.long() if self.task == "multilabel" else labels

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self(batch)
        if self.dense:  # scored at the size of the batch's labels: the augmented crops' working size
            out.logits = upsample(out.logits, batch["labels"].shape[-2:])
        task_loss = self._task_loss(out.logits, batch["labels"])
        loss = task_loss + self.cfg.model.mope.importance_weight * out.importance_loss
        n = len(batch["labels"])
        self.log_dict(
            {"train/loss": loss, "train/task_loss": task_loss, "train/importance_loss": out.importance_loss},
            batch_size=n,
            prog_bar=False,
        )
        logits = out.logits.detach()
        self.train_metrics.update(logits.argmax(1) if self.dense else logits, self._targets(batch["labels"]))
        return loss

    def _eval_step(self, batch: dict, metrics: MetricCollection, routing: Optional[RoutingStats], stage: str) -> None:
        out = self._evaluate(batch)
        n = len(batch["labels"])
        if self.dense:  # at each mask's original size (its pixels, not the padding)
            total, pixels = score_original_size(out.logits, batch["labels"], batch["mask_size"], metrics)
            self.log(f"{stage}/loss", total / max(pixels, 1), batch_size=max(pixels, 1), sync_dist=True)
        else:
            self.log(f"{stage}/loss", self._task_loss(out.logits, batch["labels"]), batch_size=n, sync_dist=True)
            metrics.update(out.logits, self._targets(batch["labels"]))
        self.log(f"{stage}/importance_loss", out.importance_loss, batch_size=n, sync_dist=True)
        if routing is not None and out.routing is not None:
            labels = classes_present(batch["labels"], len(self.classes)) if self.dense else batch["labels"]
            routing.update(out.routing, labels, batch["index"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, self.val_routing, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, self.test_routing, "test")

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics(self.train_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics(self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics(self.test_metrics)

    def _log_epoch_metrics(self, metrics: MetricCollection) -> None:
        """Log the epoch's metrics, less those undefined on its samples (AUROC of a split holding one class), each
        named in a note once per run. Logged by hand rather than as Metric objects, which Lightning would compute
        whatever they are."""
        values, notes = defined_metrics(metrics, self.classes)
        metrics.reset()
        if self.trainer.sanity_checking:
            return
        for note in notes:
            if note not in self._noted and self.trainer.is_global_zero:
                print(f"[mope] note: {note}", file=sys.stderr, flush=True)
            self._noted.add(note)
        # compute() has already gathered every process's samples: the values are the same on every rank
        if self.dense:  # per-class IoUs (one per class, 150 on ADE20K) stay out of the progress bar
            values = defined_class_ious(values)
            per_class = {k: v for k, v in values.items() if f"/{IOU_PREFIX}" in k}
            self.log_dict(per_class, prog_bar=False)
            values = {k: v for k, v in values.items() if k not in per_class}
        self.log_dict(values, prog_bar=True)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        if self.dense:  # each sample's mask (H, W) of class indices at its original size
            masks = original_size_masks(
                self._evaluate(batch).logits, batch.get("mask_size"), batch["images"].shape[-2:]
            )
            return {"ids": batch["ids"], "masks": masks}
        probs = probabilities(self(batch).logits, self.task)
        return {"ids": batch["ids"], "probs": probs.float().cpu()}

    def setup(self, stage: str) -> None:
        """A checkpoint monitor that the val split leaves undefined (AUROC of one class) is refused before training:
        ModelCheckpoint would otherwise stop at the first validation, missing the metric."""
        checkpoint, datamodule = self.trainer.checkpoint_callback, self.trainer.datamodule
        if stage != "fit" or checkpoint is None or checkpoint.monitor != "val/auroc" or self.task == "multilabel":
            return
        val = datamodule.datasets["val"].split
        present = sorted(set(val.labels))
        if len(present) == 1:
            raise ConfigError(
                f"checkpoint.monitor: {checkpoint.monitor} needs samples of both classes in the val "
                f"split, and its {len(val)} sample(s) are all '{self.classes[present[0]]}'; set "
                "checkpoint.monitor=val/loss checkpoint.mode=min, or give the val split samples of "
                "both classes"
            )

    # --- parameter counts, logged once per fit -------------------------------------------------------------
    def on_fit_start(self) -> None:
        facts = {f"model/params/{k}": v for k, v in self.net.parameter_counts().items()}
        world = self.trainer.world_size * self.trainer.accumulate_grad_batches
        facts["data/effective_batch_size"] = self.cfg.data.batch_size * world
        for logger in self.loggers:
            logger.log_metrics(facts, step=0)

    def on_train_start(self) -> None:
        self.val_metrics.reset()  # the sanity check's batches must not leak into epoch 0

    # --- optimizer -----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = build_optimizer(self.cfg.optim, self.net.param_groups())
        scheduler = build_scheduler(self.cfg.optim, optimizer, int(self.trainer.estimated_stepping_batches))
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}

    # --- trainable-only checkpoints ------------------------------------------------------------------------
    def _frozen_prefixes(self, prefix: str = "") -> tuple[str, ...]:
        return tuple(f"{prefix}net.{name}." for name in self.net.frozen_backbones())

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        frozen = self._frozen_prefixes(prefix)
        for key in [k for k in state if k.startswith(frozen)]:
            del state[key]
        return state

    def backbone_record(self) -> dict:
        return self.net.backbone_record()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mope_backbones"] = self.backbone_record()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning restores (resume, testing the best checkpoint): check before it loads the tensors.
        check_fits(self.net, checkpoint.get("mope_backbones"), classifier_state(checkpoint), "checkpoint")
