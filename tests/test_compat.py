"""The reference code's training-time dropouts, each behind its `model.compat` flag (mope_method.md §8): on, the
dropout acts in training only; off, training and evaluation compute the same function."""

import pytest
import torch
from lightning.pytorch.utilities.model_helpers import _ModuleMode
from torch import nn

from mope_lightning.cli import main
from mope_lightning.training.trainer_config import load_config
from mope_lightning.errors import ConfigError
from mope_lightning.models import build_model
from mope_lightning.models.backbone import Backbone
from mope_lightning.models.factory import Compat

from helpers import DEFAULT_EXP, TINY

# The reference's structure on tiny encoders: a Swin prompted, conditioned on a BERT with its own prompts. No mapped
# prompts (their dropout is always on, as in the reference) and no routing noise, so that with the flags off nothing
# random is left in a training forward.
REFERENCE_SHAPE = [
    "model.image_encoder.library=timm",
    "model.image_encoder.name=swin_tiny_patch4_window7_224",
    "model.prompted=image",
    "model.condition_prompts=2",
    "model.mope.mapped_length=0",
    "model.mope.router.noise_std=0",
    "model.compat.skip_first_block_prompt=true",
    "model.compat.window_prompt_order=reference",
    "model.compat.mapper_bn_frozen=true",
]
FLAGS = ("initial_prompt_dropout", "condition_prompt_dropout", "condition_encoder_dropout")


def _net(*overrides: str):
    torch.manual_seed(0)
    cfg = load_config([DEFAULT_EXP, TINY], [*REFERENCE_SHAPE, *overrides])
    return build_model(cfg.model, 13, weights=False)


def _batch(net, size: int = 3) -> dict:
    generator = torch.Generator().manual_seed(1)
    image = net.image.data_config["input_size"]
    ids = torch.randint(1000, 20000, (size, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # padding too
    return {"input_ids": ids, "attention_mask": mask, "images": torch.randn(size, *image, generator=generator)}


@pytest.fixture(scope="module")
def without_flags():
    """The batch and the logits of the model with every flag off, in training (where it is deterministic)."""
    net = _net().train()
    batch = _batch(net)
    training = net(batch).logits
    torch.testing.assert_close(net(batch).logits, training, rtol=0, atol=0)
    torch.testing.assert_close(net.eval()(batch).logits, training, rtol=0, atol=0)  # and equal to evaluation
    return batch, training


@pytest.mark.parametrize("flag", FLAGS)
def test_each_flag_turns_on_its_dropout_in_training_only(flag, without_flags):
    batch, plain = without_flags
    net = _net(f"model.compat.{flag}=true").train()
    first, second = net(batch).logits, net(batch).logits
    assert not torch.allclose(first, second)  # a new dropout mask each call
    net.eval()
    evaluated = net(batch).logits
    assert not torch.allclose(first, evaluated)
    torch.testing.assert_close(net(batch).logits, evaluated, rtol=0, atol=0)  # evaluation is deterministic
    torch.testing.assert_close(evaluated, plain)  # same weights: the flag changes training only


def test_reference_mode_turns_on_every_flag_and_the_dropouts_sit_where_the_reference_has_them():
    assert Compat.from_config(load_config([DEFAULT_EXP]).model.compat) == Compat()
    assert all(
        vars(Compat.from_config(load_config([DEFAULT_EXP], ["model.compat.mode=reference"]).model.compat)).values()
    )
    net = _net("model.compat.mode=reference")
    p = net.fusion.mapper.stages[0][2].p if net.fusion.mapper is not None else 0.1
    assert net.fusion.initial_dropout.p == p and net.fusion.layer_dropout.p == 0  # the Swin side: the shallow prompt
    assert net.condition_prompts.layer_dropout.p == p and net.condition_prompts.initial_dropout.p == 0  # BERT prompts
    assert net.text.dropout_in_training and not net.image.dropout_in_training


def test_frozen_encoder_in_train_mode_keeps_its_weights_and_statistics():
    net = _net("model.compat.condition_encoder_dropout=true").train()
    assert net.text.model.training and net.text.model.encoder.layer[0].attention.self.training  # attention dropout
    assert not net.image.model.training  # the prompted encoder stays in eval
    loss = net(_batch(net)).logits.square().mean()
    loss.backward()
    assert all(p.grad is None for p in net.text.model.parameters())  # frozen: no weight gradients ...
    assert all(p.grad is not None for p in net.condition_prompts.parameters())  # ... while its prompts train

    # As Lightning's evaluation loop leaves it: modes captured, eval(), then restored by assignment.
    mode = _ModuleMode()
    mode.capture(net)
    net.eval()
    assert not net.text.model.training
    mode.restore(net)
    assert net.text.model.training

    # A normalisation layer's statistics are frozen weights: it stays in eval while dropout runs.
    cnn = Backbone(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5)))
    assert cnn.keep_dropout_in_training() and cnn.dropout_in_training
    cnn.train()
    before = cnn.model[1].running_mean.clone()
    cnn.model(torch.randn(2, 3, 8, 8))
    assert cnn.model[2].training and not cnn.model[1].training
    assert torch.equal(cnn.model[1].running_mean, before)
    silent = Backbone(nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.0)))
    assert not silent.keep_dropout_in_training() and not silent.train().model.training  # no dropout: no change


