"""A sweep file read and checked as a whole (the format is described in mope_lightning/sweeps/sweep.py): every section
against its shape, every file it lists, and every setting it adds to a run, each refusal naming the sweep file and
the key (`grid.method.mope.overlays[0]`, `cells[1].model.mope.num_experts`, `seeds[2]`). Each run's full config is
checked later, when the sweep is planned (sweeps.plan)."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

from mope_lightning.config.schema import read_yaml, suggest
from mope_lightning.sweeps.paired import Comparison, read_comparisons
from mope_lightning.errors import ConfigError

SWEEP_KEYS = ("name", "experiment", "overrides", "grid", "cells", "seeds", "metric", "slurm", "robustness", "compare")
# Keys the sweep sets for each run itself: a value given for them in the file would be silently replaced.
SET_BY_THE_SWEEP = {
    "seed": "each run's seed comes from the sweep's `seeds:` list",
    "trainer.default_root_dir": "each run's directory is <out>/<cell>/seed_<s>; choose the sweep's folder with out=DIR",
}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=,-]*")  # a sweep's name is a folder name under <root>/sweeps/


@dataclass(frozen=True)
class Setting:
    """One coordinate of a cell: the column it fills in results.csv, its value, what it adds to the run, and where
    the sweep file sets it (for messages)."""

    column: str
    value: Any
    files: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    where: str = field(default="", compare=False)


@dataclass
class Sweep:
    path: Path
    name: str
    experiment: list[str]
    overrides: list[str]
    cells: list[tuple[Setting, ...]]
    seeds: list[int]
    metric: str
    slurm: dict = field(default_factory=dict)
    robustness: tuple[tuple[float, ...], tuple[str, ...]] = ()  # (rates, kinds): `mope robustness` after each fit
    override_origins: list[str] = field(default_factory=list)  # where each of `overrides` is set, for messages
    compare: tuple[Comparison, ...] = ()  # pairs of cells compared seed by seed in summary.md (sweeps/paired.py)


def cell_slug(cell: Sequence[Setting]) -> str:
    """A readable, file-system-safe name of a cell: `data.train_fraction=0.1,method=mope`."""
    text = ",".join(f"{s.column}={s.value}" for s in cell) or "default"
    return re.sub(r"[^A-Za-z0-9._,=+-]", "_", text)


def _as_override(key: str, value: Any) -> str:
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def _kind(value: Any) -> str:
    return (
        "null"
        if value is None
        else "a list"
        if isinstance(value, list)
        else "a mapping"
        if isinstance(value, dict)
        else f"the {type(value).__name__} {value!r}"
    )


def _mapping(value: Any, where: str, holds: str) -> dict:
    """`value` as a mapping with string keys; anything else is refused naming `where` and what it holds."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: give a mapping of {holds}, got {_kind(value)}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(f"{where}: the key {key!r} is not a string; quote it")
    return value


def _setting(key: str, value: Any, where: str, allowed: Sequence[str] = ()) -> str:
    """A `key=value` override, refused when the sweep sets `key` for each run itself."""
    if key in SET_BY_THE_SWEEP and key not in allowed:
        raise ConfigError(f"{where}: {key} cannot be set here: {SET_BY_THE_SWEEP[key]}")
    return _as_override(key, value)


