"""Prompted timm ViT/DeiT and Swin on tiny random-init models: library parity, gradients, per-sample prompts."""

import pytest
import torch

from mope_lightning.models import MoPE

from helpers.models import tiny_swin, tiny_vit


@pytest.mark.parametrize(
    "name, kw",
    [
        ("vit_base_patch16_224", {}),
        ("vit_base_patch16_224", {"reg_tokens": 2}),
        ("deit_base_distilled_patch16_224", {}),
    ],
)
def test_vit_without_prompts_equals_timm(name, kw):
    encoder, model = tiny_vit(name, **kw)
    images = torch.randn(3, 3, 32, 32)
    tokens, _ = encoder.forward_features(images, prompter=lambda layer, pooled, carried: None)
    torch.testing.assert_close(tokens, model.forward_features(images), atol=1e-6, rtol=0)
    torch.testing.assert_close(encoder.pool(tokens), model(images), atol=1e-6, rtol=0)


def test_swin_without_prompts_equals_timm():
    encoder, reference = tiny_swin()
    images = torch.randn(3, 3, 56, 56)
    tokens, _ = encoder.forward_features(images, prompter=lambda layer, pooled, carried: None)
    torch.testing.assert_close(encoder.pool(tokens), reference(images), atol=1e-5, rtol=0)
    assert encoder.layer_dims == [32, 32, 64, 64] and encoder.layer_stages == [0, 0, 1, 1]


@pytest.mark.parametrize("make", [tiny_vit, tiny_swin])
def test_gradients_reach_the_prompts_only(make):
    encoder, _ = make()
    size = encoder.data_config["input_size"][-1]
    mope = MoPE(encoder.layer_dims, encoder.layer_stages, cond_dim=12, num_experts=3)
    tokens, _ = encoder.forward_features(torch.randn(2, 3, size, size), mope.bind(torch.randn(2, 12)))
    (tokens * torch.randn_like(tokens)).sum().backward()
    assert all(not p.requires_grad and p.grad is None for p in encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mope.parameters())


def test_swin_prompts_of_one_sample_reach_only_that_sample():
    encoder, _ = tiny_swin()
    mope = MoPE(encoder.layer_dims, encoder.layer_stages, cond_dim=12, num_experts=3).eval()
    images, cond = torch.randn(4, 3, 56, 56), torch.randn(4, 12)
    changed = cond.clone()
    changed[2] += 3.0
    with torch.no_grad():
        before = encoder(images, mope.bind(cond))
        after = encoder(images, mope.bind(changed))
        alone = encoder(images[2:3], mope.bind(changed[2:3]))
    moved = (after - before).abs().amax(dim=1)
    assert moved[2] > 1e-3
    assert torch.all(moved[[0, 1, 3]] < 1e-5), moved
    torch.testing.assert_close(after[2:3], alone, atol=1e-5, rtol=0)  # independent of the rest of the batch


def test_swin_reference_window_order_mixes_samples():
    encoder, _ = tiny_swin()
    encoder.set_window_major(True)  # the reference code's pairing: windows get other samples' prompts
    mope = MoPE(encoder.layer_dims, encoder.layer_stages, cond_dim=12, num_experts=3).eval()
    images, cond = torch.randn(4, 3, 56, 56), torch.randn(4, 12)
    changed = cond.clone()
    changed[2] += 3.0
    with torch.no_grad():
        moved = (encoder(images, mope.bind(changed)) - encoder(images, mope.bind(cond))).abs().amax(dim=1)
    assert torch.all(moved[[0, 1, 3]] > 1e-4), moved
