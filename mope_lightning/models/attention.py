"""Which attention kernel a library encoder runs: the library's own (PyTorch's fused `scaled_dot_product_attention`
where the library uses it) or the plain matmul-softmax-matmul path ("eager"), chosen per forward pass.

Why: on CPU, PyTorch's fused attention kernel in bf16 is several times slower than the plain path at the sequence
lengths our encoders see, most of all in its backward pass, where in fp32 the two are about even; at long sequences
(512 tokens) the fused kernel wins again. Profiling a bf16 training step of the default experiment showed that kernel
taking about 40% of the step (docs/guides/performance.md has the profile and its command). `auto` therefore runs the
plain path where the forward pass runs in bf16 on a CPU with short sequences, and the library's choice everywhere
else (GPUs, fp32, long sequences), so fp32 results are those of the library as loaded.

Both are the libraries' own code paths, switched through their public switches: transformers'
`set_attn_implementation` and timm's per-module `fused_attn` flag. No attention is reimplemented here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

ATTENTION_CHOICES = ("auto", "library", "eager")  # model.attention
# Above this many tokens the fused kernel is at least as fast as the plain path in bf16 on CPU (measured between
# 256 and 512 tokens: benchmarks/profile_step.py's notes in the performance guide).
PLAIN_MAX_TOKENS = 256


def runs_in_bf16(reference: Tensor) -> bool:
    """Whether operations on `reference`'s device run in bf16: an autocast region or bf16 weights."""
    device = reference.device.type
    autocast = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16
    return autocast or reference.dtype == torch.bfloat16


def attention_kernel(setting: str, reference: Tensor, tokens: int) -> str:
    """The kernel a forward pass over `tokens` tokens on `reference`'s device runs: "library" or "eager"."""
    if setting != "auto":
        return setting
    plain_pays = reference.device.type == "cpu" and runs_in_bf16(reference) and tokens <= PLAIN_MAX_TOKENS
    return "eager" if plain_pays else "library"


class AttentionSwitch:
    """Switches one library model between its own attention kernel and the plain path, remembering the library's
    choice: "sdpa" in transformers, `fused_attn=True` in timm's ViT blocks and in our prompted Swin window attention
    (timm's own Swin windows default to the plain path and stay there)."""

    def __init__(self, model: nn.Module):
        config = getattr(model, "config", None)
        self.model = model
        self.transformers_default = (
            getattr(config, "_attn_implementation", None) if hasattr(model, "set_attn_implementation") else None
        )
        self.timm_fused: list[nn.Module] | None = None  # found at the first switch: wrappers are installed later
        self.active = "library"

    def set(self, kernel: str) -> None:
        if kernel == self.active:
            return
        if self.timm_fused is None:
            self.timm_fused = [m for m in self.model.modules() if getattr(m, "fused_attn", False) is True]
        if self.transformers_default is not None:
            self.model.set_attn_implementation("eager" if kernel == "eager" else self.transformers_default)
        for module in self.timm_fused:
            module.fused_attn = kernel != "eager"
        self.active = kernel