def test_feature_cache_turns_off_for_an_encoder_running_its_dropout(capsys):
    net = _net("model.condition_prompts=0")
    assert set(net.input_spec().cacheable) == {"text"} and not net.input_spec().uncached
    net = _net("model.condition_prompts=0", "model.compat.condition_encoder_dropout=true")
    spec = net.input_spec()
    assert spec.cacheable == {} and "model.compat.condition_encoder_dropout" in spec.uncached["text"]
    # The default experiment's MobileNetV2 has no dropout: the flag changes nothing, says so, and the cache stays.
    assert main(["params", str(DEFAULT_EXP), "model.compat.mode=reference"]) == 0
    captured = capsys.readouterr()
    assert "has no dropout or drop-path" in captured.err + captured.out
    assert "image feature      computed once per distinct input" in captured.out


def test_fit_with_the_conditioning_encoder_in_train_mode_says_its_feature_is_not_cached(tmp_path, capsys):
    assert (
        main(
            [
                "fit",
                str(DEFAULT_EXP),
                str(TINY),
                *REFERENCE_SHAPE,
                "model.condition_prompts=0",
                "model.compat.condition_encoder_dropout=true",
                f"trainer.default_root_dir={tmp_path / 'runs'}",
                f"data.cache_dir={tmp_path / 'cache'}",
                "data.train_images=40",
                "data.test_images=10",
                "trainer.limit_train_batches=2",
                "trainer.limit_val_batches=1",
                "trainer.limit_test_batches=1",
                "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert (
        "text features are not cached: the frozen text encoder runs its own dropout in training "
        "(model.compat.condition_encoder_dropout)"
    ) in captured.err + captured.out
    assert not list((tmp_path / "cache").rglob("text*"))  # nothing cached for the text


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["model.compat.initial_prompt_dropout=true"],
            "model.compat.initial_prompt_dropout: acts on the prompts entering "
            "before the first block, which exist with model.compat.skip_first_block_prompt=true",
        ),
        (
            ["model.compat.condition_prompt_dropout=true"],
            "model.compat.condition_prompt_dropout: acts on the conditioning "
            "encoder's prompts, which exist with model.condition_prompts > 0",
        ),
        (
            ["model.fusion=late_concat", "model.compat.condition_encoder_dropout=true"],
            r"model.compat.condition_encoder_dropout: applies to the prompt fusions \(mope, prompt_tuning, prompt_tuning_shallow, promptfuse\)",
        ),
    ],
)
def test_a_flag_with_nothing_to_act_on_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config([DEFAULT_EXP], overrides)
    load_config([DEFAULT_EXP], [*overrides, "model.compat.mode=reference"])  # the preset turns on what applies
