"""Config values that make sense: each numeric key's range, the combinations that work together, the loggers.
(The `trainer` section's keys and types are checked against Lightning's Trainer in training/trainer_config.py.)

The schema (config/schema.py) checks that keys exist and have the right type; a value of the right type can still be
nonsense (a negative worker count, a dropout of 2, `trainer.max_epochs=abc`), and nonsense would otherwise surface
minutes later as a library's traceback. Every check names the source that set the key (file or command line).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from omegaconf import DictConfig, OmegaConf

from mope_lightning.data.missing import MODALITIES as LOSABLE
from mope_lightning.data.missing import MissingRatesError, model_removals
from mope_lightning.errors import ConfigError, suggest
from mope_lightning.models.registry import (
    MODALITIES,
    NEEDS_SECOND_MODALITY,
    PROMPT_FUSIONS,
    UNIMODAL_FUSIONS,
    modality_counts,
    single_modality_fusions,
)


@dataclass(frozen=True)
class Range:
    """An interval of numbers; `open_low`/`open_high` exclude that end."""

    low: Optional[float] = None
    high: Optional[float] = None
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.open_high and value == self.high)))

    def __str__(self) -> str:
        if self.high is None:
            return f"{'greater than' if self.open_low else 'at least'} {self.low}"
        return f"in {'(' if self.open_low else '['}{self.low}, {self.high}{')' if self.open_high else ']'}"


COUNT, POSITIVE_COUNT = Range(0), Range(1)
POSITIVE, NON_NEGATIVE = Range(0, open_low=True), Range(0)
PROBABILITY_BELOW_1 = Range(0, 1, open_high=True)

# Keys absent from an experiment's config (another dataset's options) are skipped.
RANGES: dict[str, Range] = {
    "seed": Range(0, 2**32 - 1),
    "data.batch_size": POSITIVE_COUNT,
    "data.eval_batch_size": POSITIVE_COUNT,
    "data.num_workers": COUNT,
    "data.prefetch_factor": POSITIVE_COUNT,
    "data.max_text_length": POSITIVE_COUNT,
    "data.image_size": POSITIVE_COUNT,
    "data.crop_pct": POSITIVE,
    "data.val_fraction": Range(0, 1, open_low=True, open_high=True),
    "data.train_images": POSITIVE_COUNT,
    "data.test_images": POSITIVE_COUNT,
    "data.fold": COUNT,
    "data.max_audio_seconds": POSITIVE,
    "data.video_frames": POSITIVE_COUNT,
    "data.train_fraction": Range(0, 1, open_low=True),
    "data.shots_per_class": POSITIVE_COUNT,
    "data.subset_seed": COUNT,
    "data.missing.seed": COUNT,
    **{
        f"data.missing.{split}.{kind}": Range(0, 1) for split in ("train", "val", "test") for kind in (*LOSABLE, "both")
    },
    "model.missing_prompt_length": POSITIVE_COUNT,
    "model.condition_prompts": COUNT,
    "model.head_hidden": COUNT,
    "model.head_dropout": PROBABILITY_BELOW_1,
    "model.head_channels": POSITIVE_COUNT,
    "model.mope.static_length": COUNT,
    "model.mope.dynamic_length": COUNT,
    "model.mope.mapped_length": COUNT,
    "model.mope.num_experts": COUNT,
    "model.mope.mapper_hidden": POSITIVE_COUNT,
    "model.mope.prompt_dropout": PROBABILITY_BELOW_1,
    "model.mope.init_scale": POSITIVE,
    "model.mope.importance_weight": NON_NEGATIVE,
    "model.mope.importance_threshold": NON_NEGATIVE,
    "model.mope.router.self_dim": COUNT,
    "model.mope.router.cross_dim": COUNT,
    "model.mope.router.temperature": POSITIVE,
    "model.mope.router.noise_std": NON_NEGATIVE,
    "model.mope.router.top_k": COUNT,
    "model.pmoe.static_length": COUNT,
    "model.pmoe.dynamic_length": COUNT,
    "model.pmoe.mapped_length": COUNT,
    "model.pmoe.num_experts": COUNT,
    "model.pmoe.hidden": POSITIVE_COUNT,
    "model.pmoe.init_scale": POSITIVE,
    "optim.lr": POSITIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.warmup_steps": COUNT,
    "optim.gamma": POSITIVE,
    "optim.momentum": Range(0, 1, open_high=True),
    "optim.min_lr_ratio": Range(0, 1),
    "checkpoint.save_top_k": Range(-1),
    "analyze.exemplars": COUNT,
    "trainer.max_epochs": Range(-1),
    "trainer.max_steps": Range(-1),
    "trainer.min_epochs": COUNT,
    "trainer.min_steps": COUNT,
    "trainer.accumulate_grad_batches": POSITIVE_COUNT,
    "trainer.log_every_n_steps": POSITIVE_COUNT,
    "trainer.check_val_every_n_epoch": POSITIVE_COUNT,
    "trainer.gradient_clip_val": NON_NEGATIVE,
    "trainer.num_nodes": POSITIVE_COUNT,
    "trainer.num_sanity_val_steps": Range(-1),
    "trainer.devices": POSITIVE_COUNT,
    **{f"trainer.limit_{s}_batches": NON_NEGATIVE for s in ("train", "val", "test", "predict")},
}
# Lists of numbers: (length, range of each element).
LIST_RANGES: dict[str, tuple[int, Range]] = {
    "optim.betas": (2, PROBABILITY_BELOW_1),
    "data.randaugment": (2, COUNT),
    "data.image_mean": (3, Range()),
    "data.image_std": (3, POSITIVE),
    "optim.milestones": (-1, COUNT),
}
PARAM_GROUPS = ("prompts", "condition_prompts", "router", "mapper", "dispatcher", "head", "encoders", "missing")


def check_values(cfg: DictConfig, source_of: Callable[[str], str]) -> None:
    """Refuse values outside their key's range, and combinations that cannot work together."""
    for key, allowed in RANGES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value not in allowed:
            raise ConfigError(f"{source_of(key)}: {key}: must be {allowed}, got {value}")
    for key, (length, allowed) in LIST_RANGES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        if length >= 0 and len(value) != length:
            raise ConfigError(f"{source_of(key)}: {key}: needs {length} numbers, got {len(value)} ({list(value)})")
        bad = [v for v in value if not isinstance(v, (int, float)) or v not in allowed]
        if bad:
            raise ConfigError(f"{source_of(key)}: {key}: every number must be {allowed}, got {bad[0]}")
    for group, lr in cfg.optim.group_lr.items():
        key = f"optim.group_lr.{group}"
        if group not in PARAM_GROUPS:
            raise ConfigError(f"{source_of(key)}: {key}: unknown parameter group; use {', '.join(PARAM_GROUPS)}")
        if not isinstance(lr, (int, float)) or lr not in POSITIVE:
            raise ConfigError(f"{source_of(key)}: {key}: a learning rate must be {POSITIVE}, got {lr}")
    if cfg.optim.scheduler == "multistep" and cfg.optim.warmup_steps:
        raise ConfigError(
            f"{source_of('optim.warmup_steps')}: optim.warmup_steps: multistep is stepped per epoch "
            "and has no warmup; set optim.warmup_steps=0, or use a per-step schedule (cosine, linear, "
            "constant)"
        )
    if cfg.model.activation_checkpointing and cfg.model.fusion not in (*PROMPT_FUSIONS, "pmoe"):
        raise ConfigError(
            f"{source_of('model.activation_checkpointing')}: model.activation_checkpointing: applies to "
            f"the prompted block loop, which model.fusion={cfg.model.fusion} does not run; set it to "
            "false"
        )
    layers = cfg.model.checkpointed_layers
    if layers is not None and (not cfg.model.activation_checkpointing or layers < 1):
        why = "is a count of layers, at least 1" if layers < 1 else "applies with model.activation_checkpointing=true"
        raise ConfigError(
            f"{source_of('model.checkpointed_layers')}: model.checkpointed_layers: {why}; got {layers} "
            "(null: every prompted layer)"
        )
    if cfg.model.checkpoint_policy != "selective" and not cfg.model.activation_checkpointing:
        raise ConfigError(
            f"{source_of('model.checkpoint_policy')}: model.checkpoint_policy: applies with "
            "model.activation_checkpointing=true"
        )
    _check_modality_set(cfg.model, source_of)
    _check_missing(cfg, source_of)
    _check_compat(cfg.model, source_of)
    mope = cfg.model.mope
    if mope.router.top_k > max(mope.num_experts, 1):
        raise ConfigError(
            f"{source_of('model.mope.router.top_k')}: model.mope.router.top_k: {mope.router.top_k} "
            f"is more than the {mope.num_experts} experts; use at most model.mope.num_experts"
        )


