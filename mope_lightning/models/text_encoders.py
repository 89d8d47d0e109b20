"""Prompted text encoders: a frozen transformers BERT-family model whose layer loop we own.

The library model stays untouched; we call its embedding module and then its layers through the shared prompted block
loop (`prompt_loop.py`), with the prompts inserted right after [CLS] (the reference's position). With no prompts the
loop reproduces `model(...).last_hidden_state` exactly (tests/test_text_encoder.py).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn
from transformers.masking_utils import create_bidirectional_mask

from mope_lightning.models.backbone import Backbone
from mope_lightning.models.prompt_loop import Prompter, insert_prompts, mask_with_prompts, prompted_block_loop

# Encoder families whose layers take (hidden_states, attention_mask) and whose embeddings take input_ids.
PROMPTABLE_TEXT_MODELS = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie")


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean over the valid tokens (mask 1) of (B, N, D) tokens."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class PromptedTextEncoder(Backbone):
    """A frozen BERT-family encoder prompted at every layer.

    Args:
        model: a transformers encoder (`BertModel`, `RobertaModel`, ...); it is frozen and put in eval mode.
        tokenizer: its tokenizer; used by the DataLoader's collate function, never inside `forward`.
        pool: the (B, D) summary of the last layer: "mean" over valid tokens and prompts, or "cls".
    """

    modality = "text"
    prompt_init_scale = 0.3  # the reference's uniform(-0.3, 0.3) for BERT prompts (mope_method.md §2.2)

    def __init__(self, model: nn.Module, tokenizer=None, pool: str = "mean"):
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        layers = getattr(getattr(model, "encoder", None), "layer", None)
        if model_type not in PROMPTABLE_TEXT_MODELS or layers is None or not hasattr(model, "embeddings"):
            raise TypeError(
                f"cannot prompt text encoder of type '{model_type}': the framework prompts BERT-family "
                f"encoders ({', '.join(PROMPTABLE_TEXT_MODELS)})"
            )
        if pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {pool!r}")
        if getattr(model, "pooler", None) is not None:
            # Never used (we pool ourselves). Where a checkpoint lacks it (sentence-transformers exports) the library
            # initialises it at random, which would make the frozen weights differ from run to run.
            model.pooler = None
        super().__init__(model)
        self.tokenizer = tokenizer
        self.pool_mode = pool
        self.width = model.config.hidden_size
        self.num_layers = len(layers)
        self.layer_dims = [self.width] * self.num_layers
        self.layer_stages = [0] * self.num_layers

    @property
    def num_features(self) -> int:
        return self.width

    @staticmethod
    def inputs(batch: dict) -> dict:
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def forward_features(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        prompter: Optional[Prompter] = None,
        token_type_ids: Optional[Tensor] = None,
    ) -> tuple[Tensor, Tensor]:
        """Last-layer tokens (B, 1 + P + L - 1, D) with the last prompts after [CLS], and their (B, N) mask."""
        x = self.model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        self.select_attention(x, x.shape[1])
        masks: dict[int, Optional[Tensor]] = {}  # the 4-D attention mask for each number of prompts

        def run_layer(layer: nn.Module, hidden: Tensor, num_prompts: int) -> Tensor:
            if num_prompts not in masks:
                masks[num_prompts] = create_bidirectional_mask(
                    config=self.model.config,
                    inputs_embeds=hidden,
                    attention_mask=mask_with_prompts(attention_mask, num_prompts, 1),
                )
            out = layer(hidden, masks[num_prompts])
            return out[0] if isinstance(out, tuple) else out  # transformers 4.x returned a tuple

        x, prompts = prompted_block_loop(
            self.model.encoder.layer,
            x,
            1,
            run_layer,
            prompter,
            attention_mask,
            layer_policy=self.layer_checkpoint_policy,
        )
        num_prompts = 0 if prompts is None else prompts.shape[1]
        return insert_prompts(x, prompts, 1), mask_with_prompts(attention_mask, num_prompts, 1)

    def pool(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """(B, D) summary: masked mean over tokens and prompts, or the [CLS] token."""
        return tokens[:, 0] if self.pool_mode == "cls" else masked_mean(tokens, mask)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, prompter: Optional[Prompter] = None) -> Tensor:
        return self.pool(*self.forward_features(input_ids, attention_mask, prompter))

    def signature(self) -> dict:
        """What a checkpoint must match: the architecture of the frozen model."""
        cfg = self.model.config
        return {
            "library": "transformers",
            "model_type": cfg.model_type,
            "hidden_size": cfg.hidden_size,
            "num_layers": self.num_layers,
            "vocab_size": cfg.vocab_size,
        }
