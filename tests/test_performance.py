"""Structural guards of the performance targets (issue 7); the timings themselves live in benchmarks/.

- The fusion module and the prompted block loop of every prompted encoder family compile with
  `torch.compile(fullgraph=True)`: no graph break, so no host-device synchronisation or Python branching on tensor
  values inside a step.
- The frozen, unprompted conditioning encoder runs once per distinct input over a whole training run.
- No `forward` tokenizes text or decodes images: both happen in the DataLoader.
"""

from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from mope_lightning.models import MoPE
from mope_lightning.models.classifier import PromptFusionClassifier
from mope_lightning.models.image_encoders import PooledImageEncoder
from mope_lightning.models.prompted_swin import PromptedSwin
from mope_lightning.models.prompted_vit import PromptedViT
from mope_lightning.cli.fit import run
from mope_lightning.training.build import build

from helpers import tiny_config


def _compiled_matches_eager(step, *inputs):
    torch._dynamo.reset()
    expected = step(*inputs)
    compiled = torch.compile(step, fullgraph=True, backend="eager")(*inputs)  # raises on any graph break
    for got, want in zip(compiled, expected):
        torch.testing.assert_close(got, want)


def _mope_for(encoder, cond_dim=12):
    # Every prompt kind, experts and a router at every layer; eval mode so routing noise does not differ.
    return MoPE(encoder.layer_dims, encoder.layer_stages, cond_dim, num_experts=4).eval()


