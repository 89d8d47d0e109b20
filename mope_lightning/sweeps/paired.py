"""Paired comparisons of two cells of a sweep, seed by seed (a sweep file's `compare:` section).

Two cells that ran the same seeds share what the seed draws (initialisation, training order, the low-data subset), so
the difference of their metric at each seed removes that shared variation: the comparison says more than two means ±
std side by side. For each pair the sweep's summary.md gives the per-seed differences a − b, their mean ± sample std,
how many seeds favour each side, and the two-sided p-value of an exact sign-flip (permutation) test of "no
difference": the share of the 2^n ways of flipping the signs of the n differences whose mean is at least as far from 0
as the observed one. With 5 seeds the smallest p-value possible is 2/32 = 0.0625, so five seeds can show a
consistent direction but never a difference at the 5% level: the table says so rather than a p-value hides it.

A side is a cell of this sweep (its folder name, e.g. `train_fraction=0.1,method=mope`), or a cell of another sweep
whose folder is beside this one's (`tuxpaint_data_scaling/train_fraction=1.0,method=mope`), read from that sweep's
results.csv, so that a baseline table can be compared with a cell another sweep already ran.
"""

from __future__ import annotations

import csv
import itertools
import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from mope_lightning.errors import ConfigError


@dataclass(frozen=True)
class Comparison:
    """Cells `a` and `b` compared on `metrics` (a − b at each seed both finished)."""

    a: str
    b: str
    metrics: tuple[str, ...]


def read_comparisons(path: Path, spec: Any, cells: Sequence[str], metric: str) -> tuple[Comparison, ...]:
    """The sweep file's `compare:` list, checked: each item `{a: CELL, b: CELL, metrics: [..]}` (metrics optional:
    the sweep's metric); a cell of this sweep must exist (another sweep's is checked when its results are read)."""
    if spec is None:
        return ()
    usage = f"{path}: compare: give a list of {{a: CELL, b: CELL}} (optionally metrics: [test/acc, ...])"
    if not isinstance(spec, list):
        raise ConfigError(usage)
    comparisons = []
    for i, item in enumerate(spec):
        if not isinstance(item, dict) or not {"a", "b"} <= set(item) or set(item) - {"a", "b", "metrics"}:
            raise ConfigError(f"{usage}; item {i} is {item!r}")
        metrics = item.get("metrics", [metric])
        if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) and m for m in metrics):
            raise ConfigError(f"{path}: compare[{i}].metrics: give a list of metric names, got {metrics!r}")
        for side in ("a", "b"):
            name = item[side]
            if not isinstance(name, str) or (("/" not in name) and name not in cells):
                raise ConfigError(
                    f"{path}: compare[{i}].{side}: {name!r} is not a cell of this sweep ({', '.join(cells)}); "
                    "name another sweep's cell as <its folder>/<cell>"
                )
        if item["a"] == item["b"]:
            raise ConfigError(f"{path}: compare[{i}]: a and b are the same cell {item['a']!r}")
        comparisons.append(Comparison(item["a"], item["b"], tuple(metrics)))
    return tuple(comparisons)


EXACT_UP_TO = 16  # seeds: 2^16 sign assignments enumerated; beyond, that many drawn at random (seeded)


def sign_flip_p(differences: Sequence[float]) -> float:
    """Two-sided p-value of the sign-flip test: the share of sign assignments whose |mean| is at least the observed
    |mean| (the observed one included, so never 0). Exact (every assignment) for up to `EXACT_UP_TO` differences;
    for more, the share among 2^EXACT_UP_TO assignments drawn with a fixed seed plus the observed one, since the
    2^n assignments of 30 seeds could not be enumerated after every run of a sweep."""
    observed = abs(statistics.fmean(differences)) - 1e-12  # a tie at float rounding counts as at least as far
    n = len(differences)
    if n <= EXACT_UP_TO:
        flips = itertools.product((1, -1), repeat=n)
    else:
        rng = random.Random(0)
        flips = itertools.chain([(1,) * n], ([rng.choice((1, -1)) for _ in range(n)] for _ in range(2**EXACT_UP_TO)))
    hits = total = 0
    for signs in flips:
        hits += abs(statistics.fmean(s * d for s, d in zip(signs, differences))) >= observed
        total += 1
    return hits / total


