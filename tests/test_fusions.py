"""MoPE on any encoder pair, in either direction, and the baselines, on tiny random-init encoders."""

import pytest
import torch

from mope_lightning.cli import main
from mope_lightning.models.registry import FUSIONS
from mope_lightning.training.trainer_config import load_config
from mope_lightning.errors import ModelError
from mope_lightning.models import build_model
from mope_lightning.cli.fit import run
from mope_lightning.cli.params import count_parameters
from mope_lightning.training.build import build

from helpers import DEFAULT_EXP, EXPERIMENTS, TINY, tiny_config

PAPER = EXPERIMENTS / "overlays" / "paper_encoders.yaml"
VIT = ["model.image_encoder.library=timm", "model.image_encoder.name=vit_base_patch16_224"]
SWIN = ["model.image_encoder.library=timm", "model.image_encoder.name=swin_tiny_patch4_window7_224"]


def test_params_counts_the_paper_configuration_without_weights(capsys):
    # Swin-B 224 + BERT-base, 6 static + 6 dynamic prompts, 4 experts, 1 mapped token: the reference's tensors,
    # every block routed (mope_method.md §3), built on the meta device from the architectures alone.
    counts = count_parameters(load_config([DEFAULT_EXP, PAPER]))
    assert counts["prompts"] == 360_960
    assert counts["router"] == 171_760
    assert counts["mapper"] == 296_064 + 739_200
    assert counts["head"] == 1024 * 13 + 13
    assert 0.75 < counts["trainable_percent_of_frozen"] < 0.85
    assert main(["params", str(DEFAULT_EXP), str(PAPER)]) == 0
    assert "trainable / frozen" in capsys.readouterr().out


# pMoE needs its experts (test_pmoe.py); audio_only a text-audio experiment (test_audio.py)
@pytest.mark.parametrize("fusion", [f for f in FUSIONS if f not in ("pmoe", "audio_only", "video_only")])
def test_every_fusion_trains_and_tests(tmp_path, fusion):
    summary = run("fit", tiny_config(tmp_path, f"model.fusion={fusion}"))
    assert 0.0 <= summary["metrics"]["test/acc"] <= 1.0
    ckpt = torch.load(summary["best_checkpoint"], weights_only=True)
    module, _ = build(tiny_config(tmp_path, f"model.fusion={fusion}"))
    counts = module.net.parameter_counts()
    prompts_on = fusion in ("mope", "prompt_tuning", "prompt_tuning_shallow", "promptfuse")
    assert (counts["prompts"] > 0) == (fusion in ("mope", "prompt_tuning", "prompt_tuning_shallow"))
    assert (counts["router"] > 0) == (fusion == "mope")
    assert (counts["mapper"] > 0) == (fusion in ("mope", "promptfuse"))
    assert (counts["encoders"] > 0) == (fusion == "finetune")
    # Nothing is frozen in full fine-tuning: no trainable-to-frozen ratio (it logged 2.5e9% when divided by 1).
    assert ("trainable_percent_of_frozen" in counts) == (fusion != "finetune")
    if not prompts_on and fusion != "finetune":
        assert counts["trainable"] == counts["head"] + counts["missing"]
    # Fine-tuned encoders are trainable weights, so their checkpoint holds them; frozen ones are left out.
    has_encoders = any(k.startswith(("net.text.model.", "net.image.model.")) for k in ckpt["state_dict"])
    assert has_encoders == (fusion == "finetune")


@pytest.mark.parametrize("encoder", [VIT, SWIN], ids=["vit", "swin"])
def test_image_prompted_conditioned_on_cached_text_features(tmp_path, encoder):
    cfg = tiny_config(tmp_path, "model.prompted=image", "model.pool=cls", *encoder)
    module, datamodule = build(cfg)
    assert set(module.net.input_spec().cacheable) == {"text"}  # the frozen text encoder runs once per question
    summary = run("fit", cfg)
    assert "test/acc" in summary["metrics"]
    assert list((tmp_path / "cache" / "easy_vqa").glob("text-*.pt"))
    assert not list((tmp_path / "cache" / "easy_vqa").glob("image-*.pt"))  # the prompted images are decoded


