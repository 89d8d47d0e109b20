"""The console report of a finished fit, validate, test or predict, and its `<command>_metrics.json`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L

from mope_lightning.errors import NonFiniteError
from mope_lightning.fileio import atomic_write
from mope_lightning.training.tracking import where_to_look


def report(command: str, summary: dict, trainer: L.Trainer) -> None:
    metrics = {k: float(v) for k, v in summary.get("metrics", {}).items()}
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:  # exit status 0 means a real result: a NaN metric is not one
        raise NonFiniteError(
            f"{command}: {', '.join(f'{k} is {v}' for k, v in bad.items())}; the weights or the "
            f"inputs give non-finite outputs, so no result was written (run directory "
            f"{summary['run_dir']})"
        )
    if metrics and summary["run_dir"] and not trainer.fast_dev_run:
        result = {**summary, "metrics": metrics}
        atomic_write(
            Path(summary["run_dir"]) / f"{command}_metrics.json",
            lambda fh: json.dump(result, fh, indent=2, default=str),
        )
    lines = [f"[mope] {command} finished"]
    lines += [f"  {k:<24} {v:.4f}" for k, v in sorted(metrics.items())]
    if summary["run_dir"] is None:
        lines.append("  (fast_dev_run: nothing was logged or saved)")
        print("\n".join(lines), flush=True)
        return
    lines.append(f"  run directory            {summary['run_dir']}")
    if summary.get("checkpoint"):
        lines.append(f"  checkpoint               {summary['checkpoint']}")
    if summary.get("best_checkpoint"):
        lines.append(f"  best checkpoint          {summary['best_checkpoint']}")
    if "tested_weights" in summary:
        lines.append(f"  tested                   {summary['tested_weights']}")
    if summary.get("seconds"):
        lines.append(
            f"  wall time                train {summary['seconds']['train']:.0f} s (validation included), "
            f"test {summary['seconds']['test']:.0f} s"
        )
    if summary.get("predictions"):
        lines.append(f"  predictions              {summary['predictions']}")
    lines += [f"  {tracker:<24} {how}" for tracker, how in where_to_look(trainer.loggers)]
    print("\n".join(lines), flush=True)
