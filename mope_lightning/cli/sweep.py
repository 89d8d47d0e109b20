"""`mope sweep SWEEP.yaml [out=DIR] [launcher=...] [key=value ...]`: run a sweep (sweeps/sweep.py)."""

from __future__ import annotations

from mope_lightning.errors import MopeError
from mope_lightning.sweeps.sweep import run_sweep


def main(files: list[str], overrides: list[str]) -> int:
    if len(files) != 1:
        raise MopeError("sweep takes one sweep file, e.g. `mope sweep experiments/sweeps/baselines.yaml`")
    return run_sweep(files[0], overrides)
