"""Build the DataModule, the LightningModule and the Trainer from a config, and run one command.

Build order (as in lightning-hydra-template): seed -> DataModule (classes) -> model -> callbacks and logger ->
Trainer -> command. `fit` ends by testing the best checkpoint (`checkpoint.test_with: last` tests the final weights).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, Timer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from mope_lightning.training.callbacks import (FiniteLoss, FinalWeights, PredictionWriter, ResumePosition, RNGState,
                                     RoutingMonitor, RoutingReport)
from mope_lightning.weights.adapters import read_trained_weights
from mope_lightning.weights.checkpoints import is_adapter, load_into
from mope_lightning.config.schema import HOW_IT_RUNS, differences, format_differences, to_container
from mope_lightning.training.config_callbacks import check_trainer_rules, fit_checkpoints, resolve_callbacks
from mope_lightning.config.checks import PARAM_GROUPS, read_modalities
from mope_lightning.data.base import MultimodalDataModule, data_prevents_caching
from mope_lightning.data.registry import DATAMODULES
from mope_lightning.data.audio import describe_clips
from mope_lightning.data.missing import describe as describe_missing
from mope_lightning.data.missing import lost_by
from mope_lightning.data.subsets import training_subset
from mope_lightning.errors import CheckpointError, ConfigError, Interrupted, ModelError, MopeError, NonFiniteError
from mope_lightning.fileio import NewFolders, atomic_write, check_writable, claim_output
from mope_lightning.training.launch import SafeCheckpointIO, check_compile, check_trainer, slurm_run_version
from mope_lightning.training.lit_module import MoPELitModule
from mope_lightning.training.resume import check_resume, record_resume
from mope_lightning.training.tracking import build_loggers, check_trackers, record_code, records_nothing, where_to_look

COMMANDS = ("fit", "validate", "test", "predict")


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
    datamodule = DATAMODULES[cfg.data.name](cfg.data)
    datamodule.seed = cfg.seed
    _check_modalities(cfg, datamodule)
    module = MoPELitModule(to_container(cfg), datamodule.classes, datamodule.task)
    _check_batch_size(cfg, module.net)
    _check_missing(cfg, module.net)
    datamodule.attach(module.net.input_spec())
    if cfg.model.compile:
        check_compile(to_container(cfg)["trainer"])
        module.net.compile()  # nn.Module.compile: in place, so checkpoints keep the weights' names
    return module, datamodule


def _check_modalities(cfg: DictConfig, datamodule: MultimodalDataModule) -> None:
    """The model reads modalities the dataset has (an audio dataset has no images), before anything is built."""
    lacking = [m for m in cfg.model.modalities if m not in datamodule.modalities]
    if lacking:
        raise ConfigError(f"model.modalities: {list(cfg.model.modalities)}, but {cfg.data.name} has "
                          f"{' and '.join(datamodule.modalities)}, no {' or '.join(lacking)}; set model.modalities="
                          f"[{','.join(datamodule.modalities)}] (see experiments/{cfg.data.name}.yaml)")


def _check_missing(cfg: DictConfig, net) -> None:
    """Refuse, before any data is read, a model that cannot run on the samples `data.missing` removes."""
    missing = cfg.data.get("missing")
    for split in ("train", "val", "test") if missing is not None else ():
        for kind in ("image", "text", "both"):
            if not missing[split][kind]:
                continue
            problem = next(filter(None, map(net.missing_problem, lost_by(kind))), None)
            if problem:
                raise ModelError(f"data.missing.{split}.{kind}: {problem}")


def _check_batch_size(cfg: DictConfig, net) -> None:
    """A trainable BatchNorm over (batch, features) cannot normalise a batch of one sample in training."""
    from torch import nn

    if cfg.data.batch_size > 1:
        return
    norms = [name for name, m in net.named_modules() if type(m) is nn.BatchNorm1d and m.weight.requires_grad]
    if norms:
        raise ConfigError(f"data.batch_size=1: the model's BatchNorm ({norms[0]}) cannot normalise a batch of one "
                          "sample in training; use data.batch_size >= 2, or model.compat.mapper_bn_frozen=true")


def count_parameters(cfg: DictConfig) -> dict:
    """Parameter counts of the model `cfg` builds, from its architecture alone: built on the meta device, so no
    weights are read or downloaded and nothing is allocated."""
    import torch

    from mope_lightning.models import build_model

    data_cls = DATAMODULES[cfg.data.name]
    try:
        num_classes = len(data_cls(cfg.data).classes)
    except MopeError:
        if data_cls.num_classes is None:
            raise
        num_classes = data_cls.num_classes  # the dataset is not here; its label set size is fixed
    with torch.device("meta"):
        net = build_model(cfg.model, num_classes, weights=False)
    features = {m: net.uncached_reason(m) for m in net.feature_modalities()}
    return {"num_classes": num_classes, **net.parameter_counts(), "pooled_features": features}


def format_parameter_counts(cfg: DictConfig, counts: dict) -> str:
    m = cfg.model
    enc = {k: f"{m[f'{k}_encoder'].library} {m[f'{k}_encoder'].name}" for k in m.modalities}
    if m.fusion == "pmoe":  # the experts replace the prompted modality's single encoder
        enc[m.prompted] = "experts " + ", ".join(f"{e.library} {e.name}" for e in m.pmoe.experts)
    lines = [f"[mope] parameters of {cfg.experiment}: fusion {m.fusion}, prompted {m.prompted}; "
             + ", ".join(f"{k} {v}" for k, v in enc.items()) + f"; {counts['num_classes']} classes"]
    for group in PARAM_GROUPS:
        if group in counts:
            lines.append(f"  {group:<18} {counts[group]:>14,}")
    lines += [f"  {'trainable':<18} {counts['trainable']:>14,}", f"  {'frozen':<18} {counts['frozen']:>14,}",
              f"  {'total':<18} {counts['total']:>14,}",
              f"  {'trainable / total':<18} {counts['trainable_percent']:>13.2f}%"]
    if "trainable_percent_of_frozen" in counts:
        lines.append(f"  {'trainable / frozen':<18} {counts['trainable_percent_of_frozen']:>13.2f}%")
    for modality, reason in counts["pooled_features"].items():
        reason = reason or data_prevents_caching(cfg.data, modality)
        how = "computed once per distinct input (data.cache_features)" if reason is None else \
            f"computed every batch: {reason}"
        lines.append(f"  {modality + ' feature':<18} {how}")
    return "\n".join(lines)


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
        raise CheckpointError(f"{ckpt_path}: its model (model.fusion={cfg.model.fusion}) has no router, so there is "
                              "no routing to report; analyze a MoPE or pMoE checkpoint")
    header = {"experiment": cfg.experiment, "checkpoint": ckpt_path, "split": a.split}
    trainer = L.Trainer(accelerator=cfg.trainer.get("accelerator", "auto"), devices=1, logger=False,
                        enable_checkpointing=False, precision=cfg.trainer.get("precision"),
                        callbacks=[RoutingReport(out, header, a.exemplars, a.attributes)],
                        enable_progress_bar=cfg.trainer.get("enable_progress_bar", True))
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
        raise ConfigError(f"analyze.attributes: '{unknown[0]}' is not an attribute of {datamodule.cfg.name}'s samples; "
                          f"it has {', '.join(has) or 'none'} (the class is always analysed)")


def check_data(cfg: DictConfig) -> tuple[str, int]:
    """A report of the dataset `cfg` points at (split sizes, label counts, images decoded, notes, every sample
    problem, counted by kind) and the number of problems. Structural problems (missing folders or split files, no
    labels) raise `DataError`."""
    from collections import Counter

    datamodule = DATAMODULES[cfg.data.name](cfg.data)
    scan = datamodule.index()
    lines = [f"[mope] check-data {cfg.data.name}: {len(datamodule.classes)} classes"]
    media = {"image": "images", "audio": "clips"}[datamodule.media]
    for name, split in scan.splits.items():
        lines.append(f"  {name:<6} {len(split):>9,} samples  {len(set(split.media_index)):>8,} {media}")
        counts = Counter(c for label in split.labels for c in (label if isinstance(label, list) else [label]))
        shown = ", ".join(f"{datamodule.classes[c]} {n}" for c, n in counts.most_common())
        lines.append(f"         labels: {shown}")
    digests = [d for pool in scan.digests.values() for d in pool]
    lines.append(f"  {media}: {sum(map(bool, digests)):,} decoded in full, {digests.count(''):,} unreadable"
                 if scan.digests else f"  {media}: not decoded (data.check_images=false: unreadable ones go "
                                      "unnoticed)")
    if datamodule.media == "audio":  # the rate the clips are resampled to is the audio encoder's, named at fit
        files = sorted({f for files in scan.pools.values() for f in files})
        lines += [f"  audio {line}" for line in describe_clips(files, None, cfg.data.get("max_audio_seconds"))]
    train, subset = training_subset(scan.splits["train"], datamodule.classes, cfg.data.train_fraction,
                                    cfg.data.shots_per_class, cfg.data.subset_seed)
    lines += [f"  note: {note}" for note in [*scan.notes, subset] if note]
    lines += _attribute_summary(scan.splits)
    tables = datamodule.missing_tables({**scan.splits, "train": train})
    lines += [f"  missing ({name}): {describe_missing(table)} (data.missing.{name}, seed {cfg.data.missing.seed})"
              for name, table in tables.items() if table]
    kinds = Counter(problem.kind for problem in scan.problems)
    names = {"record": "in the records", "image": "unreadable images", "audio": "unreadable audio clips",
             "duplicate": "ids repeated within a split",
             "overlap": "val/test samples also in train"}
    by_kind = ", ".join(f"{n} {names.get(kind, kind)}" for kind, n in kinds.items())
    lines.append(f"  problems: {len(scan.problems)}" + (f" ({by_kind})" if scan.problems else
                                                        " (the dataset is clean)"))
    lines += [f"    {problem}" for problem in scan.problems]
    return "\n".join(lines), len(scan.problems)


def _attribute_summary(splits: dict) -> list[str]:
    """One line per sample attribute (for routing analysis): its values and how many samples lack one."""
    names = sorted({name for split in splits.values() for name in split.attributes})
    lines = []
    for name in names:
        columns = [split.attributes.get(name, [[]] * len(split)) for split in splits.values()]
        values = sorted({v for column in columns for row in column for v in row})
        unknown = sum(not row for column in columns for row in column)
        shown = ", ".join(values[:8]) + (f", ... ({len(values)} in all)" if len(values) > 8 else "")
        lines.append(f"  attribute {name}: {shown}; {unknown:,} sample(s) without one")
    return lines


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


def build_trainer(cfg: DictConfig, datamodule: MultimodalDataModule, command: str,
                  version: Optional[str | int] = None) -> L.Trainer:
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
    if command == "predict":
        out = cfg.predict.out or str(Path(loggers[0].log_dir) / "predictions.csv")
        callbacks.append(PredictionWriter(out, datamodule.classes, datamodule.task))
    # A SLURM job's requeue checkpoint (hpc_ckpt_N.ckpt) lives in its own run directory, where a requeue finds it.
    default_root = root / str(version) if isinstance(version, str) else root
    try:
        return L.Trainer(**trainer_args, default_root_dir=default_root, logger=loggers, callbacks=callbacks,
                         plugins=[SafeCheckpointIO()], use_distributed_sampler=False)
    except (ValueError, TypeError, MisconfigurationException) as exc:  # Lightning's own checks of the values
        raise ConfigError(f"trainer: lightning.Trainer refused these settings: {str(exc).splitlines()[0]}") from None


def run(command: str, cfg: DictConfig) -> dict:
    """Run `command` ("fit", "validate", "test", "predict") for `cfg`; return the final metrics (and paths)."""
    if command not in COMMANDS:
        raise ConfigError(f"unknown command '{command}'; use one of {', '.join(COMMANDS)}")
    ckpt_path, version = resolve_ckpt(cfg)
    if command != "fit" and ckpt_path is None:
        raise ConfigError(f"{command} needs ckpt=PATH: the checkpoint to evaluate (fit writes them under "
                          f"{cfg.trainer.default_root_dir}/version_*/checkpoints/)")
    resume_changes = check_resume(cfg, ckpt_path) if command == "fit" and ckpt_path is not None else None
    check_trackers(cfg)
    record_code(cfg)
    if command == "predict" and cfg.predict.input:
        return predict_new_data(cfg, ckpt_path)
    if command == "predict" and cfg.predict.out:
        claim_predictions(cfg.predict.out, [ckpt_path], cfg.predict.overwrite)
    with NewFolders() as created:  # a command that fails leaves no empty run directory behind
        created.expect(cfg.trainer.default_root_dir)
        module, datamodule = build(cfg)
        datamodule.predict_split = cfg.predict.split
        trainer = build_trainer(cfg, datamodule, command, version if command == "fit" else None)
        created.expect(trainer.log_dir, records_nothing=records_nothing)
        return _run_command(command, cfg, trainer, module, datamodule, ckpt_path, resume_changes)


def claim_predictions(out: str | Path, inputs: list, overwrite: bool) -> Path:
    """`predict.out` checked (fileio.claim_output): a file, never an input nor inside an input folder (an adapter
    being read), and an existing file only when it is predictions mope wrote and predict.overwrite=true."""
    from mope_lightning.predictions import is_predictions_csv

    return claim_output(out, "predict.out", inputs=inputs, overwrite=overwrite, earlier=is_predictions_csv,
                        what="predictions CSV")


def _run_command(command: str, cfg: DictConfig, trainer: L.Trainer, module: MoPELitModule,
                 datamodule: MultimodalDataModule, ckpt_path: Optional[str], resume_changes) -> dict:
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
            summary["predictions"] = next(cb.out for cb in trainer.callbacks if isinstance(cb, PredictionWriter))
    if trainer.is_global_zero:
        _report(command, summary, trainer)
    return summary


def _fit_and_test(cfg: DictConfig, trainer: L.Trainer, module: MoPELitModule, datamodule: MultimodalDataModule,
                  ckpt_path: Optional[str]) -> dict:
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
        metrics = trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt, verbose=False,
                               weights_only=True)[0]
    except SystemExit as exc:  # Lightning ends a run that got SIGTERM or Ctrl-C with SystemExit
        if trainer.state.status != TrainerStatus.INTERRUPTED:
            raise
        name, code = ("SIGTERM", 143) if isinstance(exc, SIGTERMException) else ("SIGINT (Ctrl-C)", 130)
        last = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt" if trainer.checkpoint_callback else None
        kept = (f"its weights at step {trainer.global_step} are in {last}; resume with `mope fit ... ckpt=last`"
                if last is not None and last.is_file() else "no weights were saved (no training step had run)")
        raise Interrupted(f"fit interrupted by {name} before it finished, so nothing was tested; {kept}",
                          code) from None
    return {"best_checkpoint": best or None, "tested_weights": test_ckpt or "final weights", "metrics": metrics,
            "seconds": {"train": round(train_seconds, 1), "test": round(timer.time_elapsed("test"), 1)},
            "parameters": module.net.parameter_counts()}


def export(cfg: DictConfig) -> Path:
    """`mope export`: the trained weights of `ckpt` as an adapter folder `export.out` (mope_lightning/weights/adapters.py)."""
    from mope_lightning.weights.adapters import claim_adapter_folder, recorded_test_metrics, write_adapter
    from mope_lightning.pretrained import build_pretrained, parameter_summary

    if not cfg.export.out:
        raise ConfigError("export needs out=DIR: the folder to write the adapter to")
    ckpt_path, _ = resolve_ckpt(cfg)
    if ckpt_path is None:
        raise ConfigError("export needs ckpt=PATH: the checkpoint to export")
    claim_adapter_folder(cfg.export.out, cfg.export.overwrite, [ckpt_path])  # before any model work
    trained = read_trained_weights(ckpt_path)
    changed = [c for c in differences(trained.config.get("model", {}), to_container(cfg)["model"], "model.")
               if c[0] not in HOW_IT_RUNS]
    if changed:
        raise ConfigError(f"ckpt: {ckpt_path} was trained with other model settings than this config gives ("
                          f"{format_differences(changed)}); export it with the config it was trained with")
    model = build_pretrained(cfg, trained)  # checks that the frozen weights here are the ones it was trained on
    trained.metrics = trained.metrics or recorded_test_metrics(ckpt_path)
    out = write_adapter(cfg.export.out, trained, parameter_summary(model.net), cfg.export.overwrite)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"[mope] adapter of {ckpt_path} written to {out} ({size / 1e6:.2f} MB; load it with "
          f"mope_lightning.from_pretrained(\"{out}\"))", flush=True)
    return out


def predict_new_data(cfg: DictConfig, ckpt_path: str) -> dict:
    """`mope predict ... predict.input=ROWS`: predictions for a JSONL or CSV of (text, image path) rows."""
    import torch

    from mope_lightning.data.rows import read_rows
    from mope_lightning.predictions import write_predictions_csv
    from mope_lightning.pretrained import build_pretrained

    rows_path = Path(cfg.predict.input).expanduser()
    out = claim_predictions(cfg.predict.out or rows_path.with_suffix(".predictions.csv"), [ckpt_path, rows_path],
                            cfg.predict.overwrite)
    # Every row and the files it names are checked first: building the model (encoders, weights) takes longest.
    rows = read_rows(rows_path, read_modalities(cfg.model))
    model = build_pretrained(cfg, read_trained_weights(ckpt_path))
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator != "cpu" and torch.cuda.is_available():
        model.to("cuda")
    batch_size = cfg.data.eval_batch_size or 2 * cfg.data.batch_size
    preds = model.predict(texts=[r.text for r in rows] if rows[0].text is not None else None,
                          images=[r.image for r in rows] if rows[0].image is not None else None,
                          audio=[r.audio for r in rows] if rows[0].audio is not None else None,
                          batch_size=batch_size)
    atomic_write(out, lambda fh: write_predictions_csv(fh, [r.id for r in rows], preds.probs, preds.classes,
                                                       model.task))
    print(f"[mope] predict finished: {len(rows)} rows of {rows_path}\n  predictions              {out}\n"
          f"  checkpoint               {ckpt_path}", flush=True)
    return {"predictions": str(out), "checkpoint": ckpt_path, "rows": len(rows)}


def _report(command: str, summary: dict, trainer: L.Trainer) -> None:
    metrics = {k: float(v) for k, v in summary.get("metrics", {}).items()}
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:  # exit status 0 means a real result: a NaN metric is not one
        raise NonFiniteError(f"{command}: {', '.join(f'{k} is {v}' for k, v in bad.items())}; the weights or the "
                             f"inputs give non-finite outputs, so no result was written (run directory "
                             f"{summary['run_dir']})")
    if metrics and summary["run_dir"] and not trainer.fast_dev_run:
        result = {**summary, "metrics": metrics}
        atomic_write(Path(summary["run_dir"]) / f"{command}_metrics.json",
                     lambda fh: json.dump(result, fh, indent=2, default=str))
    lines = [f"[mope] {command} finished"]
    lines += [f"  {k:<24} {v:.4f}" for k, v in sorted(metrics.items())]
    if summary["run_dir"] is None:
        lines.append("  (fast_dev_run: nothing was logged or saved)")
        print("\n".join(lines), flush=True)
        return
    lines.append(f"  run directory            {summary['run_dir']}")
    if summary.get("checkpoint"):
        lines.append(f"  checkpoint               {summary['checkpoint']}")
    if summary.get("best_checkpoint"):
        lines.append(f"  best checkpoint          {summary['best_checkpoint']}")
    if "tested_weights" in summary:
        lines.append(f"  tested                   {summary['tested_weights']}")
    if summary.get("seconds"):
        lines.append(f"  wall time                train {summary['seconds']['train']:.0f} s (validation included), "
                     f"test {summary['seconds']['test']:.0f} s")
    if summary.get("predictions"):
        lines.append(f"  predictions              {summary['predictions']}")
    lines += [f"  {tracker:<24} {how}" for tracker, how in where_to_look(trainer.loggers)]
    print("\n".join(lines), flush=True)
