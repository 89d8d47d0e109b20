"""Image encoders from timm or torchvision, each with its library's own preprocessing.

timm vision transformers become prompted encoders (`PromptedViT`, `PromptedSwin`); any other timm or torchvision
classification model becomes a `PooledImageEncoder` (one pooled feature per image, the conditioning role of the
default experiment). Each carries its preprocessing as a timm data config (`input_size`, `mean`, `std`,
`interpolation`, `crop_pct`) for `timm.data.create_transform`.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from mope_lightning.errors import ModelError
from mope_lightning.models.backbone import Backbone
from mope_lightning.models.prompted_swin import PromptedSwin
from mope_lightning.models.prompted_vit import PromptedViT
from mope_lightning.models.sources import local_torchvision_weights
from mope_lightning.models.weights_file import load_prefixed

_TORCHVISION_HEADS = ("classifier", "fc", "heads", "head")

# Random-init miniatures of each family (the tiny overlay): architecture arguments and input size.
TINY_TIMM = {
    "vision_transformer": dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2),
    "deit": dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2),
    "swin_transformer": dict(img_size=56, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=7),
    "resnet": dict(layers=(1, 1, 1, 1)),  # one block per stage (e.g. the RGB-D experiment's depth encoder)
}
TINY_TORCHVISION = {"mobilenet_v2": dict(width_mult=0.25), "mobilenet_v3_small": dict(width_mult=0.25)}
TINY_INPUT = 32


class PooledImageEncoder(Backbone):
    """An image backbone giving pooled features: images (B, 3, H, W) -> (B, num_features). It cannot be prompted."""

    modality = "image"
    input_key = "images"  # the batch key of its pixels ("depth" for a depth encoder: as_depth_encoder)

    def __init__(self, model: nn.Module, data_config: dict, library: str, name: str):
        super().__init__(model)
        self.data_config = dict(data_config)
        self.library, self.name = library, name
        with torch.no_grad():
            probe = torch.zeros(1, *self.data_config["input_size"])
            self.num_features = int(self.model(probe).flatten(1).shape[1])

    def inputs(self, batch: dict) -> dict:
        return {"images": batch[self.input_key]}

    def forward(self, images: Tensor) -> Tensor:
        self.select_attention(images, getattr(getattr(self.model, "patch_embed", None), "num_patches", 0))
        return self.model(images).flatten(1)

    def signature(self) -> dict:
        return {"library": self.library, "name": self.name, "num_features": self.num_features}

    # --- feature maps for dense heads (a linear probe on a CNN grid) --------------------------------------------
    @property
    def grid_layers(self) -> int:
        """How many feature maps `forward_grids` can give: timm's feature stages, or the blocks of a torchvision
        model's `features` (MobileNet, EfficientNet, ...); 0 for a model with neither."""
        if self.library == "timm":
            return len(getattr(self.model, "feature_info", None) or [])
        features = getattr(self.model, "features", None)
        return len(features) if isinstance(features, nn.Sequential) else 0

    def forward_grids(self, images: Tensor, layers: Sequence[int]) -> list[Tensor]:
        """The feature maps (B, C, h, w) of `layers` (indices into the stages or blocks counted by `num_layers`)."""
        if self.library == "timm":  # timm gives each stage once: a layer listed twice is asked for once
            unique = sorted(set(layers))
            grids = self.model.forward_intermediates(images, indices=unique, intermediates_only=True)
            return [dict(zip(unique, grids))[i] for i in layers]
        wanted, outputs, x = set(layers), {}, images
        for i, block in enumerate(self.model.features[: max(layers) + 1]):
            x = block(x)
            if i in wanted:
                outputs[i] = x
        return [outputs[i] for i in layers]

    def grid_dims(self, layers: Sequence[int]) -> list[int]:
        """The channels of each feature map `forward_grids` gives for `layers`."""
        if self.library == "timm":
            return [self.model.feature_info[i]["num_chs"] for i in layers]
        with torch.no_grad():  # torchvision records no widths: probe once (on the meta device when counting)
            probe = torch.zeros(1, *self.data_config["input_size"])
            return [grid.shape[1] for grid in self.forward_grids(probe, layers)]


def as_depth_encoder(encoder: nn.Module) -> nn.Module:
    """`encoder`, an image encoder, reading the batch's encoded depth maps (`depth`, B x 3 x S x S: data/depth.py)
    instead of its images: the frozen encoder of RGB-D segmentation's second modality (`model.depth_encoder`)."""
    encoder.modality, encoder.input_key = "depth", "depth"
    return encoder


