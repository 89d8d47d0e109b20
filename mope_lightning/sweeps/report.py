"""A sweep's results, rewritten atomically after every run: `results.csv` (one row per run), `summary.md` (per cell:
mean ± sample std and n of every test metric; for a grid over VTAB-1k tasks, the per-task table and the group means,
sweeps/vtab_means.py) and plots (the sweep's metric against each numeric axis, and
against the trainable parameters, with std error bars; each run's routing per sample attribute, `sweep_routing`)."""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

from mope_lightning.fileio import atomic_write
from mope_lightning.analysis.robustness_tables import RESULTS, robustness_figure
from mope_lightning.analysis.sweep_routing import write_routing_figures
from mope_lightning.sweeps.paired import paired_markdown, paired_rows
from mope_lightning.sweeps.runs import run_state
from mope_lightning.sweeps.vtab_means import vtab_section


def _finished_record(run) -> Optional[dict]:
    state, run_dir = run_state(run)
    if state != "finished":
        return None
    record = json.loads((run_dir / "fit_metrics.json").read_text())
    metrics = {
        **record.get("metrics", {}),
        **_routing_metrics(run_dir / "routing_val.json"),
        **_robustness_metrics(run_dir / RESULTS),
    }
    return {
        "metrics": metrics,
        "trainable_params": record.get("parameters", {}).get("trainable"),
        "train_seconds": record.get("seconds", {}).get("train"),
        "run_dir": str(run_dir),
    }


def _robustness_metrics(path: Path) -> dict[str, float]:
    """The run's test metrics with modalities missing (`mope robustness`), if evaluated."""
    return json.loads(path.read_text()).get("metrics", {}) if path.is_file() else {}


def _routing_metrics(path: Path) -> dict[str, float]:
    """Expert specialisation at the run's last validation (routing_val.json, written by RoutingMonitor): the
    relative mutual information of expert choice with the class, the class group and each sample attribute (image
    shape, colour, ...), averaged over layers."""
    if not path.is_file():
        return {}
    stats = json.loads(path.read_text())
    return {
        f"last_val/routing_{key}": statistics.fmean(values)
        for key, values in stats.items()
        if key.startswith("mi_") and key.endswith("_relative") and values
    }


def collect(runs: list) -> list[dict]:
    """One row per run: its cell's values, seed, status, metrics, trainable parameters, train time, run dir."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {
            "cell": run.slug,
            "settings": {s.column: s.value for s in run.cell},
            "seed": run.seed,
            "metrics": {},
            "error": "",
        }
        finished = _finished_record(run)
        status_file = Path(run.root) / "sweep_status.json"
        if finished:
            row.update(status="finished", **finished)
        elif status_file.is_file():
            record = json.loads(status_file.read_text())
            row.update(status=record.get("status", "failed"), error=record.get("error", ""), run_dir=run.root)
            if row["status"] == "finished":  # its run directory was removed or changed since: run it again
                row.update(status="pending", error="")
        else:
            row.update(status="pending", run_dir=run.root)
        rows.append(row)
    return rows


def _columns(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(c for row in rows for c in row["settings"]))


def _metric_names(rows: list[dict]) -> list[str]:
    return sorted({m for row in rows for m in row["metrics"]})


def _format(value: Any) -> str:
    return "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


SUMMARY_FILES = ("results.csv", "summary.md")  # what write_report writes into the sweep's folder, besides plots
SUMMARY_TITLE = "# Sweep "  # summary.md's first line, before the sweep's name
RUN_COLUMNS = ("seed", "status")  # results.csv's columns after the grid's


def written_by_a_sweep(out: Path) -> bool:
    """Whether the summary files in `out` are ones write_report wrote (by their first line), so that a sweep may
    replace them: `mope sweep ... out=` continues an earlier sweep's folder, and refuses one holding other files of
    those names."""

    def first_line(name: str) -> str:
        try:
            with open(out / name, encoding="utf-8") as fh:
                return fh.readline()
        except (OSError, UnicodeDecodeError):
            return ""

    marks = {
        "summary.md": lambda line: line.startswith(SUMMARY_TITLE),
        "results.csv": lambda line: f",{','.join(RUN_COLUMNS)}," in f",{line}",
    }
    return all(not (out / name).exists() or marks[name](first_line(name)) for name in SUMMARY_FILES)


def write_csv(fh, rows: list[dict], out: Path) -> None:
    columns, metrics = _columns(rows), _metric_names(rows)
    writer = csv.writer(fh)
    writer.writerow([*columns, *RUN_COLUMNS, *metrics, "trainable_params", "train_seconds", "run_dir", "error"])
    for row in rows:
        writer.writerow(
            [
                *(_format(row["settings"].get(c)) for c in columns),
                row["seed"],
                row["status"],
                *(_format(row["metrics"].get(m)) for m in metrics),
                _format(row.get("trainable_params")),
                _format(row.get("train_seconds")),
                _relative(row.get("run_dir", ""), out),
                row["error"],
            ]
        )


def _relative(path: str, out: Path) -> str:
    """Run directories relative to the sweep's folder, so that results.csv stays valid wherever it is copied."""
    try:
        return str(Path(path).resolve().relative_to(out.resolve()))
    except ValueError:
        return path


