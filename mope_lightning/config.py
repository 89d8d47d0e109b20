"""Typed experiment configuration: a structured schema merged with YAML files, then `key=value` overrides.

`load_config(["experiments/easy_vqa.yaml", "experiments/overlays/tiny.yaml"], ["model.mope.num_experts=8"])`
merges left to right. An unknown key, a wrong type or a value outside its choices raises `ConfigError` naming the
source (file or command line), the full key and, for unknown keys, the nearest valid one.

The `data` section is typed by the dataset: `data.name` picks the dataclass registered for that DataModule, so each
dataset declares its own options. The `trainer` section is free-form and passed to `lightning.Trainer`; its keys are
checked against the Trainer's signature.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from mope_lightning.config_callbacks import check_trainer_rules, fit_checkpoints, resolve_callbacks
from mope_lightning.config_checks import MODALITIES, check_trainer_types, check_values
from mope_lightning.errors import ConfigError
from mope_lightning.optim import OPTIMIZERS, SCHEDULERS
from mope_lightning.tracking import check_loggers


@dataclass
class EncoderConfig:
    """A pretrained encoder built by its own library."""

    library: str = "transformers"  # transformers | timm | torchvision
    name: str = MISSING  # hub id or local directory (transformers); model name (timm, torchvision)
    pretrained: bool = True  # false: random init of the same architecture (tests, the tiny overlay)
    checkpoint: Optional[str] = None  # local weights file (timm, torchvision)
    weights: Optional[str] = None  # torchvision only: weights enum member, e.g. IMAGENET1K_V1 (default: DEFAULT)
    tokenizer: Optional[str] = None  # transformers only: tokenizer source when it differs from `name`
    arch: Optional[str] = None  # transformers model_type to build when `name`'s files are unreachable (e.g. bert)
    tiny: bool = False  # a random-init miniature of the same family (the tiny overlay; implies pretrained: false)
    kwargs: Dict[str, Any] = field(default_factory=dict)  # extra architecture arguments


@dataclass
class RouterConfig:
    """The multimodal router of each prompted layer (mope_method.md §2.4)."""

    self_dim: int = 2  # width of the query part projected from the prompted encoder's tokens
    cross_dim: int = 8  # width of the query part projected from the conditioning feature
    temperature: float = 0.1
    noise_std: float = 0.00390625  # 1/256, added to the routing logits in training only
    top_k: int = 0  # 0: dense soft routing over all experts (the paper's setting)


@dataclass
class MoPEConfig:
    """Prompt kinds and the mixture of prompt experts. A length of 0 turns that prompt kind off."""

    static_length: int = 6  # dataset-level prompts, one set per layer
    dynamic_length: int = 6  # instance-level prompts mixed from the experts by the router
    mapped_length: int = 1  # prompts projected from the conditioning feature, one set per stage
    num_experts: int = 4
    mapper_hidden: Optional[int] = None  # default: half the conditioning feature width
    prompt_dropout: float = 0.1  # on the mapped prompts, as in the reference
    init_scale: Optional[float] = None  # uniform(-s, s) prompt init; default: the encoder family's rule
    prompted_layers: Optional[List[int]] = None  # default: every layer; others carry the previous prompts
    router: RouterConfig = field(default_factory=RouterConfig)
    importance_weight: float = 0.01
    importance_threshold: float = 0.1  # the CV^2 importance loss counts only above this value


@dataclass
class CompatConfig:
    """Reproduce the reference code's quirks where they change numbers (mope_method.md §8). Default: fixed."""

    mode: Optional[str] = None  # reference: every flag below at the reference behaviour, and test on last weights
    window_prompt_order: str = "batch"  # batch | reference (Swin windows paired with other samples' prompts)
    skip_first_block_prompt: bool = False  # true: the first block of each stage carries prompts, not new ones
    eval_routing_noise: bool = False  # true: routing noise also at evaluation
    mapper_bn_frozen: bool = False  # true: the mapper's BatchNorm keeps its initial statistics
    # Training-time dropouts of the reference (rate: model.mope.prompt_dropout; none changes evaluation):
    initial_prompt_dropout: bool = False  # true: on the prompts entering before the first block (the shallow prompt)
    condition_prompt_dropout: bool = False  # true: on the conditioning encoder's prompts (model.condition_prompts)
    condition_encoder_dropout: bool = False  # true: the frozen conditioning encoder's own dropout (feature not cached)


