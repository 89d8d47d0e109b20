"""The attention kernel switch (models/attention.py): the library's kernel in fp32, the plain path in bf16 on CPU,
both computing the same attention."""

import pytest
import torch
from transformers import BertConfig, BertModel

from mope_lightning.models import MoPE, PromptedTextEncoder
from mope_lightning.models.attention import PLAIN_MAX_TOKENS, attention_kernel

from helpers.models import tiny_swin, tiny_vit


def tiny_bert_encoder():
    torch.manual_seed(0)
    model = BertModel(
        BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
        add_pooling_layer=False,
    )
    return PromptedTextEncoder(model)


def test_auto_picks_the_plain_path_only_for_short_bf16_sequences_on_cpu():
    x = torch.zeros(2, 3)
    assert attention_kernel("auto", x, 40) == "library"  # fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attention_kernel("auto", x, 40) == "eager"
        assert attention_kernel("auto", x, PLAIN_MAX_TOKENS + 1) == "library"  # the fused kernel wins there
        assert attention_kernel("library", x, 40) == "library"  # an explicit setting is kept
    assert attention_kernel("auto", x.bfloat16(), 40) == "eager"  # bf16 weights, no autocast
    assert attention_kernel("eager", x, 40) == "eager"


def test_text_encoder_switches_kernel_with_precision_and_back():
    encoder = tiny_bert_encoder()
    ids, mask = torch.randint(5, 100, (3, 9)), torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    library = encoder.model.config._attn_implementation
    assert library == "sdpa"
    fp32, _ = encoder.forward_features(ids, mask)
    assert encoder.model.config._attn_implementation == library
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain, _ = encoder.forward_features(ids, mask)
        assert encoder.model.config._attn_implementation == "eager"
        encoder.attention = "library"
        fused, _ = encoder.forward_features(ids, mask)
        assert encoder.model.config._attn_implementation == library
    torch.testing.assert_close(plain.float(), fused.float(), atol=0.05, rtol=0.05)  # bf16 rounding only
    encoder.attention = "auto"
    again, _ = encoder.forward_features(ids, mask)  # fp32 again: the library's kernel, the same output as before
    assert encoder.model.config._attn_implementation == library
    assert torch.equal(again, fp32)


@pytest.mark.parametrize("make", [tiny_vit, tiny_swin])
def test_prompted_vision_paths_agree_in_fp32(make):
    encoder, _ = make()
    size = encoder.data_config["input_size"][-1]
    torch.manual_seed(1)
    mope = MoPE(encoder.layer_dims, encoder.layer_stages, cond_dim=12, num_experts=3).eval()
    images, cond = torch.randn(2, 3, size, size), torch.randn(2, 12)
    with torch.no_grad():
        fused = encoder(images, mope.bind(cond))
        encoder.attention = "eager"
        plain = encoder(images, mope.bind(cond))
    switched = [m for m in encoder.model.modules() if hasattr(m, "fused_attn") and m is not encoder]
    assert switched and not any(m.fused_attn for m in switched)  # the plain path really ran
    torch.testing.assert_close(plain, fused, atol=1e-5, rtol=1e-5)
    encoder.attention = "auto"
    with torch.no_grad():
        encoder(images, mope.bind(cond))
    assert any(m.fused_attn for m in switched)  # back to the fused kernel the module started with


def test_bf16_cpu_training_step_runs_the_plain_path():
    encoder = tiny_bert_encoder()
    mope = MoPE(encoder.layer_dims, encoder.layer_stages, cond_dim=12, num_experts=3)
    ids, mask = torch.randint(5, 100, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = encoder.forward_features(ids, mask, mope.bind(torch.randn(2, 12)))
    out.float().sum().backward()
    assert encoder.model.config._attn_implementation == "eager"
    assert all(p.grad is not None for p in mope.parameters() if p.requires_grad)


def test_model_attention_setting_reaches_every_encoder(tmp_path):
    from mope_lightning.models import build_model
    from mope_lightning.models.backbone import Backbone

    from helpers import tiny_config

    cfg = tiny_config(tmp_path, "model.attention=library")
    backbones = [m for m in build_model(cfg.model, 13, weights=False).modules() if isinstance(m, Backbone)]
    assert len(backbones) >= 2 and all(m.attention == "library" for m in backbones)
