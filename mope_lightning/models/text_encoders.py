"""Prompted text encoders: a frozen transformers BERT-family model whose layer loop we own.

The library model stays untouched; we call its embedding module and then its layers through the shared prompted block
loop (`prompt_loop.py`), with the prompts inserted right after [CLS] (the reference's position). With no prompts the
loop reproduces `model(...).last_hidden_state` exactly (tests/test_text_encoder.py).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn
from transformers.masking_utils import create_bidirectional_mask

from mope_lightning.models.prompt_loop import Prompter, insert_prompts, mask_with_prompts, prompted_block_loop
from mope_lightning.models.prompted_transformer import PromptedTransformer, masked_mean

# Encoder families whose layers take (hidden_states, attention_mask) and whose embeddings take input_ids.
PROMPTABLE_TEXT_MODELS = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie")


class PromptedTextEncoder(PromptedTransformer):
    """A frozen BERT-family encoder prompted at every layer.

    Args:
        model: a transformers encoder (`BertModel`, `RobertaModel`, ...); it is frozen and put in eval mode.
        tokenizer: its tokenizer; used by the DataLoader's collate function, never inside `forward`.
        pool: the (B, D) summary of the last layer: "mean" over valid tokens and prompts, or "cls".
    """

    modality = "text"
    prompt_init_scale = 0.3  # the reference's uniform(-0.3, 0.3) for BERT prompts (mope_method.md §2.2)
    promptable_models = PROMPTABLE_TEXT_MODELS
    promptable_description = "BERT-family encoders ({models})"
    pools = ("mean", "cls")
    pool_error = "pool must be 'mean' or 'cls', got {pool!r}"

    def __init__(self, model: nn.Module, tokenizer=None, pool: str = "mean"):
        super().__init__(model, pool)
        if getattr(model, "pooler", None) is not None:
            # Never used (we pool ourselves). Where a checkpoint lacks it (sentence-transformers exports) the library
            # initialises it at random, which would make the frozen weights differ from run to run.
            model.pooler = None
        self.tokenizer = tokenizer

    @staticmethod
    def layer_stack(model: nn.Module) -> Optional[nn.ModuleList]:
        layers = getattr(getattr(model, "encoder", None), "layer", None)
        return layers if hasattr(model, "embeddings") else None

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

    def signature(self) -> dict:
        return {**super().signature(), "vocab_size": self.model.config.vocab_size}
