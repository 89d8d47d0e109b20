"""`mope analyze`: the routing report of a checkpoint over a split (analysis/report.py writes it)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from mope_lightning.data.base import MultimodalDataModule
from mope_lightning.errors import CheckpointError, ConfigError
from mope_lightning.training.build import build, resolve_ckpt
from mope_lightning.training.callbacks import RoutingReport
from mope_lightning.weights.adapters import read_trained_weights
from mope_lightning.weights.checkpoints import load_into


def analyze(cfg: DictConfig) -> Path:
    """Run a checkpoint over a split and write its routing report (heatmaps, exemplars, CSV, summary) to `out`."""
    from mope_lightning.analysis.report import claim_report_folder

    a = cfg.analyze
    if not a.out:
        raise ConfigError("analyze needs out=DIR: the folder for the routing report")
    ckpt_path, _ = resolve_ckpt(cfg)
    if ckpt_path is None:
        raise ConfigError("analyze needs ckpt=PATH: the checkpoint whose routing to report")
    out = claim_report_folder(a.out, [ckpt_path], a.overwrite)  # before any model work
    module, datamodule = build(cfg)
    _check_attributes(a.attributes, datamodule)
    load_into(module.net, read_trained_weights(ckpt_path), datamodule.classes)
    if module.val_routing is None:
        raise CheckpointError(
            f"{ckpt_path}: its model (model.fusion={cfg.model.fusion}) has no router, so there is "
            "no routing to report; analyze a MoPE or pMoE checkpoint"
        )
    header = {"experiment": cfg.experiment, "checkpoint": ckpt_path, "split": a.split}
    trainer = L.Trainer(
        accelerator=cfg.trainer.get("accelerator", "auto"),
        devices=1,
        logger=False,
        enable_checkpointing=False,
        precision=cfg.trainer.get("precision"),
        callbacks=[RoutingReport(out, header, a.exemplars, a.attributes)],
        enable_progress_bar=cfg.trainer.get("enable_progress_bar", True),
    )
    evaluate = trainer.validate if a.split == "val" else trainer.test
    evaluate(module, datamodule=datamodule, verbose=False)
    print(f"[mope] routing report of {a.split} written to {out} (summary.md)", flush=True)
    return out


def _check_attributes(names, datamodule: MultimodalDataModule) -> None:
    if names is None:
        return
    splits, _ = datamodule.read_splits(verbose=False)
    has = sorted({name for split in splits.values() for name in split.attributes})
    unknown = [n for n in names if n not in has]
    if unknown:
        raise ConfigError(
            f"analyze.attributes: '{unknown[0]}' is not an attribute of {datamodule.cfg.name}'s samples; "
            f"it has {', '.join(has) or 'none'} (the class is always analysed)"
        )


def main(cfg: DictConfig) -> int:
    analyze(cfg)
    return 0
