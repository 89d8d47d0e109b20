"""The base of every encoder wrapper: a pretrained library model, frozen in eval mode unless fine-tuned."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.dropout import _DropoutNd

from mope_lightning.models.attention import AttentionSwitch, attention_kernel


class Backbone(nn.Module):
    """Holds a library model as `self.model`.

    Frozen (the default): no trainable parameters, and eval mode whatever the mode of the parents (no dropout,
    drop-path or BatchNorm statistic updates), so a frozen encoder computes the same function in training and
    evaluation. Trainable (`frozen=False`, the fine-tuning baseline): an ordinary module.

    `dropout_in_training` (`keep_dropout_in_training()`, the reference's frozen BERT): frozen, but its own dropout and
    drop-path run in training as in an unfrozen model. Its normalisation layers stay in eval, so no statistic of the
    frozen weights changes; its output then varies from step to step and cannot be cached.

    `checkpointed_layers`: a prompted encoder's first `checkpointed_layers` layers recompute their activations in the
    backward pass instead of keeping them, by `checkpoint_policy` (models/prompt_loop.py); set by the factory from
    `model.activation_checkpointing`, `model.checkpointed_layers` and `model.checkpoint_policy`. 0: none.

    `attention` (`model.attention`): which attention kernel the library model runs, "auto", "library" or "eager"
    (models/attention.py); the wrappers call `select_attention` at the start of each forward pass.
    """

    def __init__(self, model: nn.Module, frozen: bool = True):
        super().__init__()
        self.frozen = frozen
        self.dropout_in_training = False
        self.checkpointed_layers = 0
        self.checkpoint_policy = "selective"
        self.attention = "auto"
        self._attention_switch = AttentionSwitch(model)
        self.model = model.requires_grad_(not frozen)
        if frozen:
            self.model.eval()

    def layer_checkpoint_policy(self, layer: int) -> Optional[str]:
        """How prompted layer `layer` is checkpointed: `checkpoint_policy`, or None (kept) past the first
        `checkpointed_layers`."""
        return self.checkpoint_policy if layer < self.checkpointed_layers else None

    def select_attention(self, reference: Tensor, tokens: int) -> None:
        """Run the library model's attention over `tokens` tokens with the kernel `attention` picks for the device
        and precision of `reference` (an activation of this forward pass)."""
        self._attention_switch.set(attention_kernel(self.attention, reference, tokens))

    def unfreeze(self) -> None:
        self.frozen = False
        self.model.requires_grad_(True)
        self.model.train(self.training)

    def stochastic_layers(self) -> list[str]:
        """The library model's modules that act only in training: dropout and drop-path with a nonzero rate."""
        return [
            name
            for name, m in self.model.named_modules()
            if (isinstance(m, _DropoutNd) and m.p > 0) or getattr(m, "drop_prob", 0) > 0
        ]

    def keep_dropout_in_training(self) -> bool:
        """Run the frozen model's dropout in training; False (and nothing changes) where it has none."""
        self.dropout_in_training = bool(self.stochastic_layers())
        self.train(self.training)  # Lightning never calls train() at the start of fit: set the mode now
        return self.dropout_in_training

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.model.train(mode and self.dropout_in_training)
            for module in self.model.modules() if mode and self.dropout_in_training else ():
                if isinstance(module, _NormBase):  # BatchNorm, InstanceNorm: their statistics are frozen weights
                    module.eval()
        return self
