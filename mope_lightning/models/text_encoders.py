"""Prompted text encoders: a frozen transformers BERT-family model whose layer loop we own.

The library model stays untouched; we call its embedding module and its layers ourselves so that before every layer
the prompts for that layer are inserted right after [CLS] (the reference's position), and after it the prompt outputs
are split off and carried to the next layer, which either replaces them with its own prompts or passes them on.
With no prompts the loop reproduces `model(...).last_hidden_state` exactly (tests/test_text_encoder.py).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from mope_lightning.models.frozen import FrozenBackbone
from transformers.masking_utils import create_bidirectional_mask

# Encoder families whose layers take (hidden_states, attention_mask) and whose embeddings take input_ids.
PROMPTABLE_TEXT_MODELS = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie")

Prompter = Callable[[int, Tensor], Optional[Tensor]]


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean over the valid tokens (mask 1) of (B, N, D) tokens."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class PromptedTextEncoder(FrozenBackbone):
    """A frozen BERT-family encoder prompted at every layer.

    Args:
        model: a transformers encoder (`BertModel`, `RobertaModel`, ...); it is frozen and put in eval mode.
        tokenizer: its tokenizer; used by the DataLoader's collate function, never inside `forward`.
    """

    modality = "text"
    prompt_init_scale = 0.3  # the reference's uniform(-0.3, 0.3) for BERT prompts (mope_method.md §2.2)

    def __init__(self, model: nn.Module, tokenizer=None):
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        layers = getattr(getattr(model, "encoder", None), "layer", None)
        if model_type not in PROMPTABLE_TEXT_MODELS or layers is None or not hasattr(model, "embeddings"):
            raise TypeError(f"cannot prompt text encoder of type '{model_type}': the framework prompts BERT-family "
                            f"encoders ({', '.join(PROMPTABLE_TEXT_MODELS)})")
        super().__init__(model)
        self.tokenizer = tokenizer
        self.width = model.config.hidden_size
        self.num_layers = len(layers)
        self.layer_dims = [self.width] * self.num_layers
        self.layer_stages = [0] * self.num_layers

    @property
    def num_features(self) -> int:
        return self.width

    def forward_features(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Optional[Tensor] = None,
                         prompter: Optional[Prompter] = None) -> tuple[Tensor, Tensor]:
        """Last-layer tokens (B, 1 + P + L - 1, D) with the last prompts after [CLS], and their (B, N) mask."""
        x = self.model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        prompts: Optional[Tensor] = None
        masks: dict[int, Optional[Tensor]] = {}
        for i, layer in enumerate(self.model.encoder.layer):
            if prompter is not None:
                new = prompter(i, self._pooled_state(x, attention_mask, prompts))
                prompts = new if new is not None else prompts
            num_prompts = 0 if prompts is None else prompts.shape[1]
            hidden, mask2d = self._insert(x, attention_mask, prompts)
            if num_prompts not in masks:
                masks[num_prompts] = create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden,
                                                               attention_mask=mask2d)
            out = layer(hidden, masks[num_prompts])
            hidden = out[0] if isinstance(out, tuple) else out  # transformers 4.x returned a tuple
            x = torch.cat([hidden[:, :1], hidden[:, 1 + num_prompts:]], dim=1)
            prompts = hidden[:, 1:1 + num_prompts] if num_prompts else None
        return self._insert(x, attention_mask, prompts)

    def pool(self, tokens: Tensor, mask: Tensor, how: str = "mean") -> Tensor:
        """(B, D) summary: masked mean over tokens and prompts, or the [CLS] token."""
        return tokens[:, 0] if how == "cls" else masked_mean(tokens, mask)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Optional[Tensor] = None,
                prompter: Optional[Prompter] = None, pool: str = "mean") -> Tensor:
        return self.pool(*self.forward_features(input_ids, attention_mask, token_type_ids, prompter), how=pool)

    @staticmethod
    def _pooled_state(x: Tensor, mask: Tensor, prompts: Optional[Tensor]) -> Tensor:
        # The router pools the layer input over all valid tokens, carried prompts included (mope_method.md §8);
        # summed separately so that no (B, N, D) concatenation is made just for pooling.
        weights = mask.to(x.dtype).unsqueeze(-1)
        total, count = (x * weights).sum(1), weights.sum(1)
        if prompts is not None:
            total, count = total + prompts.to(x.dtype).sum(1), count + prompts.shape[1]
        return total / count.clamp_min(1.0)

    @staticmethod
    def _insert(x: Tensor, mask: Tensor, prompts: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        if prompts is None:
            return x, mask
        ones = mask.new_ones(mask.shape[0], prompts.shape[1])
        return (torch.cat([x[:, :1], prompts.to(x.dtype), x[:, 1:]], dim=1),
                torch.cat([mask[:, :1], ones, mask[:, 1:]], dim=1))

    def signature(self) -> dict:
        """What a checkpoint must match: the architecture of the frozen model."""
        cfg = self.model.config
        return {"library": "transformers", "model_type": cfg.model_type, "hidden_size": cfg.hidden_size,
                "num_layers": self.num_layers, "vocab_size": cfg.vocab_size}