@dataclass
class PMoEConfig:
    """pMoE (fusion: pmoe): frozen expert encoders of the prompted modality, prompted together through learnable
    dispatchers (peers.md §3.4). The other modality's encoder conditions the dispatchers and dynamic EPTs."""

    experts: List[EncoderConfig] = field(default_factory=list)  # two or more encoders of the prompted modality
    static_length: int = 6  # learned expert prompt tokens (EPTs) per expert and layer
    dynamic_length: int = 0  # MoPE prompts in each expert's EPTs, mixed from `num_experts` by the other modality
    mapped_length: int = 0  # MoPE's mapped prompts in each expert's EPTs (model.mope.mapper_hidden, prompt_dropout)
    num_experts: int = 4  # prompt experts of the dynamic EPTs (router settings: model.mope.router)
    dispatcher: str = "learned"  # learned | identity (each expert keeps its own EPTs: no exchange)
    granularity: str = "expert"  # expert: one gate per candidate set | token: one per set and prompt token
    hidden: int = 64  # the dispatchers' hidden width
    condition_dispatcher: bool = True  # the dispatchers read the other modality's feature (a multimodal pMoE)
    combine: str = "concat"  # concat: one head on all experts' features | mean_logits: a head per expert
    dispatch_importance: bool = False  # MoPE's importance loss on the dispatch gates (model.mope.importance_*)
    init_scale: Optional[float] = None  # uniform(-s, s) EPT init; default: each expert family's rule


@dataclass
class ModelConfig:
    # mope | prompt_tuning (static prompts only) | promptfuse (mapped prompts only) | late_concat (frozen features)
    # | finetune (both encoders trained, late concat) | text_only | image_only | pmoe (model.pmoe.experts)
    fusion: str = "mope"
    # the two modalities the model fuses, each read by its model.<modality>_encoder (text, image, audio); their
    # order numbers the missing cases of missing-aware prompts
    modalities: List[str] = field(default_factory=lambda: ["text", "image"])
    prompted: str = "text"  # the modality whose encoder is prompted; the other one conditions it
    text_encoder: EncoderConfig = field(default_factory=EncoderConfig)
    image_encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(library="torchvision"))
    # a transformers speech encoder (wav2vec2, HuBERT, WavLM) with its own feature extractor; `arch` builds its
    # random-init miniature without files (the MoPE reference's wav2vec2-base-960h)
    audio_encoder: EncoderConfig = field(
        default_factory=lambda: EncoderConfig(name="facebook/wav2vec2-base-960h", arch="wav2vec2"))
    pool: str = "mean"  # text pooling: mean (over tokens and prompts, masked) | cls; image encoders pool as timm does
    # audio encoders pool by the mean over frames and prompts
    condition_prompts: int = 0  # static prompts per layer for the conditioning encoder itself (reference: 4)
    head_hidden: int = 0  # 0: linear head; >0: one hidden layer (the late-fusion MLP uses 256)
    head_dropout: float = 0.0
    # recompute each prompted layer's activations in the backward pass instead of keeping them: less memory for
    # deep or wide frozen encoders and big batches, one more forward pass of the encoder per step
    activation_checkpointing: bool = False
    # with activation_checkpointing: only the first so many prompted layers recompute (null: all). Each layer left
    # out keeps its activations and saves its share of the recomputation (Megatron's recompute_num_layers)
    checkpointed_layers: Optional[int] = None
    # with activation_checkpointing: what a checkpointed layer keeps. selective: its input and its MLP's
    # down-projection output, the product with the most computation per value kept (a third less recomputation);
    # full: its input only (the least memory)
    checkpoint_policy: str = "selective"
    # torch.compile the classifier (in place: its weights keep their names); compiles on the first steps
    compile: bool = False
    # missing-aware prompts (Lee et al., CVPR 2023): learned prompts per prompted layer, one set per missing case
    # (complete, text missing, image missing), chosen by each sample's case and added to the fusion's prompts
    missing_prompts: bool = False
    missing_prompt_length: int = 4
    mope: MoPEConfig = field(default_factory=MoPEConfig)
    pmoe: PMoEConfig = field(default_factory=PMoEConfig)
    compat: CompatConfig = field(default_factory=CompatConfig)