def test_conditioning_encoder_prompted_itself_is_trained_and_not_cached(tmp_path):
    cfg = tiny_config(tmp_path, "model.prompted=image", "model.condition_prompts=2", *VIT)
    module, datamodule = build(cfg)
    assert module.net.input_spec().cacheable == {}
    datamodule.prepare_data()
    datamodule.setup("fit")
    # as the Trainer does: the hook makes floats of the decoded-image cache's uint8 pixels
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)
    out = module.net(batch)
    torch.nn.functional.cross_entropy(out.logits, batch["labels"]).backward()
    grads = [p.grad for p in module.net.condition_prompts.parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["model.image_encoder.library=timm", "model.image_encoder.name=vit_bsae_patch16_224"],
            "timm does not know 'vit_bsae_patch16_224' (close: vit_base_patch16_224",
        ),
        (["model.image_encoder.name=mobilenet_v9"], "torchvision has no classification model 'mobilenet_v9'"),
        (["model.prompted=image"], "model.image_encoder: torchvision 'mobilenet_v2' cannot be prompted"),
        (["model.mope.num_experts=0"], "model.mope.num_experts: dynamic prompts (dynamic_length=6) need at least one"),
        (["model.mope.prompted_layers=[0,9]"], "model.mope.prompted_layers: [0, 9] must be a non-empty subset of 0..1"),
        (
            ["model.text_encoder.name=no-such/text-model", "model.text_encoder.tiny=false"],
            "model.text_encoder: cannot load 'no-such/text-model'",
        ),
    ],
)
def test_bad_model_settings_fail_before_training(tmp_path, overrides, message):
    with pytest.raises(ModelError) as err:
        build(tiny_config(tmp_path, *overrides))
    assert message in str(err.value)


TINY_VIT_KWARGS = "model.image_encoder.kwargs={img_size: 32, patch_size: 8, depth: 2, embed_dim: 64, num_heads: 2}"


def test_local_timm_weights_load(tmp_path):
    import timm

    source = timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=32,
        patch_size=8,
        depth=2,
        embed_dim=64,
        num_heads=2,
    )
    weights = tmp_path / "vit.pth"
    torch.save(source.state_dict(), weights)
    cfg = tiny_config(
        tmp_path,
        *VIT,
        "model.image_encoder.tiny=false",
        TINY_VIT_KWARGS,
        f"model.image_encoder.checkpoint={weights}",
        "model.prompted=image",
    )
    module, _ = build(cfg)
    for name, tensor in source.state_dict().items():
        assert torch.equal(module.net.image.model.state_dict()[name], tensor), name


def test_a_checkpoint_file_whose_keys_do_not_fit(tmp_path):
    bad = tmp_path / "weights.pth"
    torch.save({"not.a.key": torch.zeros(3)}, bad)
    cfg = tiny_config(
        tmp_path, *VIT, "model.image_encoder.tiny=false", f"model.image_encoder.checkpoint={bad}", TINY_VIT_KWARGS
    )
    with pytest.raises(ModelError, match=r"timm could not build 'vit_base_patch16_224' from .*weights\.pth"):
        build(cfg)
    cfg = tiny_config(tmp_path, "model.image_encoder.tiny=false", f"model.image_encoder.checkpoint={bad}")
    with pytest.raises(ModelError, match=r"weights .*weights\.pth do not fit torchvision 'mobilenet_v2'"):
        build(cfg)


def test_reference_compat_mode(tmp_path):
    cfg = load_config([DEFAULT_EXP, TINY], SWIN + ["model.prompted=image", "model.compat.mode=reference"])
    net = build_model(cfg.model, 13)
    stages = net.image.layer_stages
    routed = [int(k) for k in net.fusion.layers]
    assert routed == [i for i in range(len(stages)) if i > 0 and stages[i] == stages[i - 1]]  # no stage start
    assert net.fusion.initial is not None  # the shallow prompt feeds the first block
    assert all(block.attn.window_major for block in net.image.blocks)
    net.eval()
    router = net.fusion.layers[str(routed[0])].router
    pooled, cond = torch.randn(4, router.self_proj.in_features), torch.randn(4, router.cross_proj.in_features)
    assert not torch.equal(router(pooled, cond), router(pooled, cond))  # noise at evaluation, as the reference
    mapper = net.fusion.mapper.eval()
    cond = torch.randn(8, mapper.shared[0].in_features)
    expected = mapper(cond)
    mapper.train()
    mapper.shared[1].training = True  # as Lightning restores a captured mode: by assignment, not train()
    for stage in mapper.stages:
        stage[2].p = 0.0  # (the mapped prompts' dropout is the only other train-mode difference)
    torch.testing.assert_close(mapper(cond), expected)  # statistics never come from the batch
    assert torch.equal(mapper.shared[1].running_mean, torch.zeros_like(mapper.shared[1].running_mean))


def test_default_fixes_are_on(tmp_path):
    cfg = load_config([DEFAULT_EXP, TINY], SWIN + ["model.prompted=image"])
    net = build_model(cfg.model, 13).eval()
    assert [int(k) for k in net.fusion.layers] == list(range(len(net.image.layer_stages)))
    assert net.fusion.initial is None and not any(block.attn.window_major for block in net.image.blocks)
    router = net.fusion.layers["0"].router
    pooled, cond = torch.randn(4, router.self_proj.in_features), torch.randn(4, router.cross_proj.in_features)
    assert torch.equal(router(pooled, cond), router(pooled, cond))