def _check_modality_set(model: DictConfig, source_of: Callable[[str], str]) -> None:
    """`model.modalities` names known modalities, each once, as many as the fusion works with (models/registry.py),
    and the prompted and unimodal ones are among them."""
    chosen = list(model.modalities)
    key = "model.modalities"
    _check_modality_names(chosen, f"{source_of(key)}: {key}")
    if len(chosen) not in modality_counts(model.fusion):
        raise ConfigError(
            f"{source_of('model.fusion')}: model.fusion: {model.fusion} needs a second modality "
            f"({NEEDS_SECOND_MODALITY[model.fusion]}), but {key} is {chosen} ({source_of(key)}); "
            f"add one, or use a fusion that reads one modality: {', '.join(_single_fusions(chosen))}"
        )
    if model.prompted not in chosen:
        role = "the experts' modality" if len(chosen) == 1 else "the others condition it"
        raise ConfigError(
            f"{source_of('model.prompted')}: model.prompted: '{model.prompted}' is not one of "
            f"{key} {chosen}; prompt one of them ({role})"
        )
    single = UNIMODAL_FUSIONS.get(model.fusion)
    if single is not None and single not in chosen:
        raise ConfigError(
            f"{source_of('model.fusion')}: model.fusion: {model.fusion} reads the {single}, which is "
            f"not one of {key} {chosen}; use {', '.join(f'{m}_only' for m in chosen)}"
        )
    p = model.pmoe
    if model.fusion == "pmoe" and len(chosen) == 1:
        conditioned = [k for k in ("condition_dispatcher", "dynamic_length", "mapped_length") if p[k]]
        if conditioned:
            name = f"model.pmoe.{conditioned[0]}"
            raise ConfigError(
                f"{source_of(name)}: {name}: {p[conditioned[0]]} reads a second modality's feature, "
                f"but {key} is {chosen}; set {', '.join(f'model.pmoe.{k}' for k in conditioned)} to "
                "false/0 (the dispatchers then see the experts' own states)"
            )
    if len(chosen) == 1 and model.condition_prompts:
        raise ConfigError(
            f"{source_of('model.condition_prompts')}: model.condition_prompts: prompts the conditioning "
            f"encoder, which a one-modality task ({key} {chosen}) does not have; set it to 0"
        )


