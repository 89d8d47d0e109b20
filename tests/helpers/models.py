"""Tiny random-init models the tests share: prompted timm ViT/Swin miniatures, pMoE's ViT experts, an adapter
written straight from a freshly built classifier, and one training step's loss and gradients per encoder family."""

from pathlib import Path
from typing import Optional

import timm
import torch

from mope_lightning.config.schema import to_container
from mope_lightning.models import build_model
from mope_lightning.models.backbone import Backbone
from mope_lightning.models.prompted_swin import PromptedSwin
from mope_lightning.models.prompted_vit import PromptedViT
from mope_lightning.weights.adapters import write_adapter
from mope_lightning.weights.checkpoints import TrainedWeights

from helpers import DEFAULT_EXP, EXPERIMENTS


def tiny_vit(name="vit_base_patch16_224", **kw):
    model = timm.create_model(
        name, pretrained=False, num_classes=0, img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2, **kw
    )
    return PromptedViT(model, {**timm.data.resolve_model_data_config(model), "input_size": (3, 32, 32)}, name), model


def tiny_swin():
    kw = dict(img_size=56, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=7)
    reference = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0, **kw)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0, **kw)
    model.load_state_dict(reference.state_dict())
    data_config = {**timm.data.resolve_model_data_config(model), "input_size": (3, 56, 56)}
    return PromptedSwin(model, data_config, "swin_tiny_patch4_window7_224"), reference.eval()


# Two experts of different widths and depths, the second at another input and patch size and normalisation
# (AugReg's 0.5 mean and std against DINO's ImageNet statistics).
EXPERTS = [
    {"library": "timm", "name": "vit_base_patch16_224.dino", "kwargs": {"img_size": 48}},
    {
        "library": "timm",
        "name": "vit_small_patch16_224.augreg_in21k",
        "kwargs": {"embed_dim": 32, "depth": 3, "img_size": 28, "patch_size": 7},
    },
]


CLASSES = ["circle", "square", "triangle"]


def write_tiny_adapter(cfg, out: Path, classes) -> Path:
    """An adapter of the classifier `cfg.model` builds, seeded as `from_pretrained` rebuilds it."""
    config = to_container(cfg)
    torch.manual_seed(config.get("seed", 0))
    net = build_model(cfg.model, len(classes))
    trained = TrainedWeights("tiny", config, classes, "multiclass", net.backbone_record(), net.trained_state_dict())
    return write_adapter(out, trained)


TIMM = ["model.prompted=image", "model.image_encoder.library=timm"]


CASES = {
    "bert": (DEFAULT_EXP, []),
    "vit": (DEFAULT_EXP, [*TIMM, "model.image_encoder.name=vit_base_patch16_224"]),
    "swin": (DEFAULT_EXP, [*TIMM, "model.image_encoder.name=swin_tiny_patch4_window7_224"]),
    "pmoe": (EXPERIMENTS / "easy_vqa_pmoe.yaml", ["model.pmoe.dynamic_length=2"]),
}


def _batch(net, prompted: str = "text", size: int = 3) -> dict:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 5000, (size, 7), generator=generator)
    mask = torch.ones(size, 7, dtype=torch.long)
    mask[1, 4:] = 0  # padding reaches the checkpointed layers as well
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2])[:size]}
    if prompted == "image":
        batch["images"] = torch.randn(size, *net.image.data_config["input_size"], generator=generator)
        batch["text_features"] = torch.randn(size, net.text.num_features, generator=generator)
    else:
        batch["image_features"] = torch.randn(size, net.image.num_features, generator=generator)
    # the first sample lost its conditioning modality: the learned missing embedding stands in (and trains)
    batch[f"{'image' if prompted == 'text' else 'text'}_missing"] = torch.arange(size) == 0
    return batch


def _loss_and_grads(net, batch: dict, checkpointing: Optional[str]):
    """Loss, importance loss and gradients of one step; `checkpointing`: the policy of every layer (None: off)."""
    for module in net.modules():
        if isinstance(module, Backbone):
            module.checkpointed_layers = module.num_layers if checkpointing and hasattr(module, "num_layers") else 0
            module.checkpoint_policy = checkpointing
    net.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the routing noise and the mapped prompts' dropout draw the same numbers both times
    out = net(batch)
    loss = torch.nn.functional.cross_entropy(out.logits, batch["labels"]) + out.importance_loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}
    return loss.detach(), out.importance_loss.detach(), grads
