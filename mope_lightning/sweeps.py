"""`mope sweep SWEEP.yaml [out=DIR] [launcher=local|slurm|submitit-local] [key=value ...]`: grids of experiments
times seeds, each run once in its own process and run directory, aggregated as the runs finish.

A sweep file:

    name: data_scaling                    # default: the file's name
    experiment: [experiments/easy_vqa.yaml]   # the experiment YAML and overlays, as `mope fit` takes them
    overrides: [trainer.max_epochs=2]     # key=value for every run (a mapping works too)
    grid:                                 # the cartesian product of the axes
      data.train_fraction: [0.01, 0.1, 1.0]       # a config key and its values
      method:                             # a named axis: each value selects overlay files and/or overrides
        mope: {}
        prompt_tuning: {overlays: [experiments/overlays/prompt_tuning.yaml]}
    cells:                                # optional: explicit cells (config key -> value), crossed with the grid
      - {model.mope.num_experts: 4}
      - {model.mope.dynamic_length: 24}
    seeds: [1, 2, 3]
    metric: test/acc                      # what the plots show (summary.md shows every test metric)
    robustness: {rates: [0, 0.7], kinds: [image, text, both]}   # optional: `mope robustness` after each fit
    slurm: {timeout_min: 120, gpus_per_node: 1}   # submitit parameters for launcher=slurm

Every run's config is built and checked before the first run starts. Runs go to `out/<cell>/seed_<s>/`. A run is
finished when its `fit_metrics.json` is there and its resolved config matches; re-running a sweep skips finished
runs and resumes interrupted ones from their `last.ckpt`, so a sweep killed anywhere continues where it stopped.
A failing run is recorded with its error and the others go on; the exit status is then 1. After each run,
`results.csv`, `summary.md` and the plots are rewritten atomically (mope_lightning/sweep_report.py).
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import yaml

from mope_lightning.config import differences, load_config, to_container
from mope_lightning.errors import ConfigError, Interrupted, MopeError
from mope_lightning.fileio import atomic_write, check_writable, claim_output
from mope_lightning.sweep_file import Setting, Sweep, cell_slug, read_sweep

log = logging.getLogger(__name__)
LAUNCHERS = ("local", "slurm", "submitit-local")


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
        return ["fit", *self.files, *self.overrides, f"seed={self.seed}", f"trainer.default_root_dir={self.root}",
                *extra]


def plan(sweep: Sweep, out: Optional[str] = None) -> tuple[Path, list[Run]]:
    """Every run of the sweep, each run's full config (seed and folder included) built and checked now, as `mope fit`
    will check it, before anything runs. A config that fails names the place in the sweep that makes it fail."""
    runs, out_dir = [], Path(out) if out else None
    for cell in sweep.cells:
        files = [*sweep.experiment, *(f for s in cell for f in s.files)]
        overrides = [*sweep.overrides, *(o for s in cell for o in s.overrides)]
        for seed in sweep.seeds:
            if out_dir is None:  # <the first run's trainer.default_root_dir>/sweeps/<name>
                try:
                    cfg = load_config(files, [*overrides, f"seed={seed}"])
                except MopeError as exc:
                    raise _blame(_places(sweep, cell, seed), exc) from None
                out_dir = Path(cfg.trainer.default_root_dir) / "sweeps" / sweep.name
            run = Run(cell, seed, tuple(files), tuple(overrides), str(out_dir / cell_slug(cell) / f"seed_{seed}"),
                      sweep.robustness)
            try:
                resolved_config(run)
            except MopeError as exc:
                raise _blame(_places(sweep, cell, seed, (f"out={out}" if out else None, run.root)), exc) from None
            runs.append(run)
    return out_dir, runs


def _places(sweep: Sweep, cell: Sequence[Setting], seed: int,
            root: tuple[Optional[str], str] = (None, "")) -> list[tuple[str, list[str], list[str]]]:
    """(where, files, overrides): what each place in the sweep adds to one run, in the order `mope fit` merges it."""
    places = [(f"{sweep.path}: experiment", list(sweep.experiment), [])]
    places += [(where, [], [item]) for where, item in zip(sweep.override_origins, sweep.overrides)]
    places += [(f"{sweep.path}: {s.where}", list(s.files), list(s.overrides)) for s in cell]
    places.append((f"{sweep.path}: seeds[{sweep.seeds.index(seed)}]", [], [f"seed={seed}"]))
    if root[1]:
        places.append((root[0] or "trainer.default_root_dir", [], [f"trainer.default_root_dir={root[1]}"]))
    return places


def _blame(places: list[tuple[str, list[str], list[str]]], error: MopeError) -> ConfigError:
    """`error` of a run's config, named by the first place in the sweep that, added to the ones before it, gives
    that error (only the settings of a failing run are reloaded here)."""
    culprit = places[-1][0]
    for n in range(1, len(places)):
        try:
            load_config([f for p in places[:n] for f in p[1]], [o for p in places[:n] for o in p[2]])
        except MopeError as partial:
            if str(partial) == str(error):
                culprit = places[n - 1][0]
                break
    return ConfigError(f"{culprit}: {str(error).removeprefix('command line: ')}")


def resolved_config(run: Run) -> dict:
    """The run's full config (read-only: cached, since the report asks for every run's after each run)."""
    return _resolved(run.files, (*run.overrides, f"seed={run.seed}", f"trainer.default_root_dir={run.root}"))


@functools.lru_cache(maxsize=None)
def _resolved(files: tuple[str, ...], overrides: tuple[str, ...]) -> dict:
    return to_container(load_config(files, overrides))


def _same(stored: Path, wanted: dict) -> bool:
    """Whether a run directory's config.yaml is the run's config, wherever the sweep folder now lives: the run's own
    directory, the checkpoint it resumed from, its record (`run`), tags, notes and loggers do not count, nor do keys
    only one side has (options added by a later version, at their defaults)."""
    try:
        config = yaml.safe_load(stored.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(config, dict) and not differences(_comparable(config), _comparable(wanted),
                                                        free_form=("trainer",))


def _comparable(config: dict) -> dict:
    trainer = {k: v for k, v in (config.get("trainer") or {}).items() if k != "default_root_dir"}
    kept = {k: v for k, v in config.items() if k not in ("run", "tags", "notes", "loggers")}
    return {**kept, "ckpt": None, "trainer": trainer}


def run_state(run: Run) -> tuple[str, Optional[Path]]:
    """("finished", its run dir) | ("evaluate", its run dir: fitted, robustness not yet evaluated) | ("resume", its
    last.ckpt) | ("new", None), judged by what is on disk. Only the newest run directory is resumed, in place
    (`ckpt=last`), and only when it was started with this config."""
    from mope_lightning.robustness import finished as robustness_finished

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
        resume = ("last" if path.parent.parent.name.startswith("version_") else str(path)) if state == "resume" \
            else None
        code = _mope(run.argv(resume), root)
        state, path = run_state(run)
    if code == 0 and state == "evaluate":
        code = _mope(_robustness_argv(run, path), root)
    status = "finished" if code == 0 else "interrupted" if code in (130, 143) else "failed"
    record = {"status": status, "exit": code, "seconds": round(time.time() - start),
              "resumed_from": resumed_from}
    if status != "finished":
        record["error"] = _last_error(root / "sweep.log")
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
    return ["robustness", str(run_dir / "config.yaml"), f"ckpt={tested}", f"out={run_dir}",
            f"rates={json.dumps(list(rates))}", f"kinds=[{','.join(kinds)}]"]


def _run_child(command: list[str], logfile) -> int:
    """Run one fit and wait for it. Ctrl-C reaches the fit from the terminal, which saves its last.ckpt and exits
    130: the sweep waits for that instead of killing it mid-save (as subprocess.run would). A SIGTERM sent to the
    sweep alone is passed on to the fit, which does the same and exits 143."""
    proc = subprocess.Popen(command, stdout=logfile, stderr=subprocess.STDOUT)
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        return proc.wait()
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
                signal.SIGTERM: signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))}
    try:
        return proc.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _last_error(logfile: Path) -> str:
    lines = [line.strip() for line in logfile.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("mope: error:")]
    return (errors or lines or ["no output"])[-1][:500]


SUMMARY_FILES = ("results.csv", "summary.md")  # written by sweep_report into the sweep's folder


def _check_folder(out: Path, key: str) -> None:
    """The sweep writes a folder (its runs, results.csv, summary.md, plots): `out` may be new or an earlier sweep's
    folder (continued: its summary files are the sweep's own to replace), never a file or a folder whose
    results.csv or summary.md mope did not write, and must be writable. Checked after planning, before anything is
    written."""
    claim_output(out, key, files=SUMMARY_FILES, earlier=_holds_a_sweep, overwrite=True, what="sweep")
    check_writable(out, key)


def _holds_a_sweep(out: Path) -> bool:
    """Whether the summary files in `out` are the ones a sweep writes (their first line says so)."""
    def first_line(name: str) -> str:
        try:
            with open(out / name, encoding="utf-8") as fh:
                return fh.readline()
        except (OSError, UnicodeDecodeError):
            return ""
    return all(not (out / name).exists() or marker(first_line(name)) for name, marker in
               (("summary.md", lambda line: line.startswith("# Sweep ")),
                ("results.csv", lambda line: ",seed,status," in f",{line}")))


def run_sweep(path: str, overrides: Sequence[str] = ()) -> int:
    """`mope sweep`: plan, run what is not finished, aggregate after each run. Exit status 1 when a run failed."""
    from mope_lightning.sweep_report import write_report

    options = {k: v for k, v in (o.split("=", 1) for o in overrides) if k in ("out", "launcher")}
    sweep = read_sweep(path, [o for o in overrides if o.split("=", 1)[0] not in options])
    launcher = options.get("launcher", "local")
    if launcher not in LAUNCHERS:
        raise ConfigError(f"launcher: '{launcher}' is not one of {', '.join(LAUNCHERS)}")
    out, runs = plan(sweep, options.get("out"))
    _check_folder(out, "out" if options.get("out") else "trainer.default_root_dir")
    pending = [r for r in runs if run_state(r)[0] != "finished"]
    print(f"[mope] sweep {sweep.name}: {len(sweep.cells)} cell(s) x {len(sweep.seeds)} seed(s) = {len(runs)} runs, "
          f"{len(runs) - len(pending)} finished, {len(pending)} to run ({launcher}); results in {out}", flush=True)
    write_report(out, sweep, runs)
    if launcher == "local":
        for i, run in enumerate(pending, 1):
            print(f"[mope] run {i}/{len(pending)}: {run.slug} seed {run.seed}", flush=True)
            record = execute(run)
            write_report(out, sweep, runs)
            if record.get("exit") in (130, 143):  # the run was interrupted with the sweep: stop here
                raise Interrupted(f"sweep interrupted during {run.slug} seed {run.seed}; run the same command "
                                  "again to resume it", record["exit"])
            if record["status"] == "failed":
                print(f"[mope]   failed: {record['error']}", flush=True)
    elif pending:
        from mope_lightning.sweep_submit import submit_and_wait

        submit_and_wait(sweep, out, runs, pending, cluster="local" if launcher == "submitit-local" else "slurm")
    failed = write_report(out, sweep, runs)
    print(f"[mope] sweep {sweep.name} finished: {len(runs) - len(failed)} of {len(runs)} runs finished\n"
          f"  results                  {out / 'results.csv'}\n  summary                  {out / 'summary.md'}",
          flush=True)
    if failed:
        print("[mope] failed runs (their errors are in results.csv and each run's sweep.log):\n" +
              "\n".join(f"  {slug} seed {seed}: {error}" for slug, seed, error in failed), file=sys.stderr)
        return 1
    return 0
