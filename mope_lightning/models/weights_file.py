"""Encoder weights from a file released by another code base (MoCo v3, MAE, medical ViTs), whose keys carry that code
base's module path: `module.base_encoder.blocks.0...` (MoCo v3), `encoder.blocks.0...`, or none.

`checkpoint_prefix` names the prefix; the keys under it, with it stripped, must be exactly the architecture's own
(the file's other keys, such as a MoCo momentum encoder or a projection head, are left out). The file is read as
tensors only: safetensors, or `torch.load(weights_only=True)`, which refuses any pickled object that would run code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from mope_lightning.errors import ModelError

# Where releases nest the state dict inside a checkpoint file: MoCo v3 `state_dict`, MAE/DeiT `model`.
NESTED_STATE = ("state_dict", "model", "teacher", "module")
# The keys of a classification head, which the encoder (built with num_classes=0) has none of.
HEAD_KEYS = ("head.", "head_dist.", "fc.")


def read_tensors(path: Path, key: str) -> dict[str, Tensor]:
    """The tensors of a weights file, unwrapped from a checkpoint's nesting; `key` names the setting in messages."""
    if not path.is_file():
        raise ModelError(f"{key}: file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file (truncated, pickled code, not a checkpoint)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{key}: cannot read {path} as tensors ({first[:300]}); give a safetensors file or a "
            "PyTorch state dict saved with torch.save"
        ) from None
    for nested in NESTED_STATE:
        if isinstance(state, dict) and isinstance(state.get(nested), dict):
            state = state[nested]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelError(
            f"{key}: {path} holds no state dict of tensors (a dict of name -> tensor, or one under "
            f"{', '.join(NESTED_STATE)})"
        )
    return state


def load_prefixed(model: nn.Module, path: Path, prefix: str, key: str) -> None:
    """Load the tensors of `path` under `prefix` (stripped) into `model`, strictly: one message names the first
    missing and the first unexpected key, and the file."""
    state = read_tensors(path, key)
    chosen = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not chosen:
        sample = ", ".join(list(state)[:3])
        raise ModelError(
            f"{key}: no key of {path} starts with checkpoint_prefix '{prefix}' (its keys begin: "
            f"{sample}); set checkpoint_prefix to the part before the encoder's own names"
        )
    chosen = {k: v for k, v in chosen.items() if not k.startswith(HEAD_KEYS)}
    own = model.state_dict()
    missing = [k for k in own if k not in chosen]
    unexpected = [k for k in chosen if k not in own]
    misshaped = [k for k in own if k in chosen and chosen[k].shape != own[k].shape]
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: '{prefix}{unexpected[0]}')")
        if misshaped:
            k = misshaped[0]
            parts.append(f"'{k}' is {tuple(chosen[k].shape)} in the file, {tuple(own[k].shape)} here")
        raise ModelError(
            f"{key}: the weights in {path} under '{prefix}' do not fit this architecture: "
            f"{'; '.join(parts)}; check the model name, its kwargs and checkpoint_prefix"
        )
    model.load_state_dict(chosen)