def cell_stats(rows: list[dict]) -> list[dict]:
    """Per cell (in sweep order): its settings, n finished of n runs, and mean and std of each metric."""
    cells: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        cells[row["cell"]].append(row)
    out = []
    for cell, members in cells.items():
        done = [r for r in members if r["status"] == "finished"]
        stats = {}
        for metric in _metric_names(done):
            values = [r["metrics"][metric] for r in done if metric in r["metrics"]]
            stats[metric] = (
                statistics.fmean(values),
                statistics.stdev(values) if len(values) > 1 else None,
                len(values),
            )
        params = next((r["trainable_params"] for r in done if r.get("trainable_params") is not None), None)
        seconds = [r["train_seconds"] for r in done if r.get("train_seconds") is not None]
        out.append(
            {
                "cell": cell,
                "settings": members[0]["settings"],
                "finished": len(done),
                "runs": len(members),
                "stats": stats,
                "trainable_params": params,
                "train_seconds": statistics.fmean(seconds) if seconds else None,
            }
        )
    return out


def _mean_std(stat: Optional[tuple]) -> str:
    if stat is None:
        return "-"
    mean, std, n = stat
    return f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f} (n=1)"


def summary_markdown(sweep, rows: list[dict], paired: Optional[list[dict]] = None) -> str:
    """The sweep's summary.md: per cell mean ± std of every metric; the paired comparisons `paired`
    (sweeps/paired.py) of the sweep file's `compare:` section."""
    stats, columns = cell_stats(rows), _columns(rows)
    metrics = _metric_names(rows)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "failed", "interrupted", "pending")}
    lines = [
        f"{SUMMARY_TITLE}{sweep.name}",
        "",
        f"- sweep file: `{sweep.path}`",
        f"- experiment: {' '.join(sweep.experiment)}",
        f"- overrides: {' '.join(sweep.overrides) or '(none)'}",
        f"- seeds: {sweep.seeds}",
        f"- runs: {len(rows)} ({counts['finished']} finished, {counts['failed']} failed, "
        f"{counts['interrupted']} interrupted (resumed by the next run of the sweep), {counts['pending']} "
        "pending)",
        "",
        "Each metric: mean ± sample standard deviation over the finished seeds of the cell (n in the n column).",
        "",
    ]
    header = [*columns, "n", *metrics, "trainable params", "train s (mean)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cell in stats:
        cells = [_format(cell["settings"].get(c)) for c in columns]
        cells += [
            f"{cell['finished']}/{cell['runs']}",
            *(_mean_std(cell["stats"].get(m)) for m in metrics),
            f"{cell['trainable_params']:,}" if cell["trainable_params"] is not None else "-",
            f"{cell['train_seconds']:.0f}" if cell["train_seconds"] is not None else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += vtab_section(stats, sweep.metric)  # when the grid varies data.task over VTAB-1k tasks
    lines += paired_markdown(paired or [])
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["", "## Failed runs", ""] + [f"- {r['cell']} seed {r['seed']}: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def _numeric(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) and len(set(values)) > 1


def _plot(stats: list[dict], metric: str, x_of, group_of, xlabel: str, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list[tuple]] = defaultdict(list)
    for cell in stats:
        x, stat = x_of(cell), cell["stats"].get(metric)
        if x is not None and stat is not None:
            lines[group_of(cell)].append((x, stat[0], stat[1] or 0.0))
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for label, points in lines.items():
        points.sort()
        ax.errorbar(
            [p[0] for p in points],
            [p[1] for p in points],
            yerr=[p[2] for p in points],
            marker="o",
            capsize=3,
            label=label or metric,
        )
    xs = [p[0] for points in lines.values() for p in points]
    if min(xs) > 0 and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if len(lines) > 1 or next(iter(lines)):
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_plots(out: Path, sweep, rows: list[dict]) -> list[Path]:
    """The metric against each numeric axis (one line per value of the other axes), and against the trainable
    parameters (one line per group of cells that set the same keys and non-numeric values)."""
    import matplotlib.pyplot as plt

    stats, columns = cell_stats(rows), _columns(rows)
    numeric = [c for c in columns if _numeric([s["settings"][c] for s in stats if c in s["settings"]])]
    plots = {}
    for axis in numeric:

        def group(cell, axis=axis):
            return ", ".join(f"{c}={cell['settings'][c]}" for c in columns if c != axis and c in cell["settings"])

        plots[f"plot_{axis}.png"] = _plot(
            stats,
            sweep.metric,
            lambda cell, a=axis: cell["settings"].get(a),
            group,
            axis,
            f"{sweep.name}: {sweep.metric} against {axis}",
        )

    # Cells that set the same keys (and the same non-numeric values) form one line; within it a numeric key is
    # named with its value when it is constant, else as the one that varies.
    def family_key(cell) -> tuple:  # values as text: a grid value may be a list or a mapping (unhashable)
        return tuple((c, None if c in numeric else _format(v)) for c, v in cell["settings"].items())

    families: dict[tuple, list[dict]] = defaultdict(list)
    for cell in stats:
        families[family_key(cell)].append(cell)

    def family(cell):
        members = families[family_key(cell)]
        parts = []
        for c, v in cell["settings"].items():
            varies = c in numeric and len({m["settings"][c] for m in members}) > 1
            parts.append(f"varying {c}" if varies else f"{c}={v}")
        return ", ".join(parts)

    if len({s["trainable_params"] for s in stats if s["trainable_params"] is not None}) > 1:
        plots["plot_trainable_params.png"] = _plot(
            stats,
            sweep.metric,
            lambda cell: cell["trainable_params"],
            family,
            "trainable parameters",
            f"{sweep.name}: {sweep.metric} against trainable parameters",
        )
    if sweep.robustness:
        metric = sweep.metric.removeprefix("test/")
        curves = {cell["cell"]: {k: v[:2] for k, v in cell["stats"].items()} for cell in stats}
        plots["plot_robustness.png"] = robustness_figure(curves, *sweep.robustness, metric)
    written = []
    for name, fig in plots.items():
        if fig is not None:
            written.append(atomic_write(out / name, lambda fh, f=fig: f.savefig(fh, format="png"), binary=True))
            plt.close(fig)
    return written + write_routing_figures(out, rows)


def write_report(out: Path, sweep, runs: list) -> list[tuple[str, int, str]]:
    """Rewrite results.csv, summary.md and the plots from what is on disk; return the failed runs."""
    rows = collect(runs)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.csv", lambda fh: write_csv(fh, rows, out))
    if any(r["status"] == "finished" for r in rows):
        write_plots(out, sweep, rows)
    paired = paired_rows(sweep.compare, rows, out)
    atomic_write(out / "summary.md", lambda fh: fh.write(summary_markdown(sweep, rows, paired)))
    return [(r["cell"], r["seed"], r["error"]) for r in rows if r["status"] == "failed"]
