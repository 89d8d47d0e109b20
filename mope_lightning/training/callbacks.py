"""Lightning callbacks of the framework."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mope_lightning.training.training_order import align_loop_progress, saved_position
from mope_lightning.errors import NonFiniteError
from mope_lightning.fileio import atomic_write
from mope_lightning.mask_predictions import MaskFolder
from mope_lightning.models.registry import SEGMENTATION
from mope_lightning.predictions import write_predictions_csv
from mope_lightning.analysis.report import RoutingView, write_report
from mope_lightning.training.tracking import log_figures, takes_images


class PredictionWriter(BasePredictionWriter):
    """Writes one CSV row per input: id, predicted class(es), and the probability of every class
    (`mope_lightning.predictions`). Under several processes each rank writes its own `<stem>.rank<r>.csv`."""

    def __init__(self, out: str | Path, classes: Sequence[str], task: str = "multiclass"):
        super().__init__(write_interval="epoch")
        self.out, self.classes, self.task = Path(out), list(classes), task

    def _target(self, trainer: L.Trainer) -> Path:
        if trainer.world_size == 1:
            return self.out
        return self.out.with_name(f"{self.out.stem}.rank{trainer.global_rank}{self.out.suffix}")

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Sequence[Any], batch_indices: Sequence[Any]
    ) -> None:
        ids = [i for batch in predictions for i in batch["ids"]]
        probs = torch.cat([batch["probs"] for batch in predictions]) if predictions else torch.zeros(0, 0)
        atomic_write(self._target(trainer), lambda fh: write_predictions_csv(fh, ids, probs, self.classes, self.task))


class MaskWriter(BasePredictionWriter):
    """Writes segmentation predictions: one mask PNG per input and index.csv into the folder `out`
    (`mope_lightning.mask_predictions`), batch by batch (a split's masks at their original sizes would not fit in
    memory), renamed into place when the pass ends. Under several processes each rank writes `<out>.rank<r>`."""

    def __init__(self, out: str | Path, classes: Sequence[str]):
        super().__init__(write_interval="batch")
        self.out, self.classes = Path(out), list(classes)
        self.folder: Optional[MaskFolder] = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = self.out if trainer.world_size == 1 else self.out.with_name(f"{self.out.name}.rank{trainer.global_rank}")
        self.folder = MaskFolder(out, self.classes)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        self.folder.add(prediction["ids"], prediction["masks"])

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.folder.commit()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.folder is not None:
            self.folder.discard()


def _routing_view(
    trainer: L.Trainer, pl_module: L.LightningModule, stats: dict, split: str, attributes: Optional[list] = None
) -> RoutingView:
    dm = trainer.datamodule
    dataset = dm.datasets[split]
    labels = getattr(pl_module.net, "routing_labels", lambda: None)()
    samples, multilabel = dataset.split, dm.multilabel
    if dm.task == SEGMENTATION:  # a segmented image's labels: the classes its mask holds, as multi-label data's
        samples, multilabel = dm.class_set_split(samples), True
    return RoutingView(
        stats, samples, dataset.files, dm.classes, dm.class_groups(), multilabel, labels, dm.media, attributes
    )


def _compute_and_reset(metric) -> dict:
    # compute() is a collective under DDP: every rank calls it, so that every rank's samples are counted.
    stats = metric.compute()
    metric.reset()
    return stats


class RoutingMonitor(L.Callback):
    """Logs expert specialisation to every logger after every validation epoch.

    Figures, to the loggers that take images (in TensorBoard, step through the epochs in the images tab):
    `routing/layer_expert`, `routing/class_expert`, `routing/group_expert` (datasets with class groups),
    `routing/exemplars`. Scalars: `routing/entropy/layer_NN`
    (relative to log K), `routing/max_load/layer_NN`, `routing/mi_class_relative` and `routing/mi_group_relative`
    (single-label data whose split holds two classes or groups or more). The statistics are also written to
    `<run dir>/routing_val.json`. Rank 0 draws; the statistics include every rank's samples.
    """

    def __init__(self, exemplars: int = 8):
        self.exemplars = exemplars

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metric = getattr(pl_module, "val_routing", None)
        if metric is None:
            return
        stats = _compute_and_reset(metric)
        log_dir = trainer.log_dir  # collectives (the stats, rank 0's directory) are asked for by every rank
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.fast_dev_run:
            return
        import matplotlib.pyplot as plt

        view = _routing_view(trainer, pl_module, stats, "val")
        step = trainer.global_step
        for logger in trainer.loggers:
            logger.log_metrics(view.scalars(), step=step)
        if any(takes_images(logger) for logger in trainer.loggers):
            figures = view.figures(self.exemplars)
            log_figures(trainer.loggers, figures, step)
            for fig in figures.values():
                plt.close(fig)
        if log_dir:
            atomic_write(
                Path(log_dir) / "routing_val.json",
                lambda fh: json.dump({"global_step": step, **view.to_json()}, fh, indent=1),
            )


class RoutingReport(L.Callback):
    """Writes the routing report of the evaluated split into `out` at the end of a validate or test pass."""

    def __init__(self, out: str | Path, header: dict, exemplars: int = 8, attributes: Optional[list] = None):
        self.out, self.header, self.exemplars, self.attributes = Path(out), header, exemplars, attributes

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, metric, split: str) -> None:
        stats = _compute_and_reset(metric)
        if trainer.is_global_zero:
            write_report(
                _routing_view(trainer, pl_module, stats, split, self.attributes), self.out, self.header, self.exemplars
            )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, pl_module.val_routing, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, pl_module.test_routing, "test")


class FinalWeights(L.Callback):
    """Writes `checkpoints/last.ckpt` when training ends, however it ends: at `max_steps`, `max_time` or
    `max_epochs` between validations (which are otherwise the only times checkpoints are written), and when it is
    interrupted (Ctrl-C, SIGTERM), so that no run loses its trained weights."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) and trainer.global_step > 0:
            self._save(trainer)

    @staticmethod
    def _save(trainer: L.Trainer) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking or trainer.checkpoint_callback is None:
            return
        # Lightning's save flag, not torch.load's (nothing is read here): weights_only=False writes the full training
        # state (optimizer, loops), so that `fit ckpt=last` resumes from it. Every read uses weights_only=True.
        trainer.save_checkpoint(Path(trainer.checkpoint_callback.dirpath) / "last.ckpt", weights_only=False)