def test_text_fusion_and_block_loop_compile_fullgraph(tiny_bert):
    mope = _mope_for(tiny_bert)

    def step(input_ids, attention_mask, cond):
        prompter = mope.bind(cond)
        tokens, mask = tiny_bert.forward_features(input_ids, attention_mask, prompter)
        routing = prompter.routing_probs()
        return tiny_bert.pool(tokens, mask), routing, prompter.importance_loss(routing)

    ids = torch.randint(5, 100, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    _compiled_matches_eager(step, ids, mask, torch.randn(3, 12))


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_image_fusion_and_block_loop_compile_fullgraph(family):
    if family == "vit":
        model = timm.create_model(
            "vit_base_patch16_224",
            pretrained=False,
            num_classes=0,
            img_size=32,
            patch_size=8,
            embed_dim=32,
            depth=2,
            num_heads=2,
        )
        encoder = PromptedViT(model, {"input_size": (3, 32, 32)}, "vit")
        images = torch.randn(2, 3, 32, 32)
    else:
        model = timm.create_model(
            "swin_tiny_patch4_window7_224",
            pretrained=False,
            num_classes=0,
            img_size=56,
            embed_dim=32,
            depths=(2, 2),
            num_heads=(2, 4),
            window_size=7,
        )
        encoder = PromptedSwin(model, {"input_size": (3, 56, 56)}, "swin")
        images = torch.randn(2, 3, 56, 56)
    mope = _mope_for(encoder)

    def step(images, cond):
        prompter = mope.bind(cond)
        tokens, _ = encoder.forward_features(images, prompter)
        routing = prompter.routing_probs()
        return encoder.pool(tokens), routing, prompter.importance_loss(routing)

    _compiled_matches_eager(step, images, torch.randn(2, 12))


def test_conditioning_encoder_runs_once_per_distinct_image_over_two_epochs(tmp_path, monkeypatch):
    images_seen = []
    forward = PooledImageEncoder.forward

    def counting_forward(self, images, *args, **kwargs):
        images_seen.append(images.shape[0])
        return forward(self, images, *args, **kwargs)

    monkeypatch.setattr(PooledImageEncoder, "forward", counting_forward)
    cfg = tiny_config(
        tmp_path,
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=null",
        "trainer.limit_val_batches=null",
        "trainer.limit_test_batches=null",
    )
    summary = run("fit", cfg)
    assert summary["metrics"]["test/acc"] >= 0.0
    # Distinct images the run reads (train and validation questions share the train folder's images), each of
    # which went through the frozen MobileNetV2 exactly once; the training and evaluation steps read the cache.
    assert sum(images_seen) == len(_distinct_images(cfg)) > 0


def _distinct_images(cfg) -> set:
    module, datamodule = build(cfg)
    datamodule.attach(module.net.input_spec())
    datamodule.setup("fit")
    datamodule.setup("test")
    return {split.files[i] for split in datamodule.datasets.values() for i in set(split.split.media_index)}


def test_no_forward_tokenizes_or_decodes_images(tmp_path, monkeypatch):
    inside_forward, calls, violations, outside = [], [], [], []
    forward = PromptFusionClassifier.forward

    def watched_forward(self, batch):
        inside_forward.append(True)
        calls.append(True)
        try:
            return forward(self, batch)
        finally:
            inside_forward.pop()

    def watch(owner, name):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            (violations if inside_forward else outside).append(f"{owner.__name__}.{name}")
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    monkeypatch.setattr(PromptFusionClassifier, "forward", watched_forward)
    for owner, name in ((PreTrainedTokenizerBase, "__call__"), (PreTrainedTokenizerBase, "encode"), (Image, "open")):
        watch(owner, name)
    # The image prompted (so images, not cached features, reach forward) and the text encoder prompted itself (so
    # tokens, not cached features, reach forward): both raw inputs pass through the model.
    cfg = tiny_config(
        tmp_path,
        "model.prompted=image",
        "model.pool=cls",
        "model.condition_prompts=2",
        "model.image_encoder.library=timm",
        "model.image_encoder.name=vit_base_patch16_224",
    )
    summary = run("fit", cfg)
    assert summary["metrics"]["test/acc"] >= 0.0
    assert calls, "the classifier's forward never ran"
    assert not violations
    # The watches see the data pipeline's own tokenization and decoding, so they would see them inside forward.
    assert {"PreTrainedTokenizerBase.__call__", "PIL.Image.open"} <= set(outside)


@pytest.mark.parametrize("family", ["text", "vit", "swin"])
def test_prompted_attention_uses_scaled_dot_product_attention(family, tiny_bert, monkeypatch):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    if family == "text":
        encoder, inputs = (
            tiny_bert,
            {"input_ids": torch.randint(5, 100, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long)},
        )
        attention_layers = encoder.num_layers
    elif family == "vit":
        model = timm.create_model(
            "vit_base_patch16_224",
            pretrained=False,
            num_classes=0,
            img_size=32,
            patch_size=8,
            embed_dim=32,
            depth=2,
            num_heads=2,
        )
        encoder, inputs, attention_layers = (
            PromptedViT(model, {"input_size": (3, 32, 32)}, "vit"),
            {"images": torch.randn(2, 3, 32, 32)},
            2,
        )
    else:
        model = timm.create_model(
            "swin_tiny_patch4_window7_224",
            pretrained=False,
            num_classes=0,
            img_size=56,
            embed_dim=32,
            depths=(2, 2),
            num_heads=(2, 4),
            window_size=7,
        )
        encoder, inputs, attention_layers = (
            PromptedSwin(model, {"input_size": (3, 56, 56)}, "swin"),
            {"images": torch.randn(2, 3, 56, 56)},
            4,
        )
    mope = _mope_for(encoder)
    encoder.forward_features(**inputs, prompter=mope.bind(torch.randn(2, 12)))
    assert len(calls) == attention_layers  # every prompted attention call went through SDPA


def test_converged_weights_give_no_subnormal_routing_probability_or_gradient(monkeypatch):
    """The default experiment's weights after 1,600 steps (benchmarks/assets/easy_vqa_trained) on a real validation
    batch: with the plain softmax, some routing probabilities and parameter gradients of a training step are
    subnormal floats (slow on x86 CPUs); with the router's softmax there are none, and the logits are the same."""
    import sys

    from mope_lightning.models import router

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench

    net = bench._trained_or_fresh(bench._config("default", ""), "mope_trained").train()
    batch = bench._real_batch(torch.device("cpu"))
    tiny = torch.finfo(torch.float32).tiny

    def subnormals(softmax) -> tuple[int, int, torch.Tensor]:
        monkeypatch.setattr(router, "softmax_without_subnormals", softmax)
        torch.manual_seed(0)  # the same routing noise and prompt dropout in both steps
        out = net(batch)
        loss = torch.nn.functional.cross_entropy(out.logits, batch["labels"]) + 0.01 * out.importance_loss
        grads = torch.autograd.grad(loss, [p for p in net.parameters() if p.requires_grad], allow_unused=True)
        grads = torch.cat([g.flatten() for g in grads if g is not None])
        probs = torch.stack(list(out.routing))
        count = lambda t: int(((t != 0) & (t.abs() < tiny)).sum())  # noqa: E731
        return count(probs), count(grads), out.logits.detach()

    without_subnormals = router.softmax_without_subnormals
    plain_probs, plain_grads, plain_logits = subnormals(lambda logits: logits.float().softmax(dim=-1))
    probs, grads, logits = subnormals(without_subnormals)
    assert plain_probs > 0 and plain_grads > 0  # what a converged router gave before
    assert probs == 0 and grads == 0
    torch.testing.assert_close(logits, plain_logits, atol=1e-6, rtol=1e-6)
