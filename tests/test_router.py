"""The multimodal router, the prompt banks and the importance loss."""

import pytest
import torch

from mope_lightning.models import MoPE, MultimodalRouter, importance_loss
from mope_lightning.models.router import NEGLIGIBLE_LOGIT_GAP, dropped_below, softmax_without_subnormals


def entropy(p):
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def test_probabilities_are_distributions_with_the_right_shape():
    router = MultimodalRouter(token_dim=16, cond_dim=12, num_experts=5).eval()
    probs = router(torch.randn(7, 16), torch.randn(7, 12))
    assert probs.shape == (7, 5)
    assert torch.all(probs >= 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(7))


def test_routing_is_softmax_of_query_times_frozen_keys_over_temperature():
    router = MultimodalRouter(16, 12, num_experts=4, self_dim=2, cross_dim=8, temperature=0.1).eval()
    pooled, cond = torch.randn(3, 16), torch.randn(3, 12)
    query = torch.cat([router.self_proj(pooled), router.cross_proj(cond)], -1)
    torch.testing.assert_close(router(pooled, cond), torch.softmax(query @ router.keys / 0.1, -1))
    # The keys are frozen orthogonal "routing embeddings": a buffer (saved, never trained); with 4 experts and a
    # 10-wide query, the 4 expert keys are orthonormal.
    assert "keys" in dict(router.named_buffers()) and "keys" not in dict(router.named_parameters())
    torch.testing.assert_close(router.keys.T @ router.keys, torch.eye(4), atol=1e-5, rtol=0)


def test_lower_temperature_sharpens_routing():
    sharp = MultimodalRouter(16, 12, 4, temperature=0.05).eval()
    soft = MultimodalRouter(16, 12, 4, temperature=5.0).eval()
    soft.load_state_dict(sharp.state_dict())
    pooled, cond = torch.randn(64, 16), torch.randn(64, 12)
    assert entropy(sharp(pooled, cond)).mean() < entropy(soft(pooled, cond)).mean()


def test_noise_only_in_training():
    router = MultimodalRouter(16, 12, 4, noise_std=0.5)
    pooled, cond = torch.randn(8, 16), torch.randn(8, 12)
    router.train()
    assert not torch.equal(router(pooled, cond), router(pooled, cond))
    router.eval()
    torch.testing.assert_close(router(pooled, cond), router(pooled, cond), atol=0, rtol=0)


def test_top_k_keeps_k_experts():
    router = MultimodalRouter(16, 12, 6, top_k=2).eval()
    probs = router(torch.randn(10, 16), torch.randn(10, 12))
    assert torch.all((probs > 0).sum(-1) == 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(10))


@pytest.mark.parametrize(
    "probs, expected",
    [
        # S = [1.6, 0.4]: mean 1, unbiased variance (0.36 + 0.36) / 1 = 0.72, CV^2 = 0.72 > 0.1
        ([[0.9, 0.1], [0.7, 0.3]], 0.72),
        # S = [1.5, 0.9, 0.6]: mean 1, unbiased variance (0.25 + 0.01 + 0.16) / 2 = 0.21
        ([[0.5, 0.3, 0.2]] * 3, 0.21),
        # S = [1.1, 0.9]: CV^2 = 0.02, below the 0.1 threshold, so no loss
        ([[0.5, 0.5], [0.6, 0.4]], 0.0),
    ],
)
def test_importance_loss_hand_worked(probs, expected):
    assert importance_loss(torch.tensor(probs), threshold=0.1).item() == pytest.approx(expected, abs=1e-6)


def test_importance_loss_is_zero_for_one_expert_and_balanced_routing():
    assert importance_loss(torch.ones(4, 1)).item() == 0.0
    assert importance_loss(torch.full((4, 3), 1 / 3)).item() == pytest.approx(0.0, abs=1e-7)