@dataclass
class MissingRates:
    """What share of one split's samples lose a modality (data/missing.py). The kinds add up to at most 1: no sample
    loses both modalities."""

    image: float = 0.0  # this share of samples lose their image
    text: float = 0.0  # this share lose their text
    both: float = 0.0  # this share lose one of the two: half their text, half their image (the MMP protocol)


@dataclass
class MissingConfig:
    """Samples with a missing modality, per split: seeded and fixed per sample (the same in every epoch and
    process), at exactly the requested rates."""

    train: MissingRates = field(default_factory=MissingRates)
    val: MissingRates = field(default_factory=MissingRates)
    test: MissingRates = field(default_factory=MissingRates)
    seed: int = 0


@dataclass
class DataConfig:
    """Options every DataModule has. Datasets subclass this with their own options."""

    name: str = MISSING
    root: Optional[str] = None  # dataset directory; see data/README.md
    batch_size: int = 32  # per device
    eval_batch_size: Optional[int] = None  # default: 2 x batch_size
    num_workers: int = 0
    pin_memory: Optional[bool] = None  # default: true when training on a GPU
    persistent_workers: bool = True  # only when num_workers > 0
    max_text_length: int = 128  # tokens; longer texts are truncated
    image_size: Optional[int] = None  # default: the image encoder's own input size
    crop_pct: Optional[float] = None  # default: the image encoder's own; 1.0 keeps the whole image
    crop_mode: Optional[str] = None  # center (resize the shorter side) | squash (resize to a square); default: own
    image_mean: Optional[List[float]] = None  # default: the image encoder's own normalisation
    image_std: Optional[List[float]] = None
    randaugment: Optional[List[int]] = None  # [num_ops, magnitude]: RandAugment on training images, e.g. [2, 7]
    cache_features: bool = True  # cache frozen, unprompted encoders' features once per distinct input
    cache_dir: str = "data/cache"
    on_bad_sample: str = "fail"  # fail | skip: what to do with samples that have a problem (see check-data)
    check_images: bool = True  # decode every image in full once when the dataset index is built (kept with it)
    # The low-data protocol (data/subsets.py): a seeded, label-stratified subset of the train split, nested across
    # sizes for one seed; validation and test are untouched. Set at most one of the two sizes.
    train_fraction: float = 1.0  # keep round(f x N) training samples, 0 < f <= 1
    shots_per_class: Optional[int] = None  # keep this many training samples of every class
    subset_seed: int = 0
    # Samples that lose their image or text (data/missing.py), e.g. data.missing.test.image=0.7
    missing: MissingConfig = field(default_factory=MissingConfig)


@dataclass
class OptimConfig:
    """Built by mope_lightning/optim.py: torch's optimizers, transformers' per-step schedules."""

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
    kinds: List[str] = field(default_factory=lambda: ["image", "text", "both"])  # data.missing.test.<kind>
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
    # tensorboard | csv | mlflow | wandb (mope_lightning/tracking.py)
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
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    trainer: Dict[str, Any] = field(default_factory=_default_trainer)
    run: RunRecord = field(default_factory=RunRecord)


FUSIONS = ("mope", "prompt_tuning", "promptfuse", "late_concat", "finetune", "text_only", "image_only", "audio_only",
           "pmoe")
CHOICES = {
    "model.fusion": FUSIONS,
    "model.prompted": MODALITIES,
    "model.compat.mode": (None, "reference"),
    "model.compat.window_prompt_order": ("batch", "reference"),
    "model.pool": ("mean", "cls"),
    "model.checkpoint_policy": ("selective", "full"),
    "model.pmoe.dispatcher": ("learned", "identity"),
    "model.pmoe.granularity": ("expert", "token"),
    "model.pmoe.combine": ("concat", "mean_logits"),
    "model.text_encoder.library": ("transformers",),
    "model.image_encoder.library": ("timm", "torchvision"),
    "model.audio_encoder.library": ("transformers",),
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
}