def seed_values(rows: list[dict], cell: str, metric: str) -> dict[int, float]:
    """seed -> metric of the finished runs of `cell` in `rows` (collect()'s rows or results.csv's)."""
    values = {}
    for row in rows:
        if row["cell"] == cell and row["status"] == "finished":
            value = row["metrics"].get(metric)
            if value is not None:
                values[int(row["seed"])] = float(value)
    return values


def sibling_rows(out: Path, folder: str) -> list[dict]:
    """The runs of the sweep in `out`'s sibling `folder`, read from its results.csv, as collect()'s rows."""
    path = out.parent / folder / "results.csv"
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            records = list(csv.DictReader(fh))
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read ({exc.strerror}); run that sweep first, or compare within this one"
        ) from None
    rows = []
    for record in records:
        cell = Path(record.get("run_dir") or "").parts[:1]  # <cell>/seed_<s>/...: the cell's folder name
        metrics = {k: float(v) for k, v in record.items() if "/" in k and v not in ("", None)}
        row = {"cell": cell[0] if cell else "", "seed": record["seed"], "status": record["status"]}
        rows.append({**row, "metrics": metrics})
    return rows


def _side(rows: list[dict], out: Path, name: str, cache: dict) -> tuple[list[dict], str]:
    if "/" not in name:
        return rows, name
    folder, cell = name.split("/", 1)
    if folder not in cache:
        cache[folder] = sibling_rows(out, folder)
    cells = sorted({row["cell"] for row in cache[folder]})
    if cell not in cells:
        raise ConfigError(
            f"compare: {name!r}: {out.parent / folder / 'results.csv'} has no cell {cell!r}; its cells: {', '.join(cells)}"
        )
    return cache[folder], cell


def paired_rows(comparisons: Sequence[Comparison], rows: list[dict], out: Path) -> list[dict]:
    """One record per comparison and metric: the per-seed differences and their statistics (None where the two
    cells share fewer than two finished seeds)."""
    cache: dict[str, list[dict]] = {}
    records = []
    for comparison in comparisons:
        try:
            rows_a, cell_a = _side(rows, out, comparison.a, cache)
            rows_b, cell_b = _side(rows, out, comparison.b, cache)
        except ConfigError as exc:  # another sweep not run (yet): said in the table, the sweep goes on
            records += [
                {"a": comparison.a, "b": comparison.b, "metric": m, "seeds": [], "differences": [], "problem": f"{exc}"}
                for m in comparison.metrics
            ]
            continue
        for metric in comparison.metrics:
            a, b = seed_values(rows_a, cell_a, metric), seed_values(rows_b, cell_b, metric)
            seeds = sorted(a.keys() & b.keys())
            differences = [a[s] - b[s] for s in seeds]
            records.append(
                {
                    "a": comparison.a,
                    "b": comparison.b,
                    "metric": metric,
                    "seeds": seeds,
                    "differences": differences,
                    "stats": _stats(differences),
                }
            )
    return records


def _stats(differences: list[float]) -> Optional[dict]:
    if len(differences) < 2:
        return None
    return {
        "mean": statistics.fmean(differences),
        "std": statistics.stdev(differences),
        "a_wins": sum(d > 0 for d in differences),
        "b_wins": sum(d < 0 for d in differences),
        "p": sign_flip_p(differences),
    }


def paired_markdown(records: list[dict]) -> list[str]:
    """summary.md's section of paired comparisons (no lines without comparisons)."""
    if not records:
        return []
    lines = [
        "",
        "## Paired comparisons",
        "",
        "a − b of the metric at each seed both cells finished; mean ± sample std of the differences; seeds where a "
        "is higher / b is higher; p: two-sided sign-flip test, exact up to 16 seeds (with n seeds it cannot go below 2/2^n: 0.0625 "
        "for 5).",
        "",
        "| a | b | metric | seeds | a − b per seed | mean ± std | a higher / b higher | p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        per_seed = r.get("problem") or ", ".join(f"{d:+.4f}" for d in r["differences"]) or "-"
        s = r.get("stats")
        summary = (
            [f"{s['mean']:+.4f} ± {s['std']:.4f}", f"{s['a_wins']} / {s['b_wins']}", f"{s['p']:.3g}"]
            if s
            else ["-", "-", "-"]
        )
        seeds = ",".join(map(str, r["seeds"])) or "none shared yet"
        lines.append(f"| {r['a']} | {r['b']} | {r['metric']} | {seeds} | {per_seed} | " + " | ".join(summary) + " |")
    return lines
