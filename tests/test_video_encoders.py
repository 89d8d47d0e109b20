"""The prompted video transformer (transformers' VideoMAE, random init): parity with the library model, prompts that
change the output and alone receive gradients, clip shapes, and building it from an encoder config section."""

import pytest
import torch
from hypothesis import given, settings, strategies as st
from omegaconf import OmegaConf
from transformers import BertConfig, BertModel, VideoMAEConfig, VideoMAEModel

from mope_lightning.config.model import EncoderConfig
from mope_lightning.errors import ModelError
from mope_lightning.models import MoPE
from mope_lightning.models.encoder_factory import build_encoder
from mope_lightning.models.video_encoders import TINY_VIDEO, VIDEO_CHECKPOINT, PromptedVideoEncoder


def tiny_model(use_mean_pooling: bool = True) -> VideoMAEModel:
    torch.manual_seed(0)
    return VideoMAEModel(VideoMAEConfig(**TINY_VIDEO, use_mean_pooling=use_mean_pooling)).eval()


def clips(batch: int = 2) -> torch.Tensor:
    """A batch of normalised clips (B, T, 3, H, W) at the miniature's size: T=4 frames of 32 x 32."""
    torch.manual_seed(1)
    return torch.randn(batch, TINY_VIDEO["num_frames"], 3, TINY_VIDEO["image_size"], TINY_VIDEO["image_size"])


def tiny_mope(encoder: PromptedVideoEncoder, cond_dim: int = 12) -> MoPE:
    torch.manual_seed(2)
    return MoPE(encoder.layer_dims, encoder.layer_stages, cond_dim=cond_dim, num_experts=3)


@pytest.mark.parametrize("use_mean_pooling", [True, False])  # False: the library's final layernorm runs too
def test_no_prompts_equals_the_library(use_mean_pooling):
    model = tiny_model(use_mean_pooling)
    encoder = PromptedVideoEncoder(model)
    video = clips()
    with torch.no_grad():
        expected = model(video).last_hidden_state
        ours, mask = encoder.forward_features(video)
        # A prompter that declines every layer is the same as no prompter.
        declined, _ = encoder.forward_features(video, prompter=lambda layer, pooled, carried: None)
        pooled = encoder(video)
    assert mask is None and expected.shape == (2, 8, TINY_VIDEO["hidden_size"])
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(declined, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(pooled, expected.mean(1), atol=1e-6, rtol=0)


def test_prompts_change_the_output_and_each_clip_gets_its_own():
    encoder = PromptedVideoEncoder(tiny_model())
    mope = tiny_mope(encoder).eval()  # no routing noise: a clip's prompts depend on its own condition only
    video, cond = clips(), torch.randn(2, 12)
    with torch.no_grad():
        tokens, _ = encoder.forward_features(video, prompter=mope.bind(cond))
        alone = encoder(video[1:], prompter=mope.bind(cond[1:]))
        bare = encoder(video)
    assert tokens.shape == (2, mope.num_prompts + 8, encoder.num_features)
    prompted = encoder.pool(tokens)
    assert ((prompted - bare).abs().amax(dim=1) > 1e-3).all()  # both clips' summaries move
    torch.testing.assert_close(prompted[1:], alone, atol=1e-5, rtol=0)
    # A mask leaves tokens out of the mean: here the prompts, which leaves the mean over the clip's tokens.
    clip_only = torch.ones(tokens.shape[:2]).index_fill(1, torch.arange(mope.num_prompts), 0)
    torch.testing.assert_close(encoder.pool(tokens, clip_only), tokens[:, mope.num_prompts :].mean(1))


@pytest.mark.parametrize("checkpointed", [0, 2])
def test_gradients_reach_the_prompts_only(checkpointed):
    encoder = PromptedVideoEncoder(tiny_model(use_mean_pooling=False))
    encoder.checkpointed_layers = checkpointed  # recomputed layers give the prompts the same gradients
    mope = tiny_mope(encoder)
    out = encoder(clips(), prompter=mope.bind(torch.randn(2, 12)))
    (out * torch.randn_like(out)).sum().backward()  # a random projection: the sum of layer-normed rows is 0
    assert all(not p.requires_grad and p.grad is None for p in encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mope.parameters())


def test_checkpointing_keeps_the_gradients():
    grads = []
    for checkpointed in (0, 2):
        encoder = PromptedVideoEncoder(tiny_model())
        encoder.checkpointed_layers = checkpointed
        mope = tiny_mope(encoder).eval()
        out = encoder(clips(), prompter=mope.bind(torch.ones(2, 12)))
        out.square().sum().backward()
        grads.append([p.grad for p in mope.parameters()])
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(recomputed, plain, atol=1e-6, rtol=1e-5)


@settings(max_examples=20)
@given(
    frames=st.integers(1, 6),
    channels=st.sampled_from([1, 3]),
    height=st.sampled_from([16, 32, 48]),
    width=st.sampled_from([16, 32]),
)
def test_a_clip_of_another_shape_is_refused_by_name(frames, channels, height, width):
    encoder = PromptedVideoEncoder(tiny_model())
    video = torch.zeros(1, frames, channels, height, width)
    if (frames, channels, height, width) == (4, 3, 32, 32):
        assert encoder(video).shape == (1, encoder.num_features)
        return
    with pytest.raises(ValueError, match=r"video: expected clips of shape \(batch, 4, 3, 32, 32\).*sample 4 frames"):
        encoder(video)


def test_other_models_are_refused():
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37))
    with pytest.raises(TypeError, match="cannot prompt video encoder of type 'bert'.*videomae"):
        PromptedVideoEncoder(bert)
    with pytest.raises(ValueError, match="pool"):
        PromptedVideoEncoder(tiny_model(), pool="cls")


def section(**values):
    return OmegaConf.structured(EncoderConfig(**values))


def test_built_from_a_config_section_with_its_preprocessing():
    encoder = build_encoder("video", None, cfg=section(library="transformers", name=VIDEO_CHECKPOINT, tiny=True))
    assert isinstance(encoder, PromptedVideoEncoder) and encoder.frozen and not encoder.model.training
    assert not any(p.requires_grad for p in encoder.parameters())
    assert encoder.num_layers == 2 and encoder.num_features == 32 and encoder.num_frames == 4
    # The miniature's own size; the library's default processor (no files): shortest edge 224, centre crop 224.
    assert encoder.data_config == {
        "input_size": (3, 32, 32),
        "num_frames": 4,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    assert encoder.signature()["num_frames"] == 4 and encoder.signature()["model_type"] == "videomae"
    assert encoder(clips()).shape == (2, 32)


def test_a_section_naming_no_video_model_names_its_key(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match=r"model\.video_encoder: cannot load '.*empty'"):
        build_encoder("video", None, cfg=section(name=str(empty), pretrained=False))
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37).save_pretrained(
        tmp_path / "bert"
    )
    with pytest.raises(ModelError, match=r"model\.video_encoder\.name: cannot prompt video encoder of type 'bert'"):
        build_encoder("video", None, cfg=section(name=str(tmp_path / "bert"), pretrained=False))
