"""Resuming a run (`mope fit ... ckpt=last`): the same experiment with the same settings, except those that only
say how long it trains, where, and how it loads data. Those changes are applied, printed and recorded in
`<run dir>/resumes.json`; any other change is refused, naming the keys, so one run never mixes two experiments
(a resumed optimiser keeps its old learning rate while a rewritten config.yaml would claim the new one).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from mope_lightning.weights.checkpoints import is_adapter, read_checkpoint
from mope_lightning.config.schema import COMMAND_SECTIONS, HOW_IT_RUNS, differences, format_differences, to_container
from mope_lightning.training.training_order import saved_position
from mope_lightning.errors import CheckpointError, ConfigError
from mope_lightning.fileio import atomic_write


# What a resumed run may change: how long it trains, where and with how many processes, how it loads data, what it
# prints and where it logs (the record of the command and code that resumed it is new by nature). Anything else
# (model, optimiser, seed, samples, batch size, precision) would mix two experiments in one run, so it is refused.
RESUME_MAY_CHANGE = (
    "ckpt",
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.max_time",
    "trainer.min_epochs",
    "trainer.min_steps",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.accelerator",
    "trainer.strategy",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.default_root_dir",
    "data.root",
    "data.image_dir",
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "data.prefetch_factor",
    "data.cache_dir",
    "data.eval_batch_size",
    "checkpoint.save_last",
    "checkpoint.save_top_k",
    *(f"{section}." for section in COMMAND_SECTIONS),
    "run.",
    "tags",
    "notes",
    "loggers",
    *HOW_IT_RUNS,
)


def _may_change(key: str) -> bool:
    return any(key == allowed or (allowed.endswith(".") and key.startswith(allowed)) for allowed in RESUME_MAY_CHANGE)


def check_resume(cfg: DictConfig, ckpt_path: str) -> list[tuple]:
    """Resuming continues a run of the same experiment with the same settings (the backbone and weights are checked
    when they load). Returns the changes it allows (`RESUME_MAY_CHANGE`), to record; refuses any other."""
    if is_adapter(ckpt_path):
        raise ConfigError(
            f"ckpt: {ckpt_path} is an adapter, which holds no training state to resume; fit resumes "
            "from a .ckpt (ckpt=last finds the newest run's)"
        )
    # mmap: only the hyperparameters and counters are read here; Lightning loads the weights afterwards.
    checkpoint = read_checkpoint(ckpt_path, mmap=True)
    hparams = checkpoint.get("hyper_parameters", {})
    stored = hparams.get("config", {})
    if stored.get("experiment") != cfg.experiment:
        raise CheckpointError(
            f"ckpt: {ckpt_path} was trained by experiment '{stored.get('experiment')}', not "
            f"'{cfg.experiment}'; resume a run of this experiment (ckpt=last finds its newest one)"
        )
    changes = differences(stored, to_container(cfg), free_form=("trainer",))
    refused = [c for c in changes if not _may_change(c[0])]
    if refused:
        raise ConfigError(
            f"ckpt: {ckpt_path} was trained with other settings ({format_differences(refused)}); a "
            "resumed run continues the same experiment, so only its length, devices and data loading "
            "may change. Resume with the settings it was trained with, or start a new run without ckpt="
        )
    _check_run_length(to_container(cfg)["trainer"], checkpoint, ckpt_path, {c[0] for c in changes})
    # The run record (command, commit) of a resume is new by nature: resumes.json keeps it, it is not a "change".
    return [c for c in changes if c[0] != "ckpt" and not c[0].startswith("run.")]


def _check_run_length(trainer: dict, checkpoint: dict, ckpt_path: str, changed: set[str]) -> None:
    """A resume that changes a run-length limit to one the checkpoint has already reached is refused: the run would
    end at once, and its test of the old weights would read as the result of a training that never ran. With the
    limits it was trained with, a finished training resumes to what is left of the command (its test, when the run
    stopped before writing its metrics), and says that nothing was trained."""
    step = int(checkpoint.get("global_step", 0))
    position = saved_position(checkpoint) or {"epoch": int(checkpoint.get("epoch", 0)), "batches": 0}
    epochs, batches = position["epoch"], position["batches"]
    reached = []  # (the limit, what would let the run train)
    for key, done in (("max_steps", step), ("max_epochs", epochs)):
        limit = trainer.get(key)
        # -1 or None: no limit (with max_epochs unset, our Timer callback makes Lightning train without one)
        if isinstance(limit, int) and limit != -1 and limit <= done:
            reached.append((f"trainer.{key}={limit}", f"trainer.{key} above {done}"))
    if not reached:
        return
    trained = f"{epochs} epoch(s)" + (f" and {batches} batch(es) of epoch {epochs + 1}" if batches else "")
    if not changed & {key.split("=")[0] for key, _ in reached}:
        print(
            f"[mope] ckpt: {ckpt_path} finished its training ({trained}, up to step {step}) under these limits: "
            "nothing is trained, what follows uses its weights",
            flush=True,
        )
        return
    limits, fixes = " and ".join(key for key, _ in reached), " and ".join(fix for _, fix in reached)
    raise ConfigError(
        f"ckpt: {ckpt_path} has trained {trained}, up to step {step}: {limits} "
        f"{'leaves' if len(reached) == 1 else 'leave'} nothing to train, so nothing was run. To train "
        f"further, set {fixes}; to evaluate these weights, run `mope test ... ckpt={ckpt_path}`"
    )


def record_resume(trainer: L.Trainer, ckpt_path: str, changes: list[tuple], run_record: dict) -> None:
    """Say which settings a resumed run changed, and append them, with the resuming command's record (files,
    overrides, commit, versions), to `<run dir>/resumes.json`."""
    log_dir = trainer.log_dir
    if not trainer.is_global_zero or not log_dir:
        return
    if changes:
        print(f"[mope] resuming {ckpt_path} with changed settings: {format_differences(changes, limit=20)}", flush=True)
    path = Path(log_dir) / "resumes.json"
    try:
        history = json.loads(path.read_text()) if path.is_file() else []
    except (OSError, ValueError):  # a damaged record is replaced rather than stopping the run it records
        history = []
    history.append(
        {
            "time": datetime.datetime.now().isoformat(timespec="seconds"),
            "checkpoint": ckpt_path,
            "changes": [{"key": k, "was": old, "now": new} for k, old, new in changes],
            "run": run_record,
        }
    )
    atomic_write(path, lambda fh: json.dump(history, fh, indent=1, default=str))
