"""Build the DataModule, the LightningModule and the Trainer from a config (every command that runs a Trainer).

Build order (as in lightning-hydra-template): seed -> DataModule (classes) -> model -> callbacks and logger ->
Trainer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, Timer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mope_lightning.config.schema import to_container
from mope_lightning.data.base import MultimodalDataModule
from mope_lightning.data.missing import lost_by, rate_key, removals
from mope_lightning.errors import ConfigError, ModelError
from mope_lightning.fileio import atomic_write, check_writable
from mope_lightning.models.registry import SEGMENTATION
from mope_lightning.training.callbacks import (
    FiniteLoss,
    FinalWeights,
    MaskWriter,
    PredictionWriter,
    ResumePosition,
    RNGState,
    RoutingMonitor,
)
from mope_lightning.training.config_callbacks import check_trainer_rules, fit_checkpoints, resolve_callbacks
from mope_lightning.training.datamodule import datamodule as build_datamodule
from mope_lightning.training.launch import SafeCheckpointIO, check_compile, check_trainer, slurm_run_version
from mope_lightning.training.lit_module import MoPELitModule
from mope_lightning.training.tracking import build_loggers
from mope_lightning.weights.checkpoints import is_adapter


class SaveConfig(Callback):
    """Writes the resolved config to `<run dir>/config.yaml` once, from rank 0 (as LightningCLI does)."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        log_dir = trainer.log_dir  # a collective (rank 0's directory is broadcast): every rank asks
        if trainer.is_global_zero and log_dir and not trainer.fast_dev_run:
            resolved = OmegaConf.to_yaml(self.cfg, resolve=True)
            atomic_write(Path(log_dir) / "config.yaml", lambda fh: fh.write(resolved))


def build(cfg: DictConfig) -> tuple[MoPELitModule, MultimodalDataModule]:
    """Seed, then build the DataModule and the LightningModule, and tell the DataModule what the model reads."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg.data)
    datamodule.seed = cfg.seed
    _check_modalities(cfg, datamodule)
    module = MoPELitModule(to_container(cfg), datamodule.classes, datamodule.task)
    _check_batch_size(cfg, module.net)
    _check_missing(cfg, module.net)
    _check_expert_normalisation(cfg, module.net)
    _check_video_frames(cfg, module.net)
    datamodule.attach(module.net.input_spec())
    if cfg.model.compile:
        check_compile(to_container(cfg)["trainer"])
        module.net.compile()  # nn.Module.compile: in place, so checkpoints keep the weights' names
    return module, datamodule


def _check_modalities(cfg: DictConfig, datamodule: MultimodalDataModule) -> None:
    """The model reads modalities the dataset has (an audio dataset has no images), before anything is built."""
    lacking = [m for m in cfg.model.modalities if m not in datamodule.modalities]
    if lacking:
        # a dataset that provides them with other settings (MUStARD's data.media) says which to set
        hint = datamodule.load_hint(lacking) if set(lacking) <= set(datamodule.provided_modalities()) else ""
        raise ConfigError(
            f"model.modalities: {list(cfg.model.modalities)}, but {cfg.data.name} has "
            f"{' and '.join(datamodule.modalities)}, no {' or '.join(lacking)}; set model.modalities="
            f"[{','.join(datamodule.modalities)}] (see experiments/{cfg.data.name}.yaml)"
            + (f", or {hint}" if hint else "")
        )


def _check_expert_normalisation(cfg: DictConfig, net) -> None:
    """pMoE image experts that normalise differently each get their own normalisation from one batch
    (models/expert_inputs.py), whose normalisation must therefore be the batch config's own, not a `data` override."""
    mapped = any(not isinstance(m, nn.Identity) for m in getattr(net, "expert_inputs", None) or ())
    overridden = [k for k in ("image_mean", "image_std") if cfg.data.get(k) is not None]
    if mapped and overridden:
        raise ConfigError(
            f"data.{overridden[0]}: the pMoE image experts preprocess differently, and each normalises "
            "with its own pretrained mean and std (one batch is mapped to each expert's input); unset "
            f"data.{' and data.'.join(overridden)}"
        )


def _check_missing(cfg: DictConfig, net) -> None:
    """Refuse, before any data is read, a model that cannot run on the samples `data.missing` removes."""
    missing = cfg.data.get("missing")
    for split in ("train", "val", "test") if missing is not None else ():
        for kind, _ in removals(missing[split]):
            problem = next(filter(None, map(net.missing_problem, lost_by(kind))), None)
            if problem:
                raise ModelError(f"data.missing.{split}.{rate_key(kind)}: {problem}")


def _check_video_frames(cfg: DictConfig, net) -> None:
    """A video transformer's positions are a table for a fixed number of frames (models/video_encoders.py): the
    clips must be sampled to exactly that many."""
    encoder = getattr(net, "video", None)
    frames = getattr(encoder, "num_frames", None)
    if frames is not None and cfg.data.get("video_frames") != frames:
        raise ConfigError(
            f"data.video_frames={cfg.data.get('video_frames')}: model.video_encoder ({cfg.model.video_encoder.name}) "
            f"reads clips of exactly {frames} frames; set data.video_frames={frames}"
        )