def test_gradient_reaches_every_expert_and_the_router_under_soft_routing():
    mope = MoPE([16, 16, 16], [0, 0, 0], cond_dim=12, num_experts=4, static_length=2, dynamic_length=3, mapped_length=1)
    prompter = mope.bind(torch.randn(5, 12))
    prompts = [prompter(i, torch.randn(5, 16)) for i in range(3)]
    assert all(p.shape == (5, 2 + 3 + 1, 16) for p in prompts)
    loss = sum((p * torch.randn_like(p)).sum() for p in prompts) + prompter.importance_loss()
    loss.backward()
    for i in range(3):
        layer = mope.layers[str(i)]
        per_expert = layer.experts.grad.abs().sum(dim=(1, 2))
        assert torch.all(per_expert > 0), f"layer {i}: an expert got no gradient"
        assert layer.static.grad.abs().sum() > 0
        assert layer.router.self_proj.weight.grad.abs().sum() > 0
        assert layer.router.cross_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in mope.mapper.parameters())
    assert prompter.routing_probs().shape == (5, 3, 4)


def test_prompt_kinds_and_layers_can_be_switched_off():
    static_only = MoPE([8, 8], [0, 0], cond_dim=4, static_length=3, dynamic_length=0, mapped_length=0)
    prompter = static_only.bind(torch.randn(2, 4))
    assert prompter(0, torch.randn(2, 8)).shape == (2, 3, 8)
    assert prompter.routing_probs() is None and prompter.importance_loss().item() == 0.0
    partial = MoPE([8, 8, 8], [0, 0, 0], cond_dim=4, prompted_layers=[1])
    prompter = partial.bind(torch.randn(2, 4))
    assert prompter(0, torch.randn(2, 8)) is None and prompter(1, torch.randn(2, 8)) is not None
    with pytest.raises(ValueError, match="at least one prompt kind"):
        MoPE([8], [0], cond_dim=4, static_length=0, dynamic_length=0, mapped_length=0)


def _subnormal(t: torch.Tensor) -> int:
    return int(((t != 0) & (t.abs() < torch.finfo(torch.float32).tiny)).sum())


def test_a_converged_router_gives_no_subnormal_probability_or_gradient():
    """Logit gaps of a converged router (here 30 to 95, after the temperature): the plain softmax yields subnormal
    probabilities (e^-95 ~ 5e-42), and x86 CPUs process those many times slower. The router's softmax gives 0 beyond
    the negligible gap and the exact softmax below it, and its backward holds no subnormal value either."""
    logits = torch.tensor([[0.0, -30.0, -60.0, -95.0], [5.0, 4.0, -50.0, -88.0]], requires_grad=True)
    plain = logits.detach().softmax(-1)
    assert _subnormal(plain) > 0  # what the router avoids
    probs = softmax_without_subnormals(logits)
    assert _subnormal(probs) == 0
    gap = logits.detach().amax(-1, keepdim=True) - logits.detach()
    assert torch.equal(probs[gap > NEGLIGIBLE_LOGIT_GAP], torch.zeros(int((gap > NEGLIGIBLE_LOGIT_GAP).sum())))
    assert torch.allclose(probs, plain, rtol=1e-6, atol=dropped_below * 4)  # the mass dropped is below 4 x 1.1e-19
    assert probs[0, 1] > 0 and probs[0, 1] == plain[0, 1]  # e^-30 (9e-14) is kept, exactly
    (probs * torch.randn(2, 4)).sum().backward()
    assert _subnormal(logits.grad) == 0
    assert torch.equal(logits.grad[gap > NEGLIGIBLE_LOGIT_GAP], torch.zeros(int((gap > NEGLIGIBLE_LOGIT_GAP).sum())))


def test_the_router_uses_the_subnormal_free_softmax():
    router = MultimodalRouter(token_dim=4, cond_dim=3, num_experts=3, self_dim=1, cross_dim=2, temperature=0.01)
    router.eval()
    with torch.no_grad():  # a query of norm ~10 over temperature 0.01 spreads the logits by hundreds
        router.cross_proj.weight.mul_(30)
    pooled, cond = torch.randn(64, 4), torch.randn(64, 3)
    probs = router(pooled, cond)
    assert _subnormal(probs) == 0 and (probs == 0).any()
    assert torch.allclose(probs.sum(-1), torch.ones(64))
