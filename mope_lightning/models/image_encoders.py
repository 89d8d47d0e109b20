"""Frozen image encoders that give one pooled feature per image (the conditioning modality of the default experiment).

Models come from their own library: timm by name (`num_classes=0` gives the pooled pre-logits feature) or torchvision
by name (the classifier is replaced by an identity). Each carries its library's preprocessing as a timm data config
(`input_size`, `mean`, `std`, `interpolation`, `crop_pct`) for `timm.data.create_transform`.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import torch
from torch import Tensor, nn

from mope_lightning.errors import ModelError
from mope_lightning.models.frozen import FrozenBackbone
from mope_lightning.models.sources import local_torchvision_weights

_TORCHVISION_HEADS = ("classifier", "fc", "heads", "head")


class FrozenImageEncoder(FrozenBackbone):
    """A frozen image backbone in eval mode: images (B, 3, H, W) -> pooled features (B, num_features)."""

    modality = "image"

    def __init__(self, model: nn.Module, data_config: dict, library: str, name: str):
        super().__init__(model)
        self.data_config = dict(data_config)
        self.library, self.name = library, name
        with torch.no_grad():
            probe = torch.zeros(1, *self.data_config["input_size"])
            self.num_features = int(self.model(probe).flatten(1).shape[1])

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images).flatten(1)

    def signature(self) -> dict:
        return {"library": self.library, "name": self.name, "num_features": self.num_features}


def build_timm_encoder(name: str, pretrained: bool, checkpoint: str | None, kwargs: dict) -> FrozenImageEncoder:
    import timm

    overlay = {"file": str(Path(checkpoint).expanduser())} if checkpoint else None
    try:
        model = timm.create_model(name, pretrained=pretrained or bool(checkpoint), num_classes=0,
                                  pretrained_cfg_overlay=overlay, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            close = difflib.get_close_matches(name, timm.list_models(), n=3)
            raise ModelError(f"model.image_encoder.name: timm does not know '{name}'"
                             f"{' (close: ' + ', '.join(close) + ')' if close else ''}") from None
        raise ModelError(f"model.image_encoder: timm could not build '{name}': {exc}") from None
    data_config = timm.data.resolve_model_data_config(model)
    return FrozenImageEncoder(model, data_config, "timm", name)


def build_torchvision_encoder(name: str, pretrained: bool, checkpoint: str | None, weights: str | None,
                              kwargs: dict) -> FrozenImageEncoder:
    import torchvision.models as tvm

    known = tvm.list_models(module=tvm)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        raise ModelError(f"model.image_encoder.name: torchvision has no classification model '{name}'"
                         f"{' (close: ' + ', '.join(close) + ')' if close else ''}")
    weight_enum = tvm.get_model_weights(name)
    try:
        chosen = weight_enum[weights] if weights else weight_enum.DEFAULT
    except KeyError:
        raise ModelError(f"model.image_encoder.weights: '{weights}' is not one of "
                         f"{', '.join(w.name for w in weight_enum)}") from None
    model = tvm.get_model(name, weights=None, **kwargs)
    if checkpoint or pretrained:
        _load_torchvision_state(model, name, chosen, checkpoint)
    for attr in _TORCHVISION_HEADS:
        if isinstance(getattr(model, attr, None), nn.Module):
            setattr(model, attr, nn.Identity())
            break
    return FrozenImageEncoder(model, _torchvision_data_config(chosen), "torchvision", name)


def _load_torchvision_state(model: nn.Module, name: str, chosen, checkpoint: str | None) -> None:
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise ModelError(f"model.image_encoder.checkpoint: file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        local = local_torchvision_weights(Path(chosen.url).name)
        # torchvision downloads into the torch hub cache only when no local copy exists (users with network).
        state = (torch.load(local, map_location="cpu", weights_only=True) if local
                 else chosen.get_state_dict(progress=True))
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        source = checkpoint or Path(chosen.url).name
        raise ModelError(f"model.image_encoder: weights {source} do not fit torchvision '{name}': "
                         f"{str(exc).splitlines()[0]}") from None


def _torchvision_data_config(chosen) -> dict:
    preset = chosen.transforms()
    crop, resize = preset.crop_size[0], preset.resize_size[0]
    return {"input_size": (3, crop, crop), "mean": tuple(preset.mean), "std": tuple(preset.std),
            "interpolation": preset.interpolation.value, "crop_pct": crop / resize, "crop_mode": "center"}
