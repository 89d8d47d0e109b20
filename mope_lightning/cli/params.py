"""`mope params`: the parameter counts of the model a config builds, without its weights."""

from __future__ import annotations

from omegaconf import DictConfig

from mope_lightning.config.checks import PARAM_GROUPS
from mope_lightning.data.base import data_prevents_caching
from mope_lightning.data.registry import DATAMODULES
from mope_lightning.errors import MopeError


def count_parameters(cfg: DictConfig) -> dict:
    """Parameter counts of the model `cfg` builds, from its architecture alone: built on the meta device, so no
    weights are read or downloaded and nothing is allocated."""
    import torch

    from mope_lightning.models import build_model

    data_cls = DATAMODULES[cfg.data.name]
    try:
        num_classes = len(data_cls(cfg.data).classes)
    except MopeError:
        if data_cls.num_classes is None:
            raise
        num_classes = data_cls.num_classes  # the dataset is not here; its label set size is fixed
    with torch.device("meta"):
        net = build_model(cfg.model, num_classes, weights=False, task=data_cls.task)
    features = {m: net.uncached_reason(m) for m in net.feature_modalities()}
    return {"num_classes": num_classes, **net.parameter_counts(), "pooled_features": features}


def format_parameter_counts(cfg: DictConfig, counts: dict) -> str:
    m = cfg.model
    enc = {k: f"{m[f'{k}_encoder'].library} {m[f'{k}_encoder'].name}" for k in m.modalities}
    if m.fusion == "pmoe":  # the experts replace the prompted modality's single encoder
        enc[m.prompted] = "experts " + ", ".join(f"{e.library} {e.name}" for e in m.pmoe.experts)
    lines = [
        f"[mope] parameters of {cfg.experiment}: fusion {m.fusion}, prompted {m.prompted}; "
        + ", ".join(f"{k} {v}" for k, v in enc.items())
        + f"; {counts['num_classes']} classes"
    ]
    for group in PARAM_GROUPS:
        if group in counts:
            lines.append(f"  {group:<18} {counts[group]:>14,}")
    lines += [
        f"  {'trainable':<18} {counts['trainable']:>14,}",
        f"  {'frozen':<18} {counts['frozen']:>14,}",
        f"  {'total':<18} {counts['total']:>14,}",
        f"  {'trainable / total':<18} {counts['trainable_percent']:>13.2f}%",
    ]
    if "trainable_percent_of_frozen" in counts:
        lines.append(f"  {'trainable / frozen':<18} {counts['trainable_percent_of_frozen']:>13.2f}%")
    for modality, reason in counts["pooled_features"].items():
        reason = reason or data_prevents_caching(cfg.data, modality)
        how = (
            "computed once per distinct input (data.cache_features)"
            if reason is None
            else f"computed every batch: {reason}"
        )
        lines.append(f"  {modality + ' feature':<18} {how}")
    return "\n".join(lines)


def main(cfg: DictConfig) -> int:
    print(format_parameter_counts(cfg, count_parameters(cfg)))
    return 0
