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
`results.csv`, `summary.md` and the plots are rewritten atomically (mope_lightning/sweeps/report.py).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from mope_lightning.training.trainer_config import load_config
from mope_lightning.errors import ConfigError, Interrupted, MopeError
from mope_lightning.fileio import check_writable, claim_output
from mope_lightning.sweeps.spec import Setting, Sweep, cell_slug, read_sweep
from mope_lightning.sweeps.runs import INTERRUPTED, Run, execute, resolved_config, run_state

log = logging.getLogger(__name__)
LAUNCHERS = ("local", "slurm", "submitit-local")


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
            run = Run(
                cell,
                seed,
                tuple(files),
                tuple(overrides),
                str(out_dir / cell_slug(cell) / f"seed_{seed}"),
                sweep.robustness,
            )
            try:
                resolved_config(run)
            except MopeError as exc:
                raise _blame(_places(sweep, cell, seed, (f"out={out}" if out else None, run.root)), exc) from None
            runs.append(run)
    return out_dir, runs


def _places(
    sweep: Sweep, cell: Sequence[Setting], seed: int, root: tuple[Optional[str], str] = (None, "")
) -> list[tuple[str, list[str], list[str]]]:
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


def _check_folder(out: Path, key: str) -> None:
    """The sweep writes a folder (its runs, results.csv, summary.md, plots): `out` may be new or an earlier sweep's
    folder (continued: its summary files are the sweep's own to replace), never a file or a folder whose
    results.csv or summary.md mope did not write, and must be writable. Checked after planning, before anything is
    written."""
    from mope_lightning.sweeps.report import SUMMARY_FILES, written_by_a_sweep

    claim_output(out, key, files=SUMMARY_FILES, earlier=written_by_a_sweep, overwrite=True, what="sweep")
    check_writable(out, key)


def run_sweep(path: str, overrides: Sequence[str] = ()) -> int:
    """`mope sweep`: plan, run what is not finished, aggregate after each run. Exit status 1 when a run failed."""
    from mope_lightning.sweeps.report import write_report

    options = {k: v for k, v in (o.split("=", 1) for o in overrides) if k in ("out", "launcher")}
    sweep = read_sweep(path, [o for o in overrides if o.split("=", 1)[0] not in options])
    launcher = options.get("launcher", "local")
    if launcher not in LAUNCHERS:
        raise ConfigError(f"launcher: '{launcher}' is not one of {', '.join(LAUNCHERS)}")
    out, runs = plan(sweep, options.get("out"))
    _check_folder(out, "out" if options.get("out") else "trainer.default_root_dir")
    pending = [r for r in runs if run_state(r)[0] != "finished"]
    print(
        f"[mope] sweep {sweep.name}: {len(sweep.cells)} cell(s) x {len(sweep.seeds)} seed(s) = {len(runs)} runs, "
        f"{len(runs) - len(pending)} finished, {len(pending)} to run ({launcher}); results in {out}",
        flush=True,
    )
    write_report(out, sweep, runs)
    if launcher == "local":
        for i, run in enumerate(pending, 1):
            print(f"[mope] run {i}/{len(pending)}: {run.slug} seed {run.seed}", flush=True)
            record = execute(run)
            write_report(out, sweep, runs)
            if record.get("exit") in INTERRUPTED:  # the run was interrupted with the sweep: stop here
                raise Interrupted(
                    f"sweep interrupted during {run.slug} seed {run.seed}; run the same command again to resume it",
                    record["exit"],
                )
            if record["status"] == "failed":
                print(f"[mope]   failed: {record['error']}", flush=True)
    elif pending:
        from mope_lightning.sweeps.submit import submit_and_wait

        submit_and_wait(
            sweep,
            out,
            pending,
            cluster="local" if launcher == "submitit-local" else "slurm",
            on_progress=lambda: write_report(out, sweep, runs),
        )
    failed = write_report(out, sweep, runs)
    print(
        f"[mope] sweep {sweep.name} finished: {len(runs) - len(failed)} of {len(runs)} runs finished\n"
        f"  results                  {out / 'results.csv'}\n  summary                  {out / 'summary.md'}",
        flush=True,
    )
    if failed:
        print(
            "[mope] failed runs (their errors are in results.csv and each run's sweep.log):\n"
            + "\n".join(f"  {slug} seed {seed}: {error}" for slug, seed, error in failed),
            file=sys.stderr,
        )
        return 1
    return 0
