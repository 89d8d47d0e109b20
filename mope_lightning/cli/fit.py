"""`mope fit | validate | test | predict`: build (training/build.py) and run one command; `fit` ends by testing the
best checkpoint (`checkpoint.test_with: last` tests the final weights). `predict` with `predict.input` predicts new
rows through the inference path (`build_pretrained`), without a Trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import Timer
from omegaconf import DictConfig

from mope_lightning.cli.report import report
from mope_lightning.config.checks import read_modalities
from mope_lightning.config.schema import to_container
from mope_lightning.data.base import MultimodalDataModule
from mope_lightning.data.registry import dataset_class
from mope_lightning.errors import ConfigError, Interrupted
from mope_lightning.fileio import NewFolders, atomic_write, claim_output
from mope_lightning.models.registry import SEGMENTATION
from mope_lightning.training.build import build, build_trainer, resolve_ckpt
from mope_lightning.training.callbacks import MaskWriter, PredictionWriter
from mope_lightning.training.lit_module import MoPELitModule
from mope_lightning.training.resume import check_resume, record_resume
from mope_lightning.training.tracking import check_trackers, record_code, records_nothing
from mope_lightning.weights.adapters import read_trained_weights
from mope_lightning.weights.checkpoints import load_into

COMMANDS = ("fit", "validate", "test", "predict")


def run(command: str, cfg: DictConfig) -> dict:
    """Run `command` ("fit", "validate", "test", "predict") for `cfg`; return the final metrics (and paths)."""
    if command not in COMMANDS:
        raise ConfigError(f"unknown command '{command}'; use one of {', '.join(COMMANDS)}")
    ckpt_path, version = resolve_ckpt(cfg)
    if command != "fit" and ckpt_path is None:
        raise ConfigError(
            f"{command} needs ckpt=PATH: the checkpoint to evaluate (fit writes them under "
            f"{cfg.trainer.default_root_dir}/version_*/checkpoints/)"
        )
    resume_changes = check_resume(cfg, ckpt_path) if command == "fit" and ckpt_path is not None else None
    check_trackers(cfg)
    record_code(cfg)
    if command == "predict" and cfg.predict.input:
        return predict_new_data(cfg, ckpt_path)
    if command == "predict" and cfg.predict.out:
        claim_predictions(cfg.predict.out, [ckpt_path], cfg.predict.overwrite, segments(cfg))
    with NewFolders() as created:  # a command that fails leaves no empty run directory behind
        created.expect(cfg.trainer.default_root_dir)
        module, datamodule = build(cfg)
        datamodule.predict_split = cfg.predict.split
        trainer = build_trainer(cfg, datamodule, command, version if command == "fit" else None)
        created.expect(trainer.log_dir, records_nothing=records_nothing)
        return _run_command(command, cfg, trainer, module, datamodule, ckpt_path, resume_changes)


def segments(cfg: DictConfig) -> bool:
    """Whether `cfg`'s dataset is a segmentation one: predictions are then masks, written as a folder."""
    return dataset_class(cfg.data).task == SEGMENTATION


def claim_predictions(out: str | Path, inputs: list, overwrite: bool, masks: bool = False) -> Path:
    """`predict.out` checked (fileio.claim_output): never an input nor inside an input folder (an adapter being
    read); a predictions CSV file, or with `masks` a folder (mask_predictions.claim_mask_folder), replaced only
    when mope wrote it and predict.overwrite=true."""
    from mope_lightning.mask_predictions import claim_mask_folder
    from mope_lightning.predictions import is_predictions_csv

    if masks:
        return claim_mask_folder(out, inputs, overwrite)
    return claim_output(
        out, "predict.out", inputs=inputs, overwrite=overwrite, earlier=is_predictions_csv, what="predictions CSV"
    )


def _run_command(
    command: str,
    cfg: DictConfig,
    trainer: L.Trainer,
    module: MoPELitModule,
    datamodule: MultimodalDataModule,
    ckpt_path: Optional[str],
    resume_changes,
) -> dict:
    summary: dict = {"run_dir": trainer.log_dir}
    if resume_changes is not None:
        record_resume(trainer, ckpt_path, resume_changes, to_container(cfg.run))
    if command == "fit":
        summary.update(_fit_and_test(cfg, trainer, module, datamodule, ckpt_path))
    else:
        # Evaluation needs the trained weights only, not the training state of the checkpoint.
        load_into(module.net, read_trained_weights(ckpt_path), datamodule.classes)
        summary["checkpoint"] = ckpt_path
        if command == "validate":
            summary["metrics"] = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
        elif command == "test":
            summary["metrics"] = trainer.test(module, datamodule=datamodule, verbose=False)[0]
        else:
            trainer.predict(module, datamodule=datamodule, return_predictions=False)
            writers = (PredictionWriter, MaskWriter)
            summary["predictions"] = next(cb.out for cb in trainer.callbacks if isinstance(cb, writers))
    if trainer.is_global_zero:
        report(command, summary, trainer)
    return summary