def _check_batch_size(cfg: DictConfig, net) -> None:
    """A trainable BatchNorm over (batch, features) cannot normalise a batch of one sample in training."""
    if cfg.data.batch_size > 1:
        return
    norms = [name for name, m in net.named_modules() if type(m) is nn.BatchNorm1d and m.weight.requires_grad]
    if norms:
        raise ConfigError(
            f"data.batch_size=1: the model's BatchNorm ({norms[0]}) cannot normalise a batch of one "
            "sample in training; use data.batch_size >= 2, or model.compat.mapper_bn_frozen=true"
        )


def _versions(root: Path) -> list[int]:
    found = [re.fullmatch(r"version_(\d+)", p.name) for p in root.glob("version_*") if p.is_dir()]
    return sorted(int(m.group(1)) for m in found if m)


def resolve_ckpt(cfg: DictConfig) -> tuple[Optional[str], Optional[int]]:
    """The checkpoint path `ckpt` names, and the run version it belongs to when it is `last` (resume in place)."""
    if cfg.ckpt is None:
        return None, None
    root = Path(cfg.trainer.default_root_dir)
    if cfg.ckpt == "last":
        for version in reversed(_versions(root)):
            path = root / f"version_{version}" / "checkpoints" / "last.ckpt"
            if path.is_file():
                return str(path), version
        raise ConfigError(f"ckpt=last: no {root}/version_*/checkpoints/last.ckpt yet; run fit first or pass a path")
    path = Path(cfg.ckpt).expanduser()
    if not path.is_file() and not is_adapter(path):
        what = "is a folder without adapter_config.json" if path.is_dir() else "not found"
        raise ConfigError(f"ckpt: {path}: {what}; pass a checkpoint file (.ckpt) or an exported adapter folder")
    return str(path), None


def build_trainer(
    cfg: DictConfig, datamodule: MultimodalDataModule, command: str, version: Optional[str | int] = None
) -> L.Trainer:
    """The Trainer of `cfg.trainer`, with the config's loggers and callbacks, and the framework's callbacks,
    samplers and checkpoint I/O."""
    trainer_args = to_container(cfg)["trainer"]
    check_trainer(trainer_args)
    if command == "fit":
        checkpoints = fit_checkpoints(cfg.checkpoint, cfg.checkpoint.monitor or datamodule.monitor)
        extra = resolve_callbacks(to_container(cfg.callbacks), "callbacks")  # checked when the config loaded, and
        # again here against the dataset's own headline metric (a JSONL dataset's depends on its options)
        check_trainer_rules(extra, checkpoints, "callbacks", trainer_args.get("enable_progress_bar") is not False)
    root = Path(trainer_args.pop("default_root_dir"))
    check_writable(root, "trainer.default_root_dir")
    max_time = trainer_args.pop("max_time", None)
    version = version if version is not None else slurm_run_version()
    loggers = build_loggers(cfg, root, version)
    callbacks: list[Callback] = [SaveConfig(cfg)]
    if command == "fit":
        callbacks += [
            LearningRateMonitor(logging_interval="step"),
            # Wall time of training (validation included) and testing, for the summary. It also enforces
            # trainer.max_time: Lightning ignores max_time when the callbacks already hold a Timer.
            Timer(duration=max_time),
            RoutingMonitor(),
            RNGState(),
            ResumePosition(),  # a resumed run starts where its checkpoint stopped, whatever its max_steps
            FiniteLoss(),  # a NaN or infinite loss stops training before it reaches the weights
            FinalWeights(),  # last.ckpt however training ends, interrupts included
            *checkpoints.values(),
            *extra,
        ]
    if command == "validate":
        callbacks.append(RoutingMonitor())
    if command == "predict" and datamodule.task == SEGMENTATION:  # a folder of mask PNGs
        callbacks.append(MaskWriter(cfg.predict.out or str(Path(loggers[0].log_dir) / "masks"), datamodule.classes))
    elif command == "predict":
        out = cfg.predict.out or str(Path(loggers[0].log_dir) / "predictions.csv")
        callbacks.append(PredictionWriter(out, datamodule.classes, datamodule.task))
    # A SLURM job's requeue checkpoint (hpc_ckpt_N.ckpt) lives in its own run directory, where a requeue finds it.
    default_root = root / str(version) if isinstance(version, str) else root
    try:
        return L.Trainer(
            **trainer_args,
            default_root_dir=default_root,
            logger=loggers,
            callbacks=callbacks,
            plugins=[SafeCheckpointIO()],
            use_distributed_sampler=False,
        )
    except (ValueError, TypeError, MisconfigurationException) as exc:  # Lightning's own checks of the values
        raise ConfigError(f"trainer: lightning.Trainer refused these settings: {str(exc).splitlines()[0]}") from None
