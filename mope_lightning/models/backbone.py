"""The base of every encoder wrapper: a pretrained library model, frozen in eval mode unless fine-tuned."""

from __future__ import annotations

from torch import nn


class Backbone(nn.Module):
    """Holds a library model as `self.model`.

    Frozen (the default): no trainable parameters, and eval mode whatever the mode of the parents (no dropout,
    drop-path or BatchNorm statistic updates), so a frozen encoder computes the same function in training and
    evaluation. Trainable (`frozen=False`, the fine-tuning baseline): an ordinary module.

    `checkpointed_layers`: a prompted encoder's first `checkpointed_layers` layers recompute their activations in the
    backward pass instead of keeping them (models/prompt_loop.py); set by the factory from
    `model.activation_checkpointing` and `model.checkpointed_layers`. 0: none.
    """

    def __init__(self, model: nn.Module, frozen: bool = True):
        super().__init__()
        self.frozen = frozen
        self.checkpointed_layers = 0
        self.model = model.requires_grad_(not frozen)
        if frozen:
            self.model.eval()

    def unfreeze(self) -> None:
        self.frozen = False
        self.model.requires_grad_(True)
        self.model.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self
