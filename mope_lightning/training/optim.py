"""The optimizer and learning-rate schedule of a run, built from `optim.*` by the libraries that define them.

Optimizers are torch's (`optim.optimizer`: adamw, adam, sgd). Per-step schedules are transformers' (`get_scheduler`:
cosine, linear, constant, cosine_with_min_lr, each after `optim.warmup_steps` of linear warmup from 0, as
transformers defines them); `multistep` is torch's `MultiStepLR`, stepped once per epoch as in the paper's recipes.
The names are the config's choices (config/schema.py OPTIMIZERS, SCHEDULERS).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig


def build_optimizer(o: DictConfig, groups: dict[str, list]) -> torch.optim.Optimizer:
    """`groups`: parameter group name -> parameters (empty groups are left out); `optim.group_lr` sets a group's
    learning rate, the others take `optim.lr`."""
    param_groups = [
        {"params": params, "name": name, "lr": o.group_lr.get(name, o.lr)} for name, params in groups.items() if params
    ]
    if o.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    optimizer = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
    return optimizer(param_groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


def build_scheduler(o: DictConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> dict | None:
    """The Lightning `lr_scheduler` entry for `optim.scheduler`, or None for a constant rate without warmup."""
    if o.scheduler == "multistep":
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(o.milestones), o.gamma)
        return {"scheduler": scheduler, "interval": "epoch"}
    if o.scheduler == "constant" and o.warmup_steps == 0:
        return None
    from transformers import get_scheduler

    name = "constant_with_warmup" if o.scheduler == "constant" else o.scheduler
    extra = (
        {"scheduler_specific_kwargs": {"min_lr_rate": o.min_lr_ratio}} if o.scheduler == "cosine_with_min_lr" else {}
    )
    scheduler = get_scheduler(
        name, optimizer, num_warmup_steps=o.warmup_steps, num_training_steps=max(total_steps, 1), **extra
    )
    return {"scheduler": scheduler, "interval": "step"}
