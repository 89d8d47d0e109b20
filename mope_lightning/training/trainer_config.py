"""The config checked against Lightning: the `trainer` section's keys and types against `lightning.Trainer`'s
signature, and the `callbacks:` entries built and checked against the checkpoints a fit adds (config_callbacks.py).
`load_config` is the config schema's `merge_config` with these checks: what every command runs.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from lightning import Trainer
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, ListConfig, OmegaConf

from mope_lightning.config.schema import merge_config, to_container
from mope_lightning.data.registry import DATAMODULES
from mope_lightning.errors import ConfigError, suggest
from mope_lightning.training.config_callbacks import check_trainer_rules, fit_checkpoints, resolve_callbacks


def load_config(files: Sequence[str | Path], overrides: Sequence[str] = ()) -> DictConfig:
    """Merge the schema, the YAML `files` (left to right) and the dotlist `overrides` into a config checked down to
    what Lightning accepts (config/schema.py `merge_config`, then this module's checks)."""
    return merge_config(files, overrides, check_trainer=check_trainer_section, checks=[check_callbacks])


def check_trainer_section(cfg: DictConfig, source_of: Callable[[str], str]) -> None:
    check_trainer_keys(cfg.trainer, source_of)
    check_trainer_types(cfg.trainer, source_of)


def check_callbacks(cfg: DictConfig, source_of: Callable[[str], str]) -> None:
    """The `callbacks:` entries, built, against the checkpoints a fit adds (the dataset's headline metric, where it
    is known without the data)."""
    callbacks = resolve_callbacks(to_container(cfg.callbacks), source_of("callbacks"))
    if callbacks:
        monitor = cfg.checkpoint.monitor or _headline_metric(cfg.data.name)
        check_trainer_rules(
            callbacks,
            fit_checkpoints(cfg.checkpoint, monitor),
            source_of("callbacks"),
            cfg.trainer.get("enable_progress_bar", True) is not False,
        )


def _headline_metric(dataset: str) -> Optional[str]:
    """A dataset's default checkpoint monitor, when it does not depend on the dataset's options (else the fit's
    Trainer checks its callbacks again)."""
    monitor = getattr(DATAMODULES[dataset], "monitor", None)
    return monitor if isinstance(monitor, str) else None


def check_trainer_keys(trainer: DictConfig, source_of: Callable[[str], str]) -> None:
    """Every `trainer` key a `lightning.Trainer` argument, none that mope_lightning sets itself."""
    params = inspect.signature(Trainer.__init__).parameters
    reserved = {"callbacks", "logger", "plugins", "use_distributed_sampler"}  # set by mope_lightning itself
    for key in trainer.keys():
        source = source_of(f"trainer.{key}")
        if key in reserved:
            raise ConfigError(f"{source}: trainer.{key}: set by mope_lightning itself; use the checkpoint section")
        if key not in params:
            valid = [f"trainer.{p}" for p in params if p != "self"]
            raise ConfigError(
                f"{source}: unknown key 'trainer.{key}'{suggest(f'trainer.{key}', valid)}: not a "
                "lightning.Trainer argument"
            )


def check_trainer_types(trainer: DictConfig, source_of: Callable[[str], str]) -> None:
    """Each `trainer` value against the type `lightning.Trainer` declares for it (the types YAML can hold)."""
    try:
        hints = typing.get_type_hints(Trainer.__init__)
    except Exception:  # an annotation that does not resolve: Lightning checks the values itself
        return
    for key in trainer.keys():
        value = trainer[key]
        value = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
        if key == "max_time":
            check_max_time(value, source_of("trainer.max_time"))
            continue
        accepted = _yaml_types(hints.get(key, inspect.Parameter.empty))
        if accepted is not None and not _matches(value, accepted):
            names = sorted(
                {repr(a) if not isinstance(a, type) else "null" if a is type(None) else a.__name__ for a in accepted}
            )
            raise ConfigError(
                f"{source_of(f'trainer.{key}')}: trainer.{key}: {value!r} is not accepted by "
                f"lightning.Trainer (expected {' | '.join(names)})"
            )


MAX_TIME_FORMS = (
    "a string DD:HH:MM:SS (e.g. '00:12:00:00', twelve hours) or a mapping of timedelta arguments "
    "(e.g. {days: 1, hours: 2})"
)


def check_max_time(value: Any, source: str) -> None:
    """`trainer.max_time` in a form Lightning's Timer takes (the Timer parses it), and a positive duration."""
    if value is None:
        return
    if isinstance(value, (str, dict)):
        try:
            seconds = Timer(duration=value).time_remaining()
        except (MisconfigurationException, TypeError, ValueError, OverflowError) as exc:
            problem = str(exc).splitlines()[0]
            if isinstance(value, dict) and any(":" in str(k) for k in value):  # {days:1} is the key 'days:1'
                problem += "; YAML needs a space after each colon, {days: 1}"
        else:
            problem = None if seconds > 0 else "no time at all: give a positive duration"
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 60**3:
        # YAML 1.1 reads an unquoted 10:00:00:00 as the base-60 number 10 * 60**3
        days, rest = divmod(value, 60**3)
        text = f"{days}:{rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}"
        problem = f"YAML reads an unquoted {text} as a base-60 number; quote it, or write the days as 0{text}"
    else:
        problem = f"{type(value).__name__} values are neither form"
    if problem:
        raise ConfigError(
            f"{source}: trainer.max_time: {value!r} is not accepted by lightning.Trainer ({problem}); "
            f"give {MAX_TIME_FORMS}"
        )


def _yaml_types(hint: Any) -> Optional[list]:
    """The members of a type hint a YAML value can be (types, and literal values); None: do not check."""
    if hint is inspect.Parameter.empty or hint is Any:
        return None
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        members = [_yaml_types(arg) for arg in typing.get_args(hint)]
        return None if any(m is None for m in members) else [t for m in members for t in m]
    if origin is typing.Literal:
        return list(typing.get_args(hint))
    if origin in (list, tuple):
        return [list]  # YAML has no tuples
    if origin is dict:
        return [dict]
    if hint is type(None) or hint in (int, float, str, bool):
        return [hint]
    return []  # a class (a Strategy, a timedelta) that YAML cannot express: no value of it to accept


def _matches(value: Any, accepted: list) -> bool:
    for kind in accepted:
        if isinstance(kind, type):
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                return True
            if kind is int and isinstance(value, bool):
                continue
            if isinstance(value, kind):
                return True
        elif value == kind and type(value) is type(kind):  # a literal: 16 is not '16'
            return True
    return not accepted  # nothing YAML can express was declared: let Lightning judge
