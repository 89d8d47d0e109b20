"""`mope export`: a checkpoint's trained weights as a shareable adapter folder (weights/adapters.py)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from mope_lightning.config.schema import HOW_IT_RUNS, differences, format_differences, to_container
from mope_lightning.errors import ConfigError
from mope_lightning.training.build import resolve_ckpt
from mope_lightning.weights.adapters import read_trained_weights


def export(cfg: DictConfig) -> Path:
    """`mope export`: the trained weights of `ckpt` as an adapter folder `export.out` (weights/adapters.py)."""
    from mope_lightning.weights.adapters import claim_adapter_folder, recorded_test_metrics, write_adapter
    from mope_lightning.pretrained import build_pretrained, parameter_summary

    if not cfg.export.out:
        raise ConfigError("export needs out=DIR: the folder to write the adapter to")
    ckpt_path, _ = resolve_ckpt(cfg)
    if ckpt_path is None:
        raise ConfigError("export needs ckpt=PATH: the checkpoint to export")
    claim_adapter_folder(cfg.export.out, cfg.export.overwrite, [ckpt_path])  # before any model work
    trained = read_trained_weights(ckpt_path)
    changed = [
        c
        for c in differences(trained.config.get("model", {}), to_container(cfg)["model"], "model.")
        if c[0] not in HOW_IT_RUNS
    ]
    if changed:
        raise ConfigError(
            f"ckpt: {ckpt_path} was trained with other model settings than this config gives ("
            f"{format_differences(changed)}); export it with the config it was trained with"
        )
    model = build_pretrained(cfg, trained)  # checks that the frozen weights here are the ones it was trained on
    trained.metrics = trained.metrics or recorded_test_metrics(ckpt_path)
    out = write_adapter(cfg.export.out, trained, parameter_summary(model.net), cfg.export.overwrite)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(
        f"[mope] adapter of {ckpt_path} written to {out} ({size / 1e6:.2f} MB; load it with "
        f'mope_lightning.from_pretrained("{out}"))',
        flush=True,
    )
    return out


def main(cfg: DictConfig) -> int:
    export(cfg)
    return 0