def _check_modality_names(chosen: list, where: str) -> None:
    """Known modalities, at least one, each once."""
    unknown = [m for m in chosen if m not in MODALITIES]
    if unknown:
        raise ConfigError(
            f"{where}: '{unknown[0]}' is not a modality{suggest(unknown[0], MODALITIES)}; "
            f"choose from {', '.join(MODALITIES)}"
        )
    twice = [m for m in MODALITIES if chosen.count(m) > 1]
    if not chosen or twice:
        why = f"lists {twice[0]} twice" if twice else "names no modality"
        raise ConfigError(
            f"{where}: {chosen} {why}; name one modality or two different ones (or more) of "
            f"{', '.join(MODALITIES)}, e.g. [text, image], [text, audio, video] or [image]"
        )


def _single_fusions(chosen: list) -> list[str]:
    """The one-modality fusions that apply to `chosen`'s modality."""
    return [f for f in single_modality_fusions() if UNIMODAL_FUSIONS.get(f, chosen[0]) in chosen]


def _check_compat(model: DictConfig, source_of: Callable[[str], str]) -> None:
    """A training-dropout flag set on its own has something to act on (`mode: reference` turns on those that do)."""
    compat = model.compat
    needs = {
        "initial_prompt_dropout": (
            compat.skip_first_block_prompt,
            "acts on the prompts entering before the "
            "first block, which exist with model.compat.skip_first_block_prompt=true",
        ),
        "condition_prompt_dropout": (
            model.condition_prompts > 0,
            "acts on the conditioning encoder's prompts, which exist with model.condition_prompts > 0",
        ),
        "condition_encoder_dropout": (
            len(model.modalities) >= 2,
            "acts on the conditioning encoder, which a one-modality task does not have",
        ),
    }
    for flag, (applies, why) in needs.items():
        key = f"model.compat.{flag}"
        if not compat[flag] or compat.mode == "reference":
            continue
        if model.fusion not in PROMPT_FUSIONS:
            raise ConfigError(
                f"{source_of(key)}: {key}: applies to the prompt fusions ({', '.join(PROMPT_FUSIONS)}), "
                f"not model.fusion={model.fusion}; set it to false"
            )
        if not applies:
            raise ConfigError(f"{source_of(key)}: {key}: {why}; set that too, or set this to false")


