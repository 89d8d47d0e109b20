"""The VTAB-1k view of a sweep's summary: when one column of the grid varies over VTAB-1k task names (e.g.
`grid: {data.task: [caltech101, dtd, ...]}`), a table with one row per setting of the other columns, the metric per
task, and the three group means the VPT papers report (natural, specialized, structured: the mean over the tasks of
the group that have a finished run), each with the tasks it is missing named."""

from __future__ import annotations

import statistics
from typing import Optional

from mope_lightning.data.datasets.vtab import GROUPS, TASKS


def task_column(stats: list[dict]) -> Optional[str]:
    """The column whose every value is a VTAB-1k task name, if there is one."""
    columns = dict.fromkeys(c for cell in stats for c in cell["settings"])
    for column in columns:
        values = [cell["settings"].get(column) for cell in stats]
        if values and all(isinstance(v, str) and v in TASKS for v in values):
            return column
    return None


def group_means(scores: dict[str, float]) -> dict[str, tuple[Optional[float], list[str]]]:
    """Per group: (the mean over its tasks in `scores`, or None when it has none; the group's tasks missing)."""
    means = {}
    for group in GROUPS:
        tasks = [t for t, (g, _) in TASKS.items() if g == group]
        present = [scores[t] for t in tasks if t in scores]
        means[group] = (statistics.fmean(present) if present else None, [t for t in tasks if t not in scores])
    return means


def vtab_section(stats: list[dict], metric: str) -> list[str]:
    """The markdown lines of the VTAB-1k table (per task and group means of `metric`, the mean over seeds of each
    cell), or none when no column varies over VTAB-1k tasks."""
    column = task_column(stats)
    if column is None:
        return []
    rows: dict[str, dict[str, float]] = {}
    for cell in stats:
        others = ", ".join(f"{c}={v}" for c, v in cell["settings"].items() if c != column) or "(all runs)"
        scores = rows.setdefault(others, {})
        if metric in cell["stats"]:
            scores[cell["settings"][column]] = cell["stats"][metric][0]
    tasks = [t for t in TASKS if any(t in scores for scores in rows.values())]
    header = ["setting", *tasks, *(f"{g} mean" for g in GROUPS)]
    lines = [
        "",
        "## VTAB-1k",
        "",
        f"{metric} per task ({column}; mean over the finished seeds) and the group means "
        "(the mean over the group's tasks with a finished run).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    missing_lines = []
    for setting, scores in rows.items():
        means = group_means(scores)
        cells = [f"{scores[t]:.4f}" if t in scores else "-" for t in tasks]
        cells += [f"{mean:.4f}" if mean is not None else "-" for mean, _ in means.values()]
        lines.append("| " + " | ".join([setting, *cells]) + " |")
        missing_lines += [
            f"- {setting}: {group} mean without {', '.join(missing)}"
            for group, (_, missing) in means.items()
            if missing
        ]
    if missing_lines:
        lines += [
            "",
            "Tasks missing from the group means (not in the sweep, or without a finished run):",
            "",
            *missing_lines,
        ]
    return lines
