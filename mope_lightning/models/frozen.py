"""The base of every encoder wrapper: a frozen pretrained library model that always stays in eval mode."""

from __future__ import annotations

from torch import nn


class FrozenBackbone(nn.Module):
    """Holds a library model as `self.model`, with no trainable parameters and in eval mode.

    Eval mode is kept whatever the mode of the parents (no dropout, drop-path or BatchNorm statistic updates), so a
    frozen encoder computes the same function in training and evaluation.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()
        return self
