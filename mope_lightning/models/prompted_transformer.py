"""The base of the prompted transformers encoders (text, audio, video): a frozen library model of one family whose
isotropic layer stack we run ourselves, prompted at every layer.

It holds what the three wrappers share: the check that the model is of a family the wrapper prompts, the check of the
pool, the widths of an isotropic stack, `forward` as the pool of `forward_features`, the mean pooling and the common
part of `signature()`. Each wrapper keeps its inputs, its layer loop (`forward_features`), its masks, its
preprocessing and its own signature keys.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from mope_lightning.models.backbone import Backbone


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean over the valid tokens (mask 1) of (B, N, D) tokens."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class PromptedTransformer(Backbone):
    """A frozen transformers encoder with `num_layers` layers of width `hidden_size`, prompted at every layer.

    A subclass names its families and how to find their layers, and the pools it offers:

    - `promptable_models`: the `config.model_type` values it prompts.
    - `promptable_description`: what "the framework prompts ..." says in the TypeError for any other model; `{models}`
      stands for `promptable_models`.
    - `layer_stack(model)`: the model's layer list, or None where the model lacks the family's layout.
    - `pools` and `pool_error` (the ValueError for any other pool, `{pool!r}` standing for it).
    """

    modality: str
    promptable_models: tuple[str, ...]
    promptable_description: str
    pools: tuple[str, ...] = ("mean",)
    pool_error: str

    def __init__(self, model: nn.Module, pool: str = "mean"):
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        layers = self.layer_stack(model) if model_type in self.promptable_models else None
        if layers is None:
            models = ", ".join(self.promptable_models)
            raise TypeError(
                f"cannot prompt {self.modality} encoder of type '{model_type}': the framework prompts "
                + self.promptable_description.format(models=models)
            )
        if pool not in self.pools:
            raise ValueError(self.pool_error.format(pool=pool))
        super().__init__(model)
        self.pool_mode = pool
        self.width = model.config.hidden_size
        self.num_layers = len(layers)
        self.layer_dims = [self.width] * self.num_layers
        self.layer_stages = [0] * self.num_layers

    @staticmethod
    def layer_stack(model: nn.Module) -> Optional[nn.ModuleList]:
        """The model's layers where it has the family's layout (the modules the wrapper calls); None otherwise."""
        raise NotImplementedError

    @property
    def num_features(self) -> int:
        return self.width

    def forward_features(self, *inputs, **kwargs) -> tuple[Tensor, Optional[Tensor]]:
        """Last-layer tokens (B, N, D) with the last prompts inserted, and their (B, N) mask (None: all valid)."""
        raise NotImplementedError

    def pool(self, tokens: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """(B, D) summary: the mean over tokens and prompts (over the valid ones where a mask is given)."""
        return tokens.mean(1) if mask is None else masked_mean(tokens, mask)

    def forward(self, *inputs, **kwargs) -> Tensor:
        """The pooled last layer: the subclass's `forward_features` arguments (its inputs, then the prompter)."""
        return self.pool(*self.forward_features(*inputs, **kwargs))

    def signature(self) -> dict:
        """What a checkpoint must match: the architecture of the frozen model (a subclass adds its own keys)."""
        cfg = self.model.config
        return {
            "library": "transformers",
            "model_type": cfg.model_type,
            "hidden_size": cfg.hidden_size,
            "num_layers": self.num_layers,
        }