def read_modalities(model: DictConfig) -> tuple[str, ...]:
    """The modalities the model `model` describes reads from a batch (a model reading one alone has no input
    without it), known before it is built: `mope predict` checks its rows' files with them first."""
    single = UNIMODAL_FUSIONS.get(model.fusion)
    if single:
        return (single,)
    p = model.pmoe
    if model.fusion == "pmoe" and not (p.condition_dispatcher or p.dynamic_length or p.mapped_length):
        return (model.prompted,)
    return tuple(model.modalities)


def _check_missing(cfg: DictConfig, source_of: Callable[[str], str]) -> None:
    """Each split's removals name modalities (and sets of them) of the model, add up to at most 1, and leave every
    sample some modality the model reads (data/missing.py `model_removals`)."""
    missing = cfg.data.get("missing")
    if missing is None:
        return
    reads, reader = read_modalities(cfg.model), f"model.fusion={cfg.model.fusion}"
    for split in ("train", "val", "test"):
        try:
            model_removals(missing[split], tuple(cfg.model.modalities), reads, reader)
        except MissingRatesError as exc:
            key = ".".join(filter(None, (f"data.missing.{split}", exc.key)))
            raise ConfigError(f"{source_of(key)}: {key}: {exc.message}") from None
    if cfg.model.missing_prompts and cfg.model.fusion not in PROMPT_FUSIONS:
        raise ConfigError(
            f"{source_of('model.missing_prompts')}: model.missing_prompts: added to the prompts of "
            f"{', '.join(PROMPT_FUSIONS)}; model.fusion={cfg.model.fusion} has none. Set it to false"
        )


LOGGERS = ("tensorboard", "csv", "mlflow", "wandb")  # built by training/tracking.py


def check_loggers(names, source: str) -> None:
    """Known names, each once: checked when the config loads (nothing is imported)."""
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(
                f"{source}: loggers: unknown logger '{name}'{suggest(name, LOGGERS)}; choose from {', '.join(LOGGERS)}"
            )
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ConfigError(f"{source}: loggers: '{repeated[0]}' is listed twice; list each logger once")
