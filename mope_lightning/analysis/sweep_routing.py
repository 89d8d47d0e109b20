"""Expert specialisation across a sweep: for each sample attribute (easy-VQA's image shape, colour, question type;
MM-IMDB's genres, ...), one figure `routing_<attribute>.png` with a heatmap per finished run (a row of panels per
cell, a panel per seed) of the mean routing probability per attribute value and expert, averaged over layers, read
from each run's `routing_val.json` (its last validation, written by the routing callback). The panels of a cell
side by side show whether a specialisation is the method's or one seed's.

The report is rewritten after every run, and drawing these panels costs seconds, so a figure is drawn again only
when what it shows changed: each PNG carries a signature of its runs' routing files, compared before drawing."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import torch

from mope_lightning.fileio import atomic_write
from mope_lightning.analysis.routing import MAX_HEATMAP_VALUES, draw_heatmap, expert_names


def _finished_routing(rows: list[dict]) -> list[tuple[dict, Path]]:
    return [
        (row, path)
        for row in rows
        if row["status"] == "finished"
        for path in [Path(row.get("run_dir", "")) / "routing_val.json"]
        if path.is_file()
    ]


def _signature(rows: list[dict]) -> str:
    """Changes when a panel would: a run finished or gone, a routing file rewritten."""
    parts = [
        (row["cell"], row["seed"], str(path.resolve()), path.stat().st_mtime_ns, path.stat().st_size)
        for row, path in _finished_routing(rows)
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _attribute_panels(rows: list[dict]) -> dict[str, dict[str, list[tuple[int, dict, float]]]]:
    """attribute -> cell -> [(seed, the attribute's entry of routing_val.json, its layer-averaged relative MI)]."""
    panels: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for row, path in _finished_routing(rows):
        stats = json.loads(path.read_text())
        for name, entry in (stats.get("attributes") or {}).items():
            if 0 < len(entry["values"]) <= MAX_HEATMAP_VALUES:
                mi = stats.get(f"mi_{name}_relative") or [float("nan")]
                panels[name][row["cell"]].append((row["seed"], entry, sum(mi) / len(mi)))
    return panels


def routing_figures(rows: list[dict], skip=lambda name: False) -> dict[str, object]:
    """`routing_<attribute>.png` -> its figure, for every attribute that some finished run's routing_val.json has
    (but those whose file name `skip` accepts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {}
    for name, cells in _attribute_panels(rows).items():
        if skip(f"routing_{name}.png"):
            continue
        cols = max(len(panels) for panels in cells.values())
        values = max(len(entry["values"]) for panels in cells.values() for _, entry, _ in panels)
        experts = max(len(entry["routing"][0]) for panels in cells.values() for _, entry, _ in panels)
        fig, axes = plt.subplots(
            len(cells),
            cols,
            squeeze=False,
            dpi=100,
            figsize=(cols * (1.6 + 0.55 * experts), len(cells) * (1.3 + 0.32 * values)),
        )
        for r, (cell, panels) in enumerate(cells.items()):
            for c in range(cols):
                ax = axes[r][c]
                if c >= len(panels):
                    ax.axis("off")
                    continue
                seed, entry, mi = panels[c]
                routing = torch.tensor(entry["routing"])
                draw_heatmap(
                    fig,
                    ax,
                    routing,
                    entry["values"],
                    expert_names(routing.shape[1]),
                    f"{cell}\nseed {seed}: relative MI {mi:.3f}",
                    fontsize=8,
                )
        fig.suptitle(
            f"mean routing probability per {name} (averaged over layers; last validation of each run)", fontsize=10
        )
        fig.tight_layout()
        figures[f"routing_{name}.png"] = fig
    return figures


def write_routing_figures(out: Path, rows: list[dict]) -> list[Path]:
    """Write `routing_<attribute>.png` into `out`, each unless it already shows these runs; the paths written."""
    import matplotlib.pyplot as plt

    signature = _signature(rows)
    written = []
    for name, fig in routing_figures(rows, skip=lambda name: _signed(out / name) == signature).items():
        written.append(
            atomic_write(
                out / name,
                lambda fh, f=fig: f.savefig(fh, format="png", metadata={"mope-routing": signature}),
                binary=True,
            )
        )
        plt.close(fig)
    return written


def _signed(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.text.get("mope-routing")
    except (OSError, ValueError):
        return None