def load_config(files: Sequence[str | Path], overrides: Sequence[str] = ()) -> DictConfig:
    """Merge the schema, the YAML `files` (left to right) and the dotlist `overrides` into a checked config."""
    sources = [(str(f), read_yaml(Path(f))) for f in files]
    sources.append(("command line", _parse_overrides(overrides)))
    cfg = OmegaConf.structured(Config)
    data_name = _last_value(sources, "data.name")
    if data_name is not None:
        cfg.data = OmegaConf.structured(_data_config_class(data_name, sources))
    for source, node in sources:
        cfg = _merge(cfg, node, source)
    _check(cfg, sources)
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
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8") \
            from None
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
        raise ConfigError(f"{path}: {key + ': ' if key else ''}{str(getattr(exc, 'msg', exc)).splitlines()[0]}") \
            from None


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"command line: '{item}' is not a key=value override (e.g. trainer.max_epochs=3)")
    for item in overrides:  # one by one, to name the one that does not parse
        try:
            OmegaConf.from_dotlist([item])
        except yaml.YAMLError as exc:  # the value is read as YAML: `key=*`, `key=:` are not YAML values
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            key, value = item.split("=", 1)
            raise ConfigError(f"command line: '{item}': the value does not parse as YAML ({problem}); quote it, "
                              f"e.g. \"{key}='{value}'\"") from None
        except (OmegaConfBaseException, IndexError, KeyError, ValueError) as exc:  # a malformed key path, `[=1`
            raise ConfigError(f"command line: '{item}': cannot parse this override "
                              f"({str(exc).splitlines()[0] or type(exc).__name__}); write key.path=value") from None
    return OmegaConf.from_dotlist(list(overrides))


def _last_value(sources, key: str):
    value = None
    for _, node in sources:
        found = _select(node, key)
        if found is not None:
            value = found
    return value


def _data_config_class(name: str, sources):
    from mope_lightning.data import DATAMODULES

    if name not in DATAMODULES:
        where = next(src for src, node in reversed(sources) if _select(node, "data.name") == name)
        raise ConfigError(f"{where}: data.name: unknown dataset '{name}'{suggest(name, DATAMODULES)}; "
                          f"known: {', '.join(sorted(DATAMODULES))}")
    return DATAMODULES[name].config_class


def _merge(cfg: DictConfig, node: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, node)
    except ConfigKeyError as exc:
        key = exc.full_key or str(exc.key)
        parent = _select(cfg, key.rpartition(".")[0]) if "." in key else cfg
        valid = list(parent.keys()) if isinstance(parent, DictConfig) else []
        prefix, _, leaf = key.rpartition(".")
        valid = [f"{prefix}.{v}" if prefix else str(v) for v in valid]
        raise ConfigError(f"{source}: unknown key '{key}'{suggest(key, valid)}") from None
    except ValidationError as exc:
        raise ConfigError(f"{source}: {exc.full_key}: {str(exc.msg or exc).splitlines()[0]}") from None
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"{source}: {key + ': ' if key else ''}{getattr(exc, 'msg', exc)}") from None
    except TypeError:  # OmegaConf: a mapping (`callbacks.0.x=...`, `optim.betas.0=...`) merged into a list
        prefixes = [".".join(k.split(".")[:i]) for k, _ in _leaves(node) for i in range(1, k.count(".") + 1)]
        lists = [p for p in prefixes if isinstance(_select(cfg, p), ListConfig)]
        where = f" ({lists[0]})" if lists else ""
        raise ConfigError(f"{source}: a list{where} is set as a whole, e.g. loggers=[tensorboard,csv] or "
                          "callbacks=[{class_path: EarlyStopping, init_args: {patience: 5}}]; entries cannot be "
                          "addressed by index") from None


def _select(cfg: DictConfig, key: str):
    """The node at `key`, or None where there is none (a key that is not a path into `cfg`, e.g. a name inside a
    list): for messages about a key that failed to merge."""
    try:
        return OmegaConf.select(cfg, key, default=None)
    except OmegaConfBaseException:
        return None


def _leaves(node, prefix: str = ""):
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            yield from _leaves(value, f"{name}.")
        else:
            yield name, value


def suggest(word: str, candidates) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _source_of(sources, key: str) -> str:
    """The last file (or the command line) that sets `key`."""
    for source, node in reversed(sources):
        value = OmegaConf.to_container(node)  # unresolved: a broken interpolation still counts as set here
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            return source
    return "defaults"


