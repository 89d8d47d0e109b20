"""Typed experiment configuration: a structured schema merged with YAML files, then `key=value` overrides.

`load_config(["experiments/easy_vqa.yaml", "experiments/overlays/tiny.yaml"], ["model.mope.num_experts=8"])`
merges left to right. An unknown key, a wrong type or a value outside its choices raises `ConfigError` naming the
source (file or command line), the full key and, for unknown keys, the nearest valid one.

The `data` section is typed by the dataset: `data.name` picks the dataclass registered for that DataModule, so each
dataset declares its own options. The `trainer` section is free-form and passed to `lightning.Trainer`; its keys are
checked against the Trainer's signature by the checks training/trainer_config.py passes to `merge_config` (its
`load_config`): this package imports no Lightning.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mope_lightning.config.checks import check_loggers, check_values

# The model schema, merging and stored configs live apart so that loading a trained model needs no Lightning;
# their names stay importable from here.
from mope_lightning.config.model import (
    CompatConfig,  # noqa: F401
    EncoderConfig,  # noqa: F401
    ModelConfig,
    MoPEConfig,  # noqa: F401
    PMoEConfig,  # noqa: F401
    RouterConfig,  # noqa: F401
    merge_node,
    parse_overrides,
    select_node,
    stored_config,  # noqa: F401
)
from mope_lightning.data.options import DataConfig, MissingConfig, MissingRates  # noqa: F401
from mope_lightning.errors import ConfigError, suggest  # noqa: F401
from mope_lightning.models.attention import ATTENTION_CHOICES
from mope_lightning.models.registry import FUSIONS, HEADS, MODALITIES, TIME_POOLS


OPTIMIZERS = ("adamw", "adam", "sgd")
STEP_SCHEDULES = ("cosine", "linear", "constant", "cosine_with_min_lr")
SCHEDULERS = (*STEP_SCHEDULES, "multistep")


@dataclass
class OptimConfig:
    """Built by mope_lightning/training/optim.py: torch's optimizers, transformers' per-step schedules."""

    optimizer: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw, adam
    momentum: float = 0.9  # sgd
    group_lr: Dict[str, float] = field(default_factory=dict)  # prompts | router | mapper | head -> lr
    # per step, after warmup_steps of linear warmup: cosine | linear | constant | cosine_with_min_lr;
    # per epoch: multistep (x gamma at each milestone epoch, no warmup)
    scheduler: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine_with_min_lr: the final rate as a fraction of lr
    milestones: List[int] = field(default_factory=lambda: [3, 6])
    gamma: float = 0.4


@dataclass
class CheckpointConfig:
    monitor: Optional[str] = None  # default: the dataset's headline metric (val/acc, val/f1_micro)
    mode: str = "max"
    save_top_k: int = 1
    save_last: bool = True  # replace last.ckpt at every validation (it is always written when training ends)
    test_with: str = "best"  # best | last: which weights `fit` tests at the end


@dataclass
class PredictConfig:
    split: str = "test"  # train | val | test
    input: Optional[str] = None  # new data instead of a split: a .jsonl or .csv of text and image (path) rows
    out: Optional[str] = None  # default: <run dir>/predictions.csv (a split), <input>.predictions.csv (new data)
    overwrite: bool = False  # replace an existing `out` (never one of the command's inputs)


@dataclass
class ExportConfig:
    """`mope export EXP.yaml ckpt=PATH out=DIR` (out and overwrite are aliases)."""

    out: Optional[str] = None  # the adapter folder
    overwrite: bool = False  # replace an existing adapter in `out`


@dataclass
class ShardsOutputConfig:
    """`mope shards EXP.yaml out=DIR [images_per_shard=N]` (out, images_per_shard, overwrite are aliases)."""

    out: Optional[str] = None  # the folder of WebDataset shards and their manifest (data/shards.py)
    images_per_shard: int = 1000  # a 224 x 224 image is 150 kB: 1,000 make shards of 150 MB
    overwrite: bool = False  # replace shards mope wrote in `out`


@dataclass
class AnalyzeConfig:
    """`mope analyze EXP.yaml ckpt=PATH out=DIR [split=val|test]` (out, split, overwrite are aliases)."""

    out: Optional[str] = None  # the report folder
    split: str = "val"  # val | test
    overwrite: bool = False  # replace an existing report in `out`
    exemplars: int = 8  # samples shown per expert
    # sample attributes to relate routing to (check-data lists a dataset's); null: all of them
    attributes: Optional[List[str]] = None


@dataclass
class RobustnessConfig:
    """`mope robustness EXP.yaml ckpt=PATH [out=DIR]` (out, rates, kinds, overwrite are aliases)."""

    out: Optional[str] = None  # default: the checkpoint's run directory
    rates: List[float] = field(default_factory=lambda: [0.0, 0.3, 0.7, 1.0])  # test missing rates
    # what goes missing (data.missing.test.<kind>): modalities, both, sets (audio+video); null: each modality, and
    # for three or more each pair that leaves one (a text-image model: image, text, both)
    kinds: Optional[List[str]] = None
    overwrite: bool = False  # replace robustness results of another checkpoint in `out`


def _default_trainer() -> Dict[str, Any]:
    return {
        "default_root_dir": "runs/${experiment}",
        "max_epochs": 10,
        "accelerator": "auto",
        "devices": 1,
        "log_every_n_steps": 20,
        "gradient_clip_val": 1.0,
    }


@dataclass
class RunRecord:
    """Where a run came from, recorded by mope_lightning in `config.yaml`, the checkpoints and every logger's
    hyperparameters. Not set by hand: values in a config file are replaced."""

    files: List[str] = field(default_factory=list)  # the experiment YAML and overlays, in merge order
    overrides: List[str] = field(default_factory=list)  # the key=value overrides of the command line
    git_commit: Optional[str] = None  # of the mope_lightning checkout that ran (None: not a git checkout)
    git_dirty: Optional[bool] = None  # whether tracked files differed from that commit
    versions: Dict[str, str] = field(default_factory=dict)  # mope_lightning, torch, lightning, timm, transformers


@dataclass
class Config:
    experiment: str = MISSING
    seed: int = 42
    tags: List[str] = field(default_factory=list)  # free labels for the trackers (W&B/MLflow tags)
    notes: Optional[str] = None  # a sentence on what this run tests
    # trackers that receive scalars, hyperparameters and (where they take images) the routing figures:
    # tensorboard | csv | mlflow | wandb (mope_lightning/training/tracking.py)
    loggers: List[str] = field(default_factory=lambda: ["tensorboard"])
    # extra Lightning callbacks, as LightningCLI writes them: [{class_path: ..., init_args: {...}}]
    callbacks: List[Dict[str, Any]] = field(default_factory=list)
    ckpt: Optional[str] = None  # fit: resume from it (or `last`); validate/test/predict: weights to evaluate
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    shards: ShardsOutputConfig = field(default_factory=ShardsOutputConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    trainer: Dict[str, Any] = field(default_factory=_default_trainer)
    run: RunRecord = field(default_factory=RunRecord)


CHOICES = {
    "model.fusion": FUSIONS,
    "model.prompted": MODALITIES,
    "model.compat.mode": (None, "reference"),
    "model.compat.window_prompt_order": ("batch", "reference"),
    "model.pool": ("mean", "cls"),
    "model.checkpoint_policy": ("selective", "full"),
    "model.attention": ATTENTION_CHOICES,
    "model.pmoe.dispatcher": ("learned", "identity"),
    "model.pmoe.granularity": ("expert", "token"),
    "model.pmoe.combine": ("concat", "mean_logits"),
    "model.head": HEADS,
    "model.seg_loss": ("ce", "ce_dice"),
    "model.text_encoder.library": ("transformers",),
    "model.image_encoder.library": ("timm", "torchvision"),
    "model.depth_encoder.library": ("timm", "torchvision"),
    "model.audio_encoder.library": ("transformers",),
    "model.video_encoder.library": ("timm", "torchvision", "transformers"),
    "model.video_encoder.pool_time": TIME_POOLS,
    "optim.optimizer": OPTIMIZERS,
    "optim.scheduler": SCHEDULERS,
    "checkpoint.mode": ("max", "min"),
    "checkpoint.test_with": ("best", "last"),
    "predict.split": ("train", "val", "test"),
    "analyze.split": ("val", "test"),
    "data.on_bad_sample": ("fail", "skip"),
    "data.crop_mode": (None, "center", "squash"),
    "data.split": (None, "speaker_dependent", "speaker_independent"),  # MUStARD
    "data.text": (None, "speaker", "utterance", "context"),  # MUStARD
    "data.vtab_protocol": (None, "final", "tune"),  # VTAB-1k
}


# A check of the merged config: (config, source_of) -> None, where source_of(key) names the file (or the command
# line) that set the key; it raises ConfigError.
Check = Callable[[DictConfig, Callable[[str], str]], None]


def merge_config(
    files: Sequence[str | Path],
    overrides: Sequence[str] = (),
    check_trainer: Optional[Check] = None,
    checks: Sequence[Check] = (),
) -> DictConfig:
    """Merge the schema, the YAML `files` (left to right) and the dotlist `overrides` into a checked config.
    `check_trainer` checks the free-form `trainer` section before the value checks read it; `checks` run after the
    schema's own (training/trainer_config.py passes Lightning's)."""
    sources = [(str(f), read_yaml(Path(f))) for f in files]
    sources.append(("command line", parse_overrides(overrides)))
    cfg = OmegaConf.structured(Config)
    data_name = _last_value(sources, "data.name")
    if data_name is not None:
        cfg.data = OmegaConf.structured(_data_config_class(data_name, sources))
    for source, node in sources:
        cfg = merge_node(cfg, node, source)
    _check(cfg, sources, check_trainer, checks)
    # The record of this run replaces whatever a file held (a run's own config.yaml can be run again).
    cfg.run = RunRecord(files=[str(f) for f in files], overrides=list(overrides))
    return cfg


def read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; pass an existing experiments/<name>.yaml")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: YAML does not parse ({problem}); fix the syntax on that line") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    try:
        return OmegaConf.create(data)
    except OmegaConfBaseException as exc:  # e.g. a value with a malformed interpolation, `${a`
        key = getattr(exc, "full_key", "") or ""
        raise ConfigError(
            f"{path}: {key + ': ' if key else ''}{str(getattr(exc, 'msg', exc)).splitlines()[0]}"
        ) from None


def _last_value(sources, key: str):
    value = None
    for _, node in sources:
        found = select_node(node, key)
        if found is not None:
            value = found
    return value


def _data_config_class(name: str, sources):
    from mope_lightning.data.registry import DATAMODULES

    if name not in DATAMODULES:
        where = next(src for src, node in reversed(sources) if select_node(node, "data.name") == name)
        raise ConfigError(
            f"{where}: data.name: unknown dataset '{name}'{suggest(name, DATAMODULES)}; "
            f"known: {', '.join(sorted(DATAMODULES))}"
        )
    return DATAMODULES[name].config_class


def _source_of(sources, key: str) -> str:
    """The last file (or the command line) that sets `key`."""
    for source, node in reversed(sources):
        value = OmegaConf.to_container(node)  # unresolved: a broken interpolation still counts as set here
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            return source
    return "defaults"


def _check(cfg: DictConfig, sources, check_trainer: Optional[Check], checks: Sequence[Check]) -> None:
    try:  # first: every later check reads values, and an interpolation to a missing key fails each of them
        missing = sorted(_needed(cfg, OmegaConf.missing_keys(cfg)))
        if not missing:
            OmegaConf.resolve(OmegaConf.create(OmegaConf.to_container(cfg)))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or ""
        reason = str(getattr(exc, "msg", exc)).splitlines()[0]
        raise ConfigError(
            f"{_source_of(sources, key)}: {key}: {reason}; interpolations (${{...}}) must name an existing key"
        ) from None
    if missing:
        raise ConfigError(f"missing required value(s): {', '.join(missing)}; set them in the experiment YAML")
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            shown = ", ".join(str(c) for c in choices if c is not None)
            raise ConfigError(f"{_source_of(sources, key)}: {key}: '{value}' is not one of {shown}")
    source_of = functools.partial(_source_of, sources)
    if check_trainer is not None:
        check_trainer(cfg, source_of)
    check_values(cfg, source_of)
    check_loggers(cfg.loggers, source_of("loggers"))
    for check in checks:
        check(cfg, source_of)


def _needed(cfg: DictConfig, missing: set[str]) -> set[str]:
    """The missing values the experiment needs: an encoder outside its modality pair is never built, so its
    section may stay unset (a text-audio experiment names no image encoder)."""
    pair = OmegaConf.select(cfg, "model.modalities", default=None) or []
    unused = tuple(f"model.{m}_encoder." for m in MODALITIES if m not in pair)
    return {key for key in missing if not key.startswith(unused)}


# Settings of how the model runs, not of what it computes: weights trained with one value serve the other.
# The sections only other commands read (`mope predict`, `analyze`, `export`, `shards`, `robustness`): a fit's results do
# not depend on them, so a resume may change them and a sweep's finished run stays finished when their defaults move.
COMMAND_SECTIONS = ("predict", "analyze", "export", "shards", "robustness")
HOW_IT_RUNS = (
    "model.activation_checkpointing",
    "model.checkpointed_layers",
    "model.checkpoint_policy",
    "model.compile",
    "model.attention",
)


def differences(a: dict, b: dict, prefix: str = "", free_form: Sequence[str] = ()) -> list[tuple[str, Any, Any]]:
    """`(key, value in a, value in b)` for every key whose values differ. Keys only one side holds (options added in
    a later version) are not differences, except in the `free_form` sections (e.g. `trainer`), where a missing key
    means the library's default and is compared as None."""
    found = []
    for key in sorted(set(a) | set(b)):
        name = f"{prefix}{key}"
        if (key not in a or key not in b) and prefix.rstrip(".") not in free_form:
            continue
        old, new = a.get(key), b.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found += differences(old, new, f"{name}.", free_form)
        elif old != new:
            found.append((name, old, new))
    return found


def format_differences(changes: list[tuple[str, Any, Any]], limit: int = 5) -> str:
    shown = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes[:limit])
    return shown + (f"; and {len(changes) - limit} more" if len(changes) > limit else "")


def to_container(cfg: DictConfig) -> Dict[str, Any]:
    """The resolved config as plain Python containers (for hparams, logs and checkpoints)."""
    return OmegaConf.to_container(cfg, resolve=True)
