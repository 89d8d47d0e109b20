"""The results of `mope robustness` (cli/robustness.py): condition names, which conditions a run dir holds, the table
and
the figure. Read by the sweep's report too; nothing here imports Lightning or evaluates a model."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Optional, Sequence

from mope_lightning.data.missing import BOTH, JOIN, MODALITIES, MissingRatesError, kind_name
from mope_lightning.errors import ConfigError, suggest

TEXT_IMAGE_KINDS = ("image", "text", "both")  # the default kinds of a text-image model (and of a sweep's robustness)
RESULTS = "robustness.json"
FILES = (RESULTS, "robustness.md", "robustness.png")


def condition_name(kind: str, rate: float, metric: str) -> str:
    return f"missing/{kind}={float(rate):g}/{metric}"


def default_kinds(modalities: Sequence[str]) -> list[str]:
    """The kinds evaluated when `robustness.kinds` is not given, for a model of `modalities`: each modality alone;
    for a text-image model then `both` (the MMP protocol); for three modalities or more then each pair that leaves
    one (all but the sets that remove every modality)."""
    if set(modalities) == set(BOTH):
        return list(TEXT_IMAGE_KINDS)
    ordered = [m for m in MODALITIES if m in modalities]
    pairs = [JOIN.join(pair) for pair in itertools.combinations(ordered, 2)] if len(ordered) >= 3 else []
    return ordered + pairs


def robustness_kinds(kinds: Sequence[str]) -> list[str]:
    """`robustness.kinds` by the names the results use (a set's canonical name), each once; `ConfigError` for a
    name that is not a modality, `both` or a set of modalities joined by "+"."""
    if not kinds:
        raise ConfigError(
            f"robustness.kinds: {list(kinds)}: give one or more of {', '.join(MODALITIES)}, both, or sets such "
            f"as audio{JOIN}video"
        )
    named = []
    for kind in kinds:
        try:
            named.append(kind_name(str(kind)))
        except MissingRatesError as exc:
            why = exc.message if JOIN in str(kind) else f"not a modality nor both{suggest(kind, (*MODALITIES, 'both'))}"
            raise ConfigError(
                f"robustness.kinds: '{kind}': {why}; give modalities ({', '.join(MODALITIES)}), both, or sets of "
                f"modalities joined by '{JOIN}'"
            ) from None
    repeated = sorted({k for k in named if named.count(k) > 1})
    if repeated:
        raise ConfigError(f"robustness.kinds: {list(kinds)} names {repeated[0]} twice; give each kind once")
    return named


def conditions(rates: Sequence[float], kinds: Sequence[str]) -> list[tuple[str, float]]:
    """(kind, rate) to evaluate: the complete test split once (as kind "none"), then every kind (its canonical name)
    at every rate > 0."""
    kinds = robustness_kinds(kinds)
    bad = [r for r in rates if not 0 <= r <= 1]
    if bad or not rates:
        raise ConfigError(f"robustness.rates: {list(rates)}: give one or more rates in [0, 1]")
    found = [("none", 0.0)] if 0 in rates else []
    return found + [(kind, float(rate)) for kind in kinds for rate in sorted(set(rates)) if rate > 0]


def metric_of(results: dict, kind: str, rate: float, metric: str) -> Optional[float]:
    """A condition's metric; rate 0 is the complete test split, shared by every kind."""
    key = condition_name("none", 0.0, metric) if rate == 0 else condition_name(kind, rate, metric)
    return results.get(key)


def finished(run_dir: Path, rates: Sequence[float], kinds: Sequence[str]) -> bool:
    """Whether `run_dir/robustness.json` holds every condition."""
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        return False
    done = {name.rsplit("/", 1)[0] for name in json.loads(path.read_text()).get("metrics", {})}
    return all(condition_name(k, r, "x").rsplit("/", 1)[0] in done for k, r in conditions(rates, kinds))


def table_markdown(results: dict, rates: Sequence[float], kinds: Sequence[str], metric: str, ckpt: str) -> str:
    lines = [
        f"# Robustness to missing modalities: test {metric}",
        "",
        f"- weights: `{ckpt}`",
        "- rate: the share of test samples that lose the modality; `both`: half lose their text, half their image; "
        f"`a{JOIN}b`: lose both at once",
        "",
        "| missing | " + " | ".join(f"{float(x):g}" for x in rates) + " |",
        "|---|" + "---|" * len(rates),
    ]
    for kind in kinds:
        values = [metric_of(results, kind, rate, metric) for rate in rates]
        lines.append(f"| {kind} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def robustness_figure(curves: dict[str, dict[str, tuple]], rates: Sequence[float], kinds: Sequence[str], metric: str):
    """One panel per kind: `metric` against the rate, a line (mean ± std) per entry of `curves`
    (label -> condition name -> (mean, std or None)); None when nothing is measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.8), dpi=110, sharey=True, squeeze=False)
    drawn = False
    for ax, kind in zip(axes[0], kinds):
        for label, values in curves.items():
            points = [(float(rate), metric_of(values, kind, rate, metric)) for rate in rates]
            points = [(x, v) for x, v in points if v is not None]
            if not points:
                continue
            drawn = True
            ax.errorbar(
                [x for x, _ in points],
                [v[0] for _, v in points],
                yerr=[v[1] or 0.0 for _, v in points],
                marker="o",
                capsize=3,
                label=label,
            )
        ax.set_title(f"{kind} missing", fontsize=10)
        ax.set_xlabel("test missing rate")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"test {metric}")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    if not drawn:
        plt.close(fig)
        return None
    return fig