class _TimmLoadReport(logging.Handler):
    """Collects the keys timm reports missing while it loads pretrained weights (it logs them, non-strict)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.missing = ""
        self.logger = logging.getLogger("timm.models._builder")

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Missing keys ("):
            self.missing = message[len("Missing keys (") : message.find(")")]

    def __enter__(self) -> "_TimmLoadReport":
        self.level = self.logger.level
        self.logger.addHandler(self)
        self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level)


def _first_lines(exc: Exception, lines: int = 3, chars: int = 400) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines()[:lines] if line.strip())
    return text[:chars] + (" ..." if len(text) > chars else "")


def _timm_family(name: str) -> str:
    from timm.models import model_entrypoint

    return model_entrypoint(name.split(".")[0]).__module__.rsplit(".", 1)[-1]  # without a ".tag" suffix


def build_timm_encoder(
    name: str,
    pretrained: bool,
    checkpoint: Optional[str],
    kwargs: dict,
    tiny: bool = False,
    checkpoint_prefix: Optional[str] = None,
    key: str = "model.image_encoder",
) -> nn.Module:
    """A timm model by name (a `.tag` picks its pretrained weights, e.g. `vit_base_patch16_224.dino`), with timm's
    pretrained weights, the weights of a `checkpoint` file (read by timm; with `checkpoint_prefix`, read strictly
    under that key prefix: weights_file.py), or random init."""
    import timm
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise ModelError(
            f"{key}.name: timm does not know '{name}'{' (close: ' + ', '.join(close) + ')' if close else ''}"
        )
    if tiny:
        kwargs = {**TINY_TIMM.get(_timm_family(name), {}), **kwargs}
    prefixed = checkpoint is not None and checkpoint_prefix is not None  # read here, strictly, under the prefix
    timm_file = checkpoint if checkpoint and not prefixed else None
    overlay = {"file": str(Path(timm_file).expanduser())} if timm_file else None
    try:
        with _TimmLoadReport() as report:
            model = timm.create_model(
                name,
                pretrained=(pretrained or bool(timm_file)) and not prefixed,
                num_classes=0,
                pretrained_cfg_overlay=overlay,
                **kwargs,
            )
    except (RuntimeError, FileNotFoundError, TypeError, ValueError) as exc:
        raise ModelError(
            f"{key}: timm could not build '{name}'{' from ' + timm_file if timm_file else ''}: {_first_lines(exc)}"
        ) from None
    if report.missing:  # timm loads pretrained weights non-strictly once the classifier is dropped
        raise ModelError(
            f"{key}: timm could not build '{name}' from {timm_file or 'its weights'}: "
            f"the weights lack {report.missing[:200]}; give weights of this architecture"
        )
    if prefixed:
        load_prefixed(model, Path(checkpoint).expanduser(), checkpoint_prefix, f"{key}.checkpoint")
    data_config = timm.data.resolve_model_data_config(model)
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:  # the model's real input size (a tiny or resized model differs from its pretrained cfg)
        data_config["input_size"] = (3, *img_size)
    elif tiny:
        data_config["input_size"] = (3, TINY_INPUT, TINY_INPUT)
    if isinstance(model, SwinTransformer):
        return PromptedSwin(model, data_config, name)
    if isinstance(model, VisionTransformer):
        return PromptedViT(model, data_config, name)
    return PooledImageEncoder(model, data_config, "timm", name)


def build_torchvision_encoder(
    name: str,
    pretrained: bool,
    checkpoint: Optional[str],
    weights: Optional[str],
    kwargs: dict,
    tiny: bool = False,
    key: str = "model.image_encoder",
) -> PooledImageEncoder:
    import torchvision.models as tvm

    known = tvm.list_models(module=tvm)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        raise ModelError(
            f"{key}.name: torchvision has no classification model '{name}'"
            f"{' (close: ' + ', '.join(close) + ')' if close else ''}"
        )
    weight_enum = tvm.get_model_weights(name)
    try:
        chosen = weight_enum[weights] if weights else weight_enum.DEFAULT
    except KeyError:
        raise ModelError(f"{key}.weights: '{weights}' is not one of {', '.join(w.name for w in weight_enum)}") from None
    if tiny:
        kwargs = {**TINY_TORCHVISION.get(name, {}), **kwargs}
    model = tvm.get_model(name, weights=None, **kwargs)
    if checkpoint or pretrained:
        _load_torchvision_state(model, name, chosen, checkpoint, key)
    for attr in _TORCHVISION_HEADS:
        if isinstance(getattr(model, attr, None), nn.Module):
            setattr(model, attr, nn.Identity())
            break
    data_config = _torchvision_data_config(chosen)
    if tiny:
        data_config["input_size"] = (3, TINY_INPUT, TINY_INPUT)
    return PooledImageEncoder(model, data_config, "torchvision", name)


def _load_torchvision_state(model: nn.Module, name: str, chosen, checkpoint: Optional[str], key: str) -> None:
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise ModelError(f"{key}.checkpoint: file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        local = local_torchvision_weights(Path(chosen.url).name)
        # torchvision downloads into the torch hub cache only when no local copy exists (users with network).
        state = (
            torch.load(local, map_location="cpu", weights_only=True) if local else chosen.get_state_dict(progress=True)
        )
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        source = checkpoint or Path(chosen.url).name
        raise ModelError(
            f"{key}: weights {source} do not fit torchvision '{name}': {str(exc).splitlines()[0]}"
        ) from None


def _torchvision_data_config(chosen) -> dict:
    preset = chosen.transforms()
    crop, resize = preset.crop_size[0], preset.resize_size[0]
    return {
        "input_size": (3, crop, crop),
        "mean": tuple(preset.mean),
        "std": tuple(preset.std),
        "interpolation": preset.interpolation.value,
        "crop_pct": crop / resize,
        "crop_mode": "center",
    }
