"""pMoE: frozen expert encoders prompted together through learnable dispatchers (issue 8)."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from mope_lightning.cli import main
from mope_lightning.config.schema import EncoderConfig
from mope_lightning.training.trainer_config import load_config
from mope_lightning.errors import ModelError
from mope_lightning.models import MoPE, PMoE, build_model, build_text_encoder
from mope_lightning.models.dispatcher import aligned_layer
from mope_lightning.cli.fit import run

from helpers import EXPERIMENTS, MINILM, TINY

PMOE = EXPERIMENTS / "easy_vqa_pmoe.yaml"


def tiny_expert(layers, width, heads=2):
    cfg = EncoderConfig(
        name=MINILM,
        pretrained=False,
        kwargs={
            "hidden_size": width,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "intermediate_size": 2 * width,
        },
    )
    return build_text_encoder(OmegaConf.structured(cfg))


@pytest.fixture(scope="module")
def experts():
    torch.manual_seed(0)
    return [tiny_expert(2, 32), tiny_expert(1, 48)]  # different depths and widths


def text_batch(batch=4, tokens=7):
    ids = torch.randint(1000, 5000, (batch, tokens))
    mask = torch.ones(batch, tokens, dtype=torch.long)
    mask[1, 4:] = 0
    return ids, mask


def run_experts(pmoe, experts, cond, ids, mask):
    state = pmoe.bind(cond, ids.shape[0], ids.device)
    pooled = [e.pool(*e.forward_features(ids, mask, prompter=state.prompter(k))) for k, e in enumerate(experts)]
    return pooled, state


@pytest.mark.parametrize("granularity", ["expert", "token"])
def test_dispatch_weights_are_a_distribution_per_expert_and_layer(experts, granularity):
    pmoe = PMoE([e.layer_dims for e in experts], cond_dim=10, granularity=granularity)
    ids, mask = text_batch()
    _, state = run_experts(pmoe, experts, torch.randn(4, 10), ids, mask)
    gates = state.routing_probs()
    assert gates.shape == (4, 2 + 1, 3)  # (batch, Σ depths, [carried, EPT_0, EPT_1])
    assert (gates >= 0).all()
    torch.testing.assert_close(gates.sum(-1), torch.ones(4, 3))
    assert pmoe.bridges.keys() == {"0_1", "1_0"}  # widths 32 and 48 need bridges both ways
    # The dispatchers see the image feature: a different condition gives different gates.
    _, other = run_experts(pmoe, experts, torch.randn(4, 10), ids, mask)
    assert not torch.allclose(other.routing_probs(), gates)


def test_depths_are_aligned_by_relative_position():
    assert [aligned_layer(layer, 6, 3) for layer in range(6)] == [0, 1, 1, 2, 2, 2]
    assert [aligned_layer(layer, 3, 6) for layer in range(3)] == [0, 2, 4]
    assert [aligned_layer(layer, 4, 4) for layer in range(4)] == [0, 1, 2, 3]


def test_identity_dispatch_is_independent_deep_prompt_tuning(experts):
    pmoe = PMoE([e.layer_dims for e in experts], cond_dim=10, dispatch="identity")
    ids, mask = text_batch()
    pooled, state = run_experts(pmoe, experts, torch.randn(4, 10), ids, mask)
    for k, expert in enumerate(experts):
        # VPT-deep of expert k alone: its own static prompts at every layer, nothing from the other expert.
        vpt = MoPE(expert.layer_dims, expert.layer_stages, 0, static_length=6, dynamic_length=0, mapped_length=0)
        with torch.no_grad():
            for layer in range(expert.num_layers):
                vpt.layers[str(layer)].static.copy_(pmoe.prompts[k][layer].static)
        alone = expert.pool(*expert.forward_features(ids, mask, prompter=vpt.bind(torch.zeros(4, 0))))
        torch.testing.assert_close(pooled[k], alone, rtol=0, atol=0)
    own = state.routing_probs().argmax(-1)
    assert own.tolist() == [[1, 1, 2]] * 4  # rows (expert 0: 2 layers, expert 1: 1 layer) pick their own EPTs


def test_gradients_reach_prompts_dispatchers_and_head_only(tmp_path):
    cfg = load_config([PMOE, TINY], ["model.pmoe.dynamic_length=2"])
    net = build_model(cfg.model, num_classes=13)
    ids, mask = text_batch(batch=5)
    # one sample lost its image: the learned missing embedding stands in for its conditioning feature
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "image_features": torch.randn(5, net.image.num_features),
        "labels": torch.randint(0, 13, (5,)),
        "image_missing": torch.tensor([True, False, False, False, False]),
    }
    net.train()
    out = net(batch)
    (torch.nn.functional.cross_entropy(out.logits, batch["labels"]) + out.importance_loss).backward()
    groups = net.param_groups()
    assert groups["prompts"] and groups["dispatcher"] and groups["head"] and groups["router"] and groups["mapper"]
    assert groups["missing"]
    assert not groups["encoders"]
    trained = {id(p) for params in groups.values() for p in params}
    for name, param in net.named_parameters():
        if id(param) in trained:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert not param.requires_grad and param.grad is None, name
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == sum(
        p.numel() for params in groups.values() for p in params
    )


def test_no_experts_is_an_error():
    cfg = load_config([PMOE, TINY], ["model.pmoe.experts=[]"])
    with pytest.raises(ModelError, match="model.pmoe.experts: list the expert encoders"):
        build_model(cfg.model, num_classes=13)


def test_experts_of_another_modality_are_an_error(tmp_path):
    extra = tmp_path / "mixed.yaml"
    extra.write_text(
        "model:\n  pmoe:\n    experts:\n      - {library: transformers, name: " + MINILM + "}\n"
        "      - {library: timm, name: vit_base_patch16_224}\n"
    )
    with pytest.raises(
        ModelError,
        match=r"model\.pmoe\.experts\[1\]: timm 'vit_base_patch16_224' is an image "
        "encoder, but this pMoE's experts are text encoders",
    ):
        build_model(load_config([PMOE, TINY, extra]).model, num_classes=13)


def test_an_expert_that_cannot_be_prompted_by_pmoe(tmp_path):
    extra = tmp_path / "swin.yaml"
    extra.write_text(
        "model:\n  prompted: image\n  pmoe:\n    experts:\n"
        "      - {library: timm, name: vit_base_patch16_224}\n"
        "      - {library: timm, name: swin_tiny_patch4_window7_224}\n"
    )
    with pytest.raises(ModelError, match=r"model\.pmoe\.experts\[1\]: .*cannot be a pMoE expert"):
        build_model(load_config([PMOE, TINY, extra]).model, num_classes=13)


def test_onnx_expert_is_converted_once_and_matches_onnxruntime(tmp_path, monkeypatch):
    from mope_lightning.models import onnx_convert

    monkeypatch.setenv("MOPE_MODEL_CACHE", str(tmp_path / "models"))
    path = onnx_convert.paraphrase_minilm_l3_path()
    report = json.loads((path / "conversion.json").read_text())
    assert report["max_abs_diff_vs_onnxruntime"] < 1e-4
    stamp = (path / "conversion.json").stat().st_mtime_ns
    assert onnx_convert.paraphrase_minilm_l3_path() == path  # reused, not converted again
    assert (path / "conversion.json").stat().st_mtime_ns == stamp
    l3 = EncoderConfig(name="sentence-transformers/paraphrase-MiniLM-L3-v2")
    expert = build_text_encoder(OmegaConf.structured(l3))
    assert expert.num_layers == 3 and expert.width == 384 and expert.tokenizer is not None


def test_a_conversion_that_differs_from_onnxruntime_is_an_error(tmp_path, monkeypatch):
    from mope_lightning.models import onnx_convert

    monkeypatch.setenv("MOPE_MODEL_CACHE", str(tmp_path / "models"))
    convert = onnx_convert.convert

    def wrong_convert(source):
        model, tokenizer = convert(source)
        with torch.no_grad():
            model.encoder.layer[0].attention.self.query.weight.transpose_(0, 1)  # a classic conversion mistake
        return model, tokenizer

    monkeypatch.setattr(onnx_convert, "convert", wrong_convert)
    with pytest.raises(ModelError, match="differs from onnxruntime's output"):
        onnx_convert.paraphrase_minilm_l3_path()
    assert not (tmp_path / "models" / onnx_convert.MODEL_NAME).exists()  # nothing half-made is left to load


def test_pmoe_trains_and_its_dispatch_is_analyzed(tmp_path):
    overrides = [
        f"trainer.default_root_dir={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.train_images=40",
        "data.test_images=10",
        "trainer.enable_progress_bar=false",
    ]
    summary = run("fit", load_config([PMOE, TINY], overrides))
    assert 0.0 <= summary["metrics"]["test/acc"] <= 1.0
    log_dir = next((tmp_path / "runs").rglob("routing_val.json")).parent
    routing = json.loads((log_dir / "routing_val.json").read_text())
    assert routing["expert_labels"] == ["carried", "all-MiniLM-L6-v2", "paraphrase-MiniLM-L3-v2"]
    assert routing["layer_labels"][0] == "all-MiniLM-L6-v2 L0" and len(routing["layer_labels"]) == 2 + 2
    out = tmp_path / "report"
    assert main(["analyze", str(PMOE), str(TINY), *overrides, f"ckpt={summary['best_checkpoint']}", f"out={out}"]) == 0
    assert (out / "layer_expert.png").is_file() and "paraphrase-MiniLM-L3-v2 L1" in (out / "summary.md").read_text()


def test_image_experts_of_different_widths_and_depths(tmp_path):
    extra = tmp_path / "vits.yaml"
    extra.write_text(
        "model:\n  prompted: image\n  pool: cls\n  pmoe:\n    experts:\n"
        "      - {library: timm, name: vit_base_patch16_224}\n"
        "      - {library: timm, name: deit_tiny_patch16_224, kwargs: {embed_dim: 48, depth: 1}}\n"
    )
    net = build_model(load_config([PMOE, TINY, extra]).model, num_classes=13)
    assert set(net.input_spec().cacheable) == {"text"}  # the frozen text encoder conditions, from the cache
    widths = [e.num_features for e in net.experts]
    assert widths[0] != widths[1] and net.pmoe.depths[0] != net.pmoe.depths[1]
    size = net.image.data_config["input_size"][-1]
    batch = {"images": torch.randn(2, 3, size, size), "text_features": torch.randn(2, net.text.num_features)}
    out = net(batch)
    assert out.logits.shape == (2, 13) and out.routing.shape == (2, sum(net.pmoe.depths), 3)
    out.logits.sum().backward()
    assert all(p.grad is not None for p in net.pmoe.bridges.parameters())


def test_the_converted_expert_is_the_same_frozen_model_every_time():
    # Its export has no pooler; a randomly initialised one made checkpoints refuse to load in the next process.
    from mope_lightning.models.sources import weights_digest

    cfg = OmegaConf.structured(EncoderConfig(name="sentence-transformers/paraphrase-MiniLM-L3-v2"))
    digests = {weights_digest(build_text_encoder(cfg)) for _ in range(2)}
    assert len(digests) == 1
