"""Launch-time checks and the Trainer's plugins: what the CLI verifies before anything trains.

- A launcher (SLURM `srun`, `torchrun`) that started a number of processes different from
  `trainer.devices x trainer.num_nodes` would otherwise run silent duplicate trainings (ecosystem.md §12).
- `strategy=ddp` with one device, or a precision the hardware lacks, stops with a message naming the setting.
- Checkpoints whose weights hold NaN or infinite values are never written (a diverged run keeps its last good ones).
- Checkpoints are read with `weights_only=True` only (mope_lightning/weights/checkpoints.py), and written to a temporary
  file in their own folder and renamed, so a crash mid-save never leaves a corrupt `last.ckpt` (fsspec's transaction
  stages them in the system temp folder, which on many clusters is another file system, where the final move is a
  copy).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mope_lightning.weights.checkpoints import read_checkpoint
from mope_lightning.errors import ConfigError, NonFiniteError
from mope_lightning.fileio import atomic_write


class SafeCheckpointIO(TorchCheckpointIO):
    """Writes: `torch.save` to a temporary sibling, then an atomic rename. Reads (resume, testing the best
    checkpoint): `read_checkpoint`, i.e. `weights_only=True` whatever the caller asks, with one clear message for a
    broken or unsafe file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        bad = next(
            (
                k
                for k, v in checkpoint.get("state_dict", {}).items()
                if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())
            ),
            None,
        )
        if bad is not None:  # a diverged model is never kept as if it were a result (best or last)
            raise NonFiniteError(
                f"{path}: not saved: the weights hold NaN or infinite values ({bad}); training "
                "diverged. Lower optim.lr or keep trainer.gradient_clip_val on"
            )
        atomic_write(Path(path), lambda fh: torch.save(checkpoint, fh), binary=True)

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None) -> dict:
        return read_checkpoint(path, map_location=map_location if map_location is not None else "cpu")


def launcher_world_size() -> Optional[tuple[str, int, int]]:
    """(launcher name, processes per node, nodes) a launcher announced, or None when Lightning starts the processes
    itself (plain `python`, or an interactive SLURM allocation)."""
    if TorchElasticEnvironment.detect():
        per_node = int(os.environ["LOCAL_WORLD_SIZE"])
        return "torchrun", per_node, max(int(os.environ["WORLD_SIZE"]) // per_node, 1)
    if SLURMEnvironment.detect():
        nodes = int(os.environ.get("SLURM_NNODES", "1"))
        per_node = os.environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]  # e.g. "4" or "4(x2)"
        return (
            "SLURM (srun)",
            int(per_node) if per_node.isdigit() else int(os.environ["SLURM_NTASKS"]) // nodes,
            nodes,
        )
    return None


def _as_count(value: Any, key: str) -> Optional[int]:
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)):
        return len(value)
    if value in (None, "auto", -1, "-1"):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"trainer.{key}: '{value}' is not a number of devices") from None


def check_trainer(trainer: dict) -> None:
    """Refuse launch/Trainer mismatches and precisions the hardware lacks, before any training starts."""
    devices = _as_count(trainer.get("devices", "auto"), "devices")
    nodes = _as_count(trainer.get("num_nodes", 1), "num_nodes") or 1
    strategy = str(trainer.get("strategy", "auto"))
    launched = launcher_world_size()
    if launched is not None:
        launcher, per_node, launched_nodes = launched
        if devices is None or devices * nodes != per_node * launched_nodes:
            raise ConfigError(
                f"{launcher} started {per_node * launched_nodes} processes ({launched_nodes} node(s) x "
                f"{per_node}), but trainer.devices x trainer.num_nodes = {trainer.get('devices')} x "
                f"{nodes}; set trainer.devices={per_node} trainer.num_nodes={launched_nodes}, or start "
                f"{devices or 1} process(es) on each of {nodes} node(s)"
            )
    if strategy.startswith("ddp") and devices == 1 and nodes == 1 and launched is None:
        raise ConfigError(
            "trainer.strategy=ddp with trainer.devices=1 and trainer.num_nodes=1 runs a single process; "
            "set trainer.devices to the number of GPUs (or processes) to use, or drop the strategy"
        )
    on_gpu = _on_gpu(trainer)
    if trainer.get("sync_batchnorm") and not on_gpu:
        raise ConfigError(
            "trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm); set it to false for CPU runs"
        )
    _check_precision(str(trainer.get("precision", "32-true")), on_gpu)


def _on_gpu(trainer: dict) -> bool:
    accelerator = str(trainer.get("accelerator", "auto"))
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def check_compile(trainer: dict) -> None:
    """model.compile on CPU: inductor compiles C++ kernels, so a C++ compiler must be on the PATH."""
    if _on_gpu(trainer):
        return
    compiler = os.environ.get("CXX") or next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)
    if not compiler or not shutil.which(compiler):
        raise ConfigError(
            "model.compile=true: torch.compile on CPU builds C++ kernels, and no C++ compiler was found "
            "(CXX, g++, c++ or clang++ on the PATH); install one (e.g. `apt install g++`, or "
            "`conda install gxx`), or set model.compile=false"
        )


def _check_precision(precision: str, on_gpu: bool) -> None:
    if precision.startswith("bf16") and on_gpu and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"trainer.precision={precision}: this GPU has no bfloat16 support; use 16-mixed or 32-true")
    if precision.startswith("16") and not on_gpu:
        raise ConfigError(
            f"trainer.precision={precision}: float16 mixed precision needs a GPU; on CPU use "
            "bf16-mixed or 32-true (experiments/overlays/cpu.yaml)"
        )
    if precision.startswith("bf16") and not on_gpu and not cpu_has_bf16():
        print(
            f"[mope] note: trainer.precision={precision} on a CPU without native bfloat16 (AVX-512 BF16 or AMX): "
            "it runs, emulated, and usually slower than 32-true",
            file=sys.stderr,
            flush=True,
        )


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 matrix products natively (oneDNN's AVX-512 BF16 or AMX kernels)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def slurm_run_version() -> Optional[str]:
    """A SLURM job's run directory name: the same after a requeue, so a requeued job resumes in place."""
    if SLURMEnvironment.detect() and os.environ.get("SLURM_JOB_ID"):
        return f"slurm-{os.environ['SLURM_JOB_ID']}"
    return None