def _overrides(value: Any, where: str, allowed: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(where, key=value) of an `overrides` section: key=value strings, or a mapping of config keys to values."""
    if value is None:
        return []
    if isinstance(value, dict):
        items = _mapping(value, where, "config keys to values")
        return [(f"{where}.{k}", _setting(k, v, f"{where}.{k}", allowed)) for k, v in items.items()]
    if isinstance(value, list):
        found = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or "=" not in item or item.startswith("="):
                raise ConfigError(f"{where}[{i}]: {item!r} is not a key=value string, e.g. trainer.max_epochs=2")
            key, text = item.split("=", 1)
            found.append((f"{where}[{i}]", _setting(key, text, f"{where}[{i}]", allowed)))
        return found
    raise ConfigError(f"{where}: give key=value strings or a mapping of config keys to values, got {_kind(value)}")


def config_files(value: Any, where: str) -> list[str]:
    """The config files of an `experiment` or `overlays` list: existing .yaml files, in merge order. A single file
    may be given as a string; a string naming several files is refused with the list it should be."""
    if isinstance(value, str):
        if not Path(value).is_file() and re.search(r"[\s,]", value.strip()):
            listed = ", ".join(p for p in re.split(r"[\s,]+", value.strip().strip("[]")) if p)
            raise ConfigError(f"{where}: {value!r} is one string; list the files as a YAML list: [{listed}]")
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(
            f"{where}: give a list of config files, e.g. [experiments/overlays/tiny.yaml], got {_kind(value)}"
        )
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError(f"{where}[{i}]: {_kind(item)} is not a file path")
        if not item.endswith((".yaml", ".yml")):
            raise ConfigError(f"{where}[{i}]: {item}: a config file ends in .yaml or .yml")
        if not Path(item).is_file():
            raise ConfigError(f"{where}[{i}]: config file {item} not found")
    return list(value)


def _axis(path: Path, name: str, values: Any) -> list[Setting]:
    key = f"grid.{name}"
    if isinstance(values, dict):  # a named axis: variant -> {overlays, overrides}
        settings = []
        for variant, spec in values.items():
            if isinstance(variant, bool) or not isinstance(variant, (str, int, float)):
                raise ConfigError(f"{path}: {key}: the variant name {variant!r} is not a string or a number")
            at = f"{key}.{variant}"
            spec = _mapping({} if spec is None else spec, f"{path}: {at}", "`overlays` (files) and `overrides`")
            unknown = sorted(set(spec) - {"overlays", "overrides"})
            if unknown:
                raise ConfigError(
                    f"{path}: {at}: unknown key '{unknown[0]}'"
                    f"{suggest(unknown[0], ('overlays', 'overrides'))}; a variant holds `overlays` "
                    "(files) and `overrides` only"
                )
            files = config_files(spec["overlays"], f"{path}: {at}.overlays") if "overlays" in spec else []
            overrides = [o for _, o in _overrides(spec.get("overrides"), f"{path}: {at}.overrides")]
            settings.append(Setting(name, variant, tuple(files), tuple(overrides), at))
    elif isinstance(values, list):
        settings = [
            Setting(name, v, (), (_setting(name, v, f"{path}: {key}[{i}]"),), f"{key}[{i}]")
            for i, v in enumerate(values)
        ]
    else:
        raise ConfigError(f"{path}: {key}: give a list of values, or a mapping of named variants, got {_kind(values)}")
    if not settings:
        raise ConfigError(f"{path}: {key}: the axis has no values; give at least one")
    return settings


def _explicit_cell(path: Path, i: int, cell: Any) -> tuple[Setting, ...]:
    at = f"cells[{i}]"
    if not _mapping(cell, f"{path}: {at}", "config keys to values"):
        raise ConfigError(f"{path}: {at}: an empty cell; give config keys and their values")
    return tuple(Setting(k, v, (), (_setting(k, v, f"{path}: {at}.{k}"),), f"{at}.{k}") for k, v in cell.items())


def _cells(path: Path, grid: Any, explicit: Any) -> list[tuple[Setting, ...]]:
    """The cartesian product of the grid's axes, crossed with the explicit cells; each cell has its own folder."""
    grid = _mapping({} if grid is None else grid, f"{path}: grid", "config keys (or named axes) to their values")
    axes = [_axis(path, name, values) for name, values in grid.items()]
    if explicit is not None and (not isinstance(explicit, list) or not explicit):
        raise ConfigError(
            f"{path}: cells: give a non-empty list of mappings of config keys to values, got {_kind(explicit)}"
        )
    extra = [_explicit_cell(path, i, cell) for i, cell in enumerate(explicit)] if explicit else [()]
    cells = [tuple(combo) + cell for combo in itertools.product(*axes) for cell in extra]
    folders: dict[str, tuple] = {}
    for cell in cells:
        slug = cell_slug(cell)
        if slug in folders:
            raise ConfigError(
                f"{path}: {', '.join(s.where for s in folders[slug])} and "
                f"{', '.join(s.where for s in cell)} make the same cell folder ({slug}); "
                "give each cell distinct values"
            )
        folders[slug] = cell
    return cells


def _seeds(path: Path, seeds: Any) -> list[int]:
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise ConfigError(f"{path}: seeds: give a non-empty list of integers, e.g. [1, 2, 3]")
    twice = next((s for i, s in enumerate(seeds) if s in seeds[:i]), None)
    if twice is not None:
        raise ConfigError(f"{path}: seeds: {twice} is listed twice; each seed runs once")
    return seeds


def _name(path: Path, name: Any) -> str:
    if name is None:
        return path.stem
    if isinstance(name, bool) or not isinstance(name, (str, int)) or not NAME.fullmatch(str(name)):
        raise ConfigError(f"{path}: name: {name!r} is not a folder name; use letters, digits and . _ - + = ,")
    return str(name)


def _robustness(path: Path, spec: Any) -> tuple:
    """(rates, kinds) of the sweep's `robustness` section, checked; () without one."""
    from mope_lightning.config.schema import RobustnessConfig
    from mope_lightning.analysis.robustness_tables import TEXT_IMAGE_KINDS, conditions, robustness_kinds

    if spec is None:
        return ()
    if not isinstance(spec, dict) or set(spec) - {"rates", "kinds"}:
        raise ConfigError(
            f"{path}: robustness: give rates (a list in [0, 1]) and kinds (modalities, both, sets such as audio+video)"
        )
    default = RobustnessConfig()
    rates, kinds = spec.get("rates", default.rates), spec.get("kinds", list(TEXT_IMAGE_KINDS))
    if (
        not isinstance(rates, list)
        or not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in rates)
        or not isinstance(kinds, list)
        or not all(isinstance(k, str) for k in kinds)
    ):
        raise ConfigError(f"{path}: robustness: rates is a list of numbers, kinds a list of names (image, text, both)")
    try:
        conditions(rates, kinds)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return tuple(float(r) for r in rates), tuple(robustness_kinds(kinds))


