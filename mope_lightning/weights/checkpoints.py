"""Reading trained weights, safely: Lightning checkpoints (`.ckpt`) and exported adapters (folders).

No file we read can run code. Checkpoints are opened with `torch.load(weights_only=True)`, which rebuilds tensors
and plain containers only and refuses any other object a pickle names; the objects it would have imported are
listed (by a static scan that executes nothing) in the refusal. Adapters are safetensors and JSON, which hold data
only. Every read of a checkpoint goes through `read_checkpoint`, ours and Lightning's (`SafeCheckpointIO`), so a
broken file (empty, truncated, a folder, not a checkpoint) gets one message naming it.

`TrainedWeights` is what both formats hold: the config the weights were trained with, the class names, the
backbone record (architecture signature and frozen-weight digests) and the trained tensors of the classifier.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from mope_lightning.errors import CheckpointError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
OPTIONAL_KEYS = ("missing_features.",)  # trained tensors that older weights lack (added in later versions)


@dataclass
class TrainedWeights:
    """Trained tensors of a classifier (keys relative to the classifier), with what is needed to rebuild it."""

    source: str
    config: dict  # the resolved experiment config the weights were trained with
    classes: list[str]
    task: str
    backbones: dict  # {"signature": ..., "weights": {frozen module: digest}}
    state: dict[str, Tensor]
    metrics: dict[str, float] = field(default_factory=dict)  # test metrics, when known


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # the static scan itself failed: the refusal stands without the list
        return []


def read_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """The contents of a torch checkpoint file, loaded with `weights_only=True`; `CheckpointError` naming the file
    for anything that is not a readable checkpoint made of tensors and plain values. `mmap=True` maps the tensors
    instead of reading them, for a caller that only looks at the small values beside them."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path}: is a folder, not a checkpoint file (an adapter folder holds "
            f"{ADAPTER_CONFIG}); pass a .ckpt file or an exported adapter"
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"{path}: empty file (0 bytes), not a checkpoint; its save was probably interrupted. "
            "Use another checkpoint of the run (checkpoints/*.ckpt)"
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        found = _unsafe_globals(path)
        if not found and "Unsupported global" not in str(exc):  # not an object it refused: a malformed pickle
            detail = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
            raise CheckpointError(
                f"{path}: not a checkpoint written by torch.save ({detail}); pass a checkpoint written by `mope fit`"
            ) from None
        named = f" ({', '.join(found)})" if found else ""
        raise CheckpointError(
            f"{path}: refused: loading it would import objects other than tensors and plain "
            f"values{named}, which can run code. mope_lightning checkpoints never hold such "
            "objects; nothing from this file was run. Ask its author for an exported adapter "
            "(mope export) or a checkpoint written by mope_lightning"
        ) from None
    except Exception as exc:  # noqa: BLE001 - weights_only already stopped code; any other failure is a bad file
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0]}" if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path}: truncated or not a PyTorch checkpoint ({reason}); use another checkpoint "
            "of the run (checkpoints/*.ckpt)"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{path}: holds a {type(checkpoint).__name__}, not a checkpoint (a dict with a "
            "state_dict); pass a checkpoint written by `mope fit`"
        )
    return checkpoint


def weights_from_checkpoint(path: str | Path) -> TrainedWeights:
    """The trained weights of a `mope fit` checkpoint."""
    checkpoint = read_checkpoint(path)
    record, hparams = checkpoint.get("mope_backbones"), checkpoint.get("hyper_parameters")
    if record is None or not isinstance(hparams, dict) or "config" not in hparams:
        raise CheckpointError(
            f"{path}: not a mope_lightning checkpoint (no backbone record or config); pass a "
            "checkpoint written by `mope fit`"
        )
    return TrainedWeights(
        str(path),
        hparams["config"],
        list(hparams.get("classes", [])),
        hparams.get("task", "multiclass"),
        record,
        classifier_state(checkpoint),
    )


def classifier_state(checkpoint: dict) -> dict[str, Tensor]:
    """The classifier's tensors in a Lightning checkpoint of `MoPELitModule`, keys relative to the classifier (its
    `net.` attribute)."""
    return {k[len("net.") :]: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith("net.")}


def is_adapter(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / ADAPTER_CONFIG).is_file()


def check_fits(net: nn.Module, backbones: Optional[dict], state: dict[str, Tensor], where: str) -> None:
    """Raise `CheckpointError` unless `state` was trained on `net`'s frozen backbone and holds every tensor of
    `net.trained_state_dict()` with its shape. `where` names the source in the message."""
    if backbones is None:
        raise CheckpointError(f"{where}: not a mope_lightning checkpoint (no backbone record)")
    ours = net.backbone_record()
    if backbones["signature"] != ours["signature"]:
        raise CheckpointError(
            f"{where}: trained with backbones {backbones['signature']}, but this config builds "
            f"{ours['signature']}; use the experiment config the weights were trained with"
        )
    if backbones["weights"] != ours["weights"]:
        changed = [k for k in ours["weights"] if backbones["weights"].get(k) != ours["weights"][k]]
        raise CheckpointError(
            f"{where}: trained on other frozen weights of the same architecture "
            f"({', '.join(changed)}); load the same pretrained encoder weights it was trained with"
        )
    expected = net.trained_state_dict()
    # Weights from before missing-modality support have no missing embeddings: they stay at their untrained zeros.
    missing = sorted(k for k in set(expected) - set(state) if not k.startswith(OPTIONAL_KEYS))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        details = "; ".join(
            f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", wrong))
            if keys
        )
        raise CheckpointError(
            f"{where}: does not fit this model's trainable weights ({details}); use the config "
            "the weights were trained with"
        )


def load_into(net: nn.Module, trained: TrainedWeights, classes: Optional[list[str]] = None) -> None:
    """Check that `trained` fits `net` (and, when given, that it predicts the same `classes` in the same order),
    then load its tensors."""
    if classes is not None and trained.classes and list(classes) != list(trained.classes):
        raise CheckpointError(
            f"{trained.source}: trained on the classes {_show(trained.classes)}, but the dataset "
            f"has {_show(classes)}; predictions would be mislabelled. Evaluate on data with the "
            "same label set, in the same order"
        )
    check_fits(net, trained.backbones, trained.state, trained.source)
    net.load_state_dict(trained.state, strict=False)


def _show(classes: list[str], limit: int = 8) -> str:
    shown = ", ".join(classes[:limit]) + (" ..." if len(classes) > limit else "")
    return f"[{shown}] ({len(classes)})"
