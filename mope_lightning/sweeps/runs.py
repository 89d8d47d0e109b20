"""One run of a sweep: what it is (`Run`), its state judged from what is on disk (`run_state`) and its execution in
a child process (`execute`). The local launcher (sweep.py), the SLURM launcher (submit.py) and the report
(report.py) build on this module; it imports none of them."""

from __future__ import annotations

import functools
import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from mope_lightning.config.schema import COMMAND_SECTIONS, differences, to_container

from mope_lightning.training.trainer_config import load_config
from mope_lightning.fileio import atomic_write
from mope_lightning.sweeps.spec import Setting, cell_slug


@dataclass(frozen=True)
class Run:
    """One (cell, seed): everything `mope fit` needs, and where its run directories go."""

    cell: tuple[Setting, ...]
    seed: int
    files: tuple[str, ...]
    overrides: tuple[str, ...]
    root: str  # trainer.default_root_dir of this run
    robustness: tuple[tuple[float, ...], tuple[str, ...]] = ()  # (rates, kinds) evaluated after the fit

    @property
    def slug(self) -> str:
        return cell_slug(self.cell)

    def argv(self, resume: Optional[str] = None) -> list[str]:
        extra = [f"ckpt={resume}"] if resume else []
        return [
            "fit",
            *self.files,
            *self.overrides,
            f"seed={self.seed}",
            f"trainer.default_root_dir={self.root}",
            *extra,
        ]


def resolved_config(run: Run) -> dict:
    """The run's full config (read-only: cached, since the report asks for every run's after each run)."""
    return _resolved(run.files, (*run.overrides, f"seed={run.seed}", f"trainer.default_root_dir={run.root}"))


@functools.lru_cache(maxsize=None)
def _resolved(files: tuple[str, ...], overrides: tuple[str, ...]) -> dict:
    return to_container(load_config(files, overrides))


def _same(stored: Path, wanted: dict) -> bool:
    """Whether a run directory's config.yaml is the run's config, wherever the sweep folder now lives: the run's own
    directory, the checkpoint it resumed from, its record (`run`), tags, notes and loggers do not count, nor do the
    other commands' sections (`COMMAND_SECTIONS`) or keys only one side has (options added by a later version, at
    their defaults)."""
    try:
        config = yaml.safe_load(stored.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(config, dict) and not differences(
        _comparable(config), _comparable(wanted), free_form=("trainer",)
    )


def _comparable(config: dict) -> dict:
    trainer = {k: v for k, v in (config.get("trainer") or {}).items() if k != "default_root_dir"}
    kept = {k: v for k, v in config.items() if k not in ("run", "tags", "notes", "loggers", *COMMAND_SECTIONS)}
    return {**kept, "ckpt": None, "trainer": trainer}


def run_state(run: Run) -> tuple[str, Optional[Path]]:
    """("finished", its run dir) | ("evaluate", its run dir: fitted, robustness not yet evaluated) | ("resume", its
    last.ckpt) | ("new", None), judged by what is on disk. Only the newest run directory is resumed, in place
    (`ckpt=last`), and only when it was started with this config."""
    from mope_lightning.analysis.robustness_tables import finished as robustness_finished

    wanted = resolved_config(run)
    versions = sorted(Path(run.root).glob("*/config.yaml"), key=lambda p: p.stat().st_mtime)
    for config in versions:
        if _same(config, wanted) and (config.parent / "fit_metrics.json").is_file():
            if run.robustness and not robustness_finished(config.parent, *run.robustness):
                return "evaluate", config.parent
            return "finished", config.parent
    last = versions[-1].parent / "checkpoints" / "last.ckpt" if versions else None
    if last is not None and last.is_file() and _same(versions[-1], wanted):
        return "resume", last
    return "new", None


INTERRUPTED = (130, 143)  # exit statuses of a fit stopped by SIGINT / SIGTERM (128 + the signal's number)


def execute(run: Run) -> dict:
    """Run `mope fit` for `run` in its own process (resuming it when it was interrupted); its output goes to
    `<run root>/sweep.log`. Returns the status record, also written to `<run root>/sweep_status.json`."""
    state, path = run_state(run)
    if state == "finished":
        return {"status": "finished", "run_dir": str(path)}
    root = Path(run.root)
    root.mkdir(parents=True, exist_ok=True)
    start = time.time()
    code, resumed_from = 0, str(path) if state == "resume" else None
    if state != "evaluate":
        # ckpt=last continues the run in its own directory; a SLURM run directory (slurm-<job>) is resumed by path
        resume = (
            ("last" if path.parent.parent.name.startswith("version_") else str(path)) if state == "resume" else None
        )
        code = _mope(run.argv(resume), root)
        state, path = run_state(run)
    if code == 0 and state == "evaluate":
        code = _mope(_robustness_argv(run, path), root)
    status = "finished" if code == 0 else "interrupted" if code in INTERRUPTED else "failed"
    record = {"status": status, "exit": code, "seconds": round(time.time() - start), "resumed_from": resumed_from}
    if status != "finished":
        record["error"] = _last_error(root / "sweep.log", code)
    atomic_write(root / "sweep_status.json", lambda fh: json.dump(record, fh, indent=1))
    return record


def _mope(argv: list[str], root: Path) -> int:
    """Run `mope <argv>` in a child process, its output appended to `<root>/sweep.log`; its exit status."""
    with open(root / "sweep.log", "a") as logfile:
        logfile.write(f"\n$ mope {' '.join(argv)}\n")
        logfile.flush()
        return _run_child([sys.executable, "-m", "mope_lightning", *argv], logfile)


def _robustness_argv(run: Run, run_dir: Path) -> list[str]:
    """`mope robustness` of a fitted run: its own config, the weights its fit tested, results in its directory."""
    tested = json.loads((run_dir / "fit_metrics.json").read_text())["tested_weights"]
    rates, kinds = run.robustness
    return [
        "robustness",
        str(run_dir / "config.yaml"),
        f"ckpt={tested}",
        f"out={run_dir}",
        f"rates={json.dumps(list(rates))}",
        f"kinds=[{','.join(kinds)}]",
    ]


def _run_child(command: list[str], logfile) -> int:
    """Run one fit and wait for it. Ctrl-C reaches the fit from the terminal, which saves its last.ckpt and exits
    130: the sweep waits for that instead of killing it mid-save (as subprocess.run would). A SIGTERM sent to the
    sweep alone is passed on to the fit, which does the same and exits 143.

    A signal can reach the fit before it has installed its own handlers (while it reads data or caches features),
    and then it dies of the signal (a negative return code) or exits otherwise: the run is still interrupted, not
    failed, and the sweep stops instead of going on to the next run."""
    proc = subprocess.Popen(command, stdout=logfile, stderr=subprocess.STDOUT)
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        return proc.wait()
    terminated = []

    def forward(signum, _frame):
        terminated.append(signum)
        proc.send_signal(signal.SIGTERM)

    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
    }
    try:
        code = proc.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if code in (-signal.SIGINT, -signal.SIGTERM):
        return 128 - code
    return 143 if terminated and code != 0 else code


def _last_error(logfile: Path, code: int) -> str:
    lines = [line.strip() for line in logfile.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("mope: error:")]
    if not errors and code in INTERRUPTED:  # stopped before the fit could say so itself
        return f"stopped by {signal.Signals(code - 128).name} before the fit started training"
    return (errors or lines or ["no output"])[-1][:500]