def read_sweep(path: str | Path, extra: Sequence[str] = ()) -> Sweep:
    """The sweep file, checked section by section (the runs' configs are checked when the sweep is planned)."""
    path = Path(path)
    spec = OmegaConf.to_container(read_yaml(path))
    for key in spec:
        if key not in SWEEP_KEYS:
            raise ConfigError(
                f"{path}: unknown key '{key}'{suggest(str(key), SWEEP_KEYS)}; a sweep holds {', '.join(SWEEP_KEYS)}"
            )
    name = _name(path, spec.get("name"))
    experiment = config_files(spec.get("experiment"), f"{path}: experiment")
    seeds = _seeds(path, spec.get("seeds", [42]))
    cells = _cells(path, spec.get("grid"), spec.get("cells"))
    overrides = _overrides(spec.get("overrides"), f"{path}: overrides", allowed=("trainer.default_root_dir",))
    swept = {s.column for cell in cells for s in cell}
    for item in extra:
        key = item.split("=", 1)[0]
        if key in swept:
            raise ConfigError(f"command line: '{item}': {key} is an axis of the sweep {path}")
        overrides.append(
            (
                "command line",
                _setting(key, item.split("=", 1)[1], f"command line: '{item}'", allowed=("trainer.default_root_dir",)),
            )
        )
    metric = spec.get("metric", "test/acc")
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"{path}: metric: give the name of a test metric, e.g. test/acc, got {_kind(metric)}")
    slurm = _mapping(spec.get("slurm") or {}, f"{path}: slurm", "submitit parameters to values")
    return Sweep(
        path,
        name,
        experiment,
        [o for _, o in overrides],
        cells,
        seeds,
        metric,
        slurm,
        _robustness(path, spec.get("robustness")),
        [where for where, _ in overrides],
        read_comparisons(path, spec.get("compare"), [cell_slug(cell) for cell in cells], metric),
    )
