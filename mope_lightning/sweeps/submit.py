"""`mope sweep ... launcher=slurm`: a sweep's unfinished runs as one SLURM job array through submitit, aggregated as
the jobs finish (`launcher=submitit-local` runs the same array through submitit's local executor, to check a sweep
before sending it to a cluster).

Each job runs `runs.execute` for its run: the same skip-and-resume rule as the local launcher, so a job that is
requeued (after a time-out or preemption; submitit resubmits it through `checkpoint`) resumes its run from
`last.ckpt`, and re-running the sweep submits only what is not finished. Job logs are in `<out>/.submitit/`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from mope_lightning.errors import ConfigError
from mope_lightning.sweeps.runs import execute

# submitit's defaults would end a local job after 2 minutes; a training run needs longer.
DEFAULTS = {"timeout_min": 24 * 60, "nodes": 1, "tasks_per_node": 1, "cpus_per_task": 8, "gpus_per_node": 1}


class SweepJob:
    """The callable each array task runs; requeued with its own arguments (`checkpoint`) when SLURM stops it."""

    def __call__(self, run) -> dict:
        return execute(run)

    def checkpoint(self, run):
        import submitit

        return submitit.helpers.DelayedSubmission(self, run)


def submit_and_wait(
    sweep,
    out: Path,
    pending: list,
    cluster: str = "slurm",
    poll_s: float = 5.0,
    on_progress: Callable[[], None] = lambda: None,
) -> None:
    """Submit the `pending` runs as one job array and wait for every job; `on_progress` is called after each poll
    that saw a job finish (the sweep rewrites its report there)."""
    import submitit

    params = {**DEFAULTS, "name": f"mope-{sweep.name}", **sweep.slurm}
    if cluster == "local":  # this machine: no SLURM options, and no GPU to ask for unless it has one
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        if not _has_gpu():
            params.pop("gpus_per_node", None)
        setup = local_thread_setup(len(pending), os.environ)
        if setup:
            params.setdefault("local_setup", setup)
    executor = submitit.AutoExecutor(folder=out / ".submitit" / "%j", cluster=cluster)
    try:
        executor.update_parameters(**params)
    except (ValueError, TypeError, NameError) as exc:
        raise ConfigError(f"{sweep.path}: slurm: {exc}") from None
    jobs = executor.map_array(SweepJob(), pending)
    print(
        f"[mope] submitted {len(jobs)} run(s) as job array {jobs[0].job_id.split('_')[0]} ({cluster}); waiting "
        f"for them (the sweep resumes if this command is stopped and run again)",
        flush=True,
    )
    remaining = dict(zip(jobs, pending))
    while remaining:
        done = [job for job in remaining if job.done()]
        for job in done:
            run = remaining.pop(job)
            error = job.exception()
            if error is not None:  # the job itself failed (not the training run, which execute records)
                print(f"[mope]   job {job.job_id} for {run.slug} seed {run.seed} failed: {error}", flush=True)
        if done:
            on_progress()
        else:
            time.sleep(poll_s)


def local_thread_setup(jobs: int, environ) -> list[str]:
    """Shell lines that give each of `jobs` concurrent local jobs its share of the cores available to this process
    as torch threads, unless OMP_NUM_THREADS is set already. submitit's local executor starts every job of the array
    at once, and processes whose OpenMP threads outnumber the cores wait on descheduled ones: two 2-thread processes
    on 2 cores ran a small convolution 190 times slower than two 1-thread ones (benchmarks/oversubscription.py). The
    share is Lightning's rule for its DDP processes, which tests/conftest.py also gives pytest's workers."""
    from lightning.fabric.utilities.distributed import _suggested_max_num_threads

    if "OMP_NUM_THREADS" in environ:
        return []
    return [f"export OMP_NUM_THREADS={_suggested_max_num_threads(jobs)}"]


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()