def _check(cfg: DictConfig, sources) -> None:
    try:  # first: every later check reads values, and an interpolation to a missing key fails each of them
        missing = sorted(_needed(cfg, OmegaConf.missing_keys(cfg)))
        if not missing:
            OmegaConf.resolve(OmegaConf.create(OmegaConf.to_container(cfg)))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or ""
        reason = str(getattr(exc, "msg", exc)).splitlines()[0]
        raise ConfigError(f"{_source_of(sources, key)}: {key}: {reason}; interpolations (${{...}}) must name an "
                          "existing key") from None
    if missing:
        raise ConfigError(f"missing required value(s): {', '.join(missing)}; set them in the experiment YAML")
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            shown = ", ".join(str(c) for c in choices if c is not None)
            raise ConfigError(f"{_source_of(sources, key)}: {key}: '{value}' is not one of {shown}")
    _check_trainer_keys(cfg.trainer, sources)
    source_of = functools.partial(_source_of, sources)
    check_trainer_types(cfg.trainer, source_of)
    check_values(cfg, source_of)
    check_loggers(cfg.loggers, source_of("loggers"))
    callbacks = resolve_callbacks(to_container(cfg.callbacks), source_of("callbacks"))
    if callbacks:  # against the checkpoints a fit adds (the dataset's headline metric, where known without data)
        monitor = cfg.checkpoint.monitor or _headline_metric(cfg.data.name)
        check_trainer_rules(callbacks, fit_checkpoints(cfg.checkpoint, monitor), source_of("callbacks"),
                            cfg.trainer.get("enable_progress_bar", True) is not False)


def _headline_metric(dataset: str) -> Optional[str]:
    """A dataset's default checkpoint monitor, when it does not depend on the dataset's options (else the fit's
    Trainer checks its callbacks again)."""
    from mope_lightning.data import DATAMODULES

    monitor = getattr(DATAMODULES[dataset], "monitor", None)
    return monitor if isinstance(monitor, str) else None


def _needed(cfg: DictConfig, missing: set[str]) -> set[str]:
    """The missing values the experiment needs: an encoder outside its modality pair is never built, so its
    section may stay unset (a text-audio experiment names no image encoder)."""
    pair = OmegaConf.select(cfg, "model.modalities", default=None) or []
    unused = tuple(f"model.{m}_encoder." for m in MODALITIES if m not in pair)
    return {key for key in missing if not key.startswith(unused)}


def _check_trainer_keys(trainer: DictConfig, sources) -> None:
    from lightning import Trainer

    params = inspect.signature(Trainer.__init__).parameters
    reserved = {"callbacks", "logger", "plugins", "use_distributed_sampler"}  # set by mope_lightning itself
    for key in trainer.keys():
        source = _source_of(sources, f"trainer.{key}")
        if key in reserved:
            raise ConfigError(f"{source}: trainer.{key}: set by mope_lightning itself; use the checkpoint section")
        if key not in params:
            valid = [f"trainer.{p}" for p in params if p != "self"]
            raise ConfigError(f"{source}: unknown key 'trainer.{key}'{suggest(f'trainer.{key}', valid)}: not a "
                              "lightning.Trainer argument")


def stored_config(stored: dict, overrides: Sequence[str] = (), source: str = "stored config") -> DictConfig:
    """The `model` and `data` sections of a config saved beside trained weights, the model re-checked against the
    schema, then `key=value` overrides (e.g. `model.text_encoder.name=/local/copy` where the encoder lives
    elsewhere on this machine)."""
    if not isinstance(stored.get("model"), dict):
        raise ConfigError(f"{source}: no `model` section; it was not written by mope_lightning")
    cfg = OmegaConf.create({"model": OmegaConf.structured(ModelConfig), "data": stored.get("data") or {}})
    cfg = _merge(cfg, OmegaConf.create({"model": stored["model"]}), source)
    OmegaConf.set_struct(cfg.data, True)  # the model is checked by its schema; the data keys by what was stored
    updates = _parse_overrides(overrides)
    outside = [k for k in updates if k not in ("model", "data")]
    if outside:
        raise ConfigError(f"overrides: '{outside[0]}': only model.* and data.* settings can be changed here")
    return _merge(cfg, updates, "overrides")


# Settings of how the model runs, not of what it computes: weights trained with one value serve the other.
HOW_IT_RUNS = ("model.activation_checkpointing", "model.checkpointed_layers", "model.checkpoint_policy",
               "model.compile")


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