def _fit_and_test(
    cfg: DictConfig,
    trainer: L.Trainer,
    module: MoPELitModule,
    datamodule: MultimodalDataModule,
    ckpt_path: Optional[str],
) -> dict:
    """Train, then test the best (or last) weights. A signal ends it with `Interrupted`: never a success."""
    from lightning.pytorch.trainer.states import TrainerStatus
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    timer = next(cb for cb in trainer.callbacks if isinstance(cb, Timer))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        # Read now: restoring the best checkpoint for testing also restores the timer's saved offset.
        train_seconds = timer.time_elapsed("train")
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        # The reference tests its last weights; model.compat.mode=reference restores that with everything else.
        test_with = "last" if cfg.model.compat.mode == "reference" else cfg.checkpoint.test_with
        test_ckpt = best if (best and test_with == "best") else None
        metrics = trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt, verbose=False, weights_only=True)[0]
    except SystemExit as exc:  # Lightning ends a run that got SIGTERM or Ctrl-C with SystemExit
        if trainer.state.status != TrainerStatus.INTERRUPTED:
            raise
        name, code = ("SIGTERM", 143) if isinstance(exc, SIGTERMException) else ("SIGINT (Ctrl-C)", 130)
        last = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt" if trainer.checkpoint_callback else None
        kept = (
            f"its weights at step {trainer.global_step} are in {last}; resume with `mope fit ... ckpt=last`"
            if last is not None and last.is_file()
            else "no weights were saved (no training step had run)"
        )
        raise Interrupted(
            f"fit interrupted by {name} before it finished, so nothing was tested; {kept}", code
        ) from None
    return {
        "best_checkpoint": best or None,
        "tested_weights": test_ckpt or "final weights",
        "metrics": metrics,
        "seconds": {"train": round(train_seconds, 1), "test": round(timer.time_elapsed("test"), 1)},
        "parameters": module.net.parameter_counts(),
    }


def predict_new_data(cfg: DictConfig, ckpt_path: str) -> dict:
    """`mope predict ... predict.input=ROWS`: predictions for a JSONL or CSV of rows (a text and media paths); for a
    segmentation model, of image rows: their masks, as a folder (`mope_lightning.mask_predictions`)."""
    import torch

    from mope_lightning.data.rows import read_rows
    from mope_lightning.mask_predictions import write_mask_folder
    from mope_lightning.predictions import write_predictions_csv
    from mope_lightning.pretrained import build_pretrained

    rows_path = Path(cfg.predict.input).expanduser()
    masks = segments(cfg)
    default = rows_path.with_suffix(".masks" if masks else ".predictions.csv")
    out = claim_predictions(cfg.predict.out or default, [ckpt_path, rows_path], cfg.predict.overwrite, masks)
    # Every row and the files it names are checked first: building the model (encoders, weights) takes longest.
    rows = read_rows(rows_path, read_modalities(cfg.model))
    model = build_pretrained(cfg, read_trained_weights(ckpt_path))
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator != "cpu" and torch.cuda.is_available():
        model.to("cuda")
    batch_size = cfg.data.eval_batch_size or 2 * cfg.data.batch_size
    preds = model.predict(
        texts=[r.text for r in rows] if rows[0].text is not None else None,
        images=[r.image for r in rows] if rows[0].image is not None else None,
        audio=[r.audio for r in rows] if rows[0].audio is not None else None,
        video=[r.video for r in rows] if rows[0].video is not None else None,
        batch_size=batch_size,
    )
    ids = [r.id for r in rows]
    if masks:
        write_mask_folder(out, ids, preds.masks, preds.classes)
    else:
        atomic_write(out, lambda fh: write_predictions_csv(fh, ids, preds.probs, preds.classes, model.task))
    print(
        f"[mope] predict finished: {len(rows)} rows of {rows_path}\n  predictions              {out}\n"
        f"  checkpoint               {ckpt_path}",
        flush=True,
    )
    return {"predictions": str(out), "checkpoint": ckpt_path, "rows": len(rows)}


def fit(cfg: DictConfig) -> int:
    run("fit", cfg)
    return 0


def validate(cfg: DictConfig) -> int:
    run("validate", cfg)
    return 0


def test(cfg: DictConfig) -> int:
    run("test", cfg)
    return 0


def predict(cfg: DictConfig) -> int:
    run("predict", cfg)
    return 0