class ResumePosition(L.Callback):
    """A resumed fit goes on from where its checkpoint stands (`training_position`: the epoch and how many of its
    batches were trained), whether or not the new run sets `max_steps` (`align_loop_progress`). Runs before
    Lightning restores its loops from the checkpoint."""

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        from lightning.pytorch.trainer.states import TrainerFn

        fit_loop = checkpoint.get("loops", {}).get("fit_loop")
        position = saved_position(checkpoint)
        if trainer.state.fn == TrainerFn.FITTING and fit_loop and position:
            align_loop_progress(fit_loop, position)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # With max_steps set, Lightning restarts the epoch loop even at an epoch's start, where there is nothing to
        # restart: it then spends its first iteration on a validation check that trains no batch but counts one for
        # the loggers' step. Starting the epoch afresh is what it does without max_steps.
        epoch_loop = trainer.fit_loop.epoch_loop
        if epoch_loop.restarting and epoch_loop.batch_progress.current.ready == 0:
            epoch_loop.restarting = False


class FiniteLoss(L.Callback):
    """Stops training at the first step whose loss is NaN or infinite, before its backward pass, so the weights stay
    those of the last finite step and no checkpoint of diverged weights is written (`SafeCheckpointIO` also refuses
    to save non-finite weights). The message names the step, the last finite loss and what to change."""

    def __init__(self):
        self.last_finite: tuple[int, torch.Tensor] | None = None

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        loss = loss.detach()
        # Every rank takes the same decision, or the others would wait for it forever in the gradient all-reduce.
        diverged = trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss)), all=False)
        if not diverged:
            self.last_finite = (trainer.global_step, loss)
            return
        before = (
            f"the last finite loss was {self.last_finite[1].item():.4g} at step {self.last_finite[0]}"
            if self.last_finite
            else "no step had a finite loss"
        )
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        kept = f"; the best checkpoint so far is {best}" if best else ""
        raise NonFiniteError(
            f"training diverged: the loss is {loss.item()} at step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}); {before}. Nothing was saved from this step{kept}. Lower optim.lr (now "
            f"{pl_module.cfg.optim.lr:g}), keep trainer.gradient_clip_val on, or train in trainer.precision=32-true"
        )


class RNGState(L.Callback):
    """Saves the random number generators' states in checkpoints and restores them on resume.

    Routing noise, dropout and augmentation draw from the global generators; restoring them makes a resumed run
    continue exactly like an uninterrupted one (the training order itself is seeded per epoch by the sampler).
    """

    def state_dict(self) -> dict[str, Any]:
        import random

        import numpy as np

        # Only tensors and plain Python values, so that checkpoints load with torch.load(weights_only=True).
        version, mt, gauss = random.getstate()
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
            "numpy": {
                "kind": kind,
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached": float(cached),
            },
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        import random

        import numpy as np

        torch.set_rng_state(state_dict["torch"])
        py = state_dict["python"]
        random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
        n = state_dict["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
