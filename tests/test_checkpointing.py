"""Activation checkpointing in the prompted block loop (model.activation_checkpointing): the same loss, importance
loss and gradients as keeping the activations, for every prompted encoder family."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mope_lightning.training.trainer_config import load_config
from mope_lightning.errors import ConfigError, ModelError
from mope_lightning.models import build_model

from helpers import DEFAULT_EXP, TINY
from helpers.models import CASES, _batch, _loss_and_grads


# the default policy on every family; the full policy (plain torch.utils.checkpoint) on BERT
@pytest.mark.parametrize("case, policy", [*((case, "selective") for case in CASES), ("bert", "full")])
def test_checkpointed_gradients_equal_stored_ones(case, policy):
    experiment, overrides = CASES[case]
    cfg = load_config([experiment, TINY], overrides)
    net = build_model(cfg.model, num_classes=13).train()
    batch = _batch(net, cfg.model.prompted)
    loss, importance, grads = _loss_and_grads(net, batch, checkpointing=None)
    loss_ckpt, importance_ckpt, grads_ckpt = _loss_and_grads(net, batch, checkpointing=policy)
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(importance_ckpt, importance, rtol=0, atol=1e-6)
    assert importance > 0  # routed: the importance loss is computed, once, outside the checkpointed layers
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 3
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=0, atol=1e-5, msg=name)


def test_checkpointing_recomputes_the_layers_in_backward():
    """Checkpointing is really on: each prompted BERT layer is entered twice per step (forward, then recomputed in
    backward, which stops as soon as the saved tensors it needs are back: a pre-hook sees it, a forward hook not)."""
    cfg = load_config([DEFAULT_EXP, TINY], ["model.activation_checkpointing=true"])
    net = build_model(cfg.model, num_classes=13).train()
    calls = []
    for layer in net.text.model.encoder.layer:
        layer.register_forward_pre_hook(lambda *_: calls.append(1))
    out = net(_batch(net))
    forward_calls = len(calls)
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2])).backward()
    assert forward_calls == len(net.text.model.encoder.layer) and len(calls) == 2 * forward_calls


def test_the_selective_policy_recomputes_all_but_the_down_projections():
    """The selective policy keeps each layer's MLP down-projection output (BERT: output.dense, 4d -> d): a step
    computes exactly those products' FLOPs less than under the full policy, and more than without checkpointing."""
    cfg = load_config([DEFAULT_EXP, TINY], ["model.activation_checkpointing=true"])
    net = build_model(cfg.model, num_classes=13).train()
    assert net.text.checkpoint_policy == "selective"
    batch = _batch(net)
    down = []
    for layer in net.text.model.encoder.layer:
        dense = layer.output.dense
        assert dense.in_features >= 2 * dense.out_features
        dense.register_forward_hook(lambda m, args, out: down.append(2 * args[0].numel() * m.out_features))
    flops = {}
    for policy in (None, "selective", "full"):
        counter = FlopCounterMode(display=False)
        with counter:
            _loss_and_grads(net, batch, checkpointing=policy)
        flops[policy] = counter.get_total_flops()
    down_projections = sum(down[: len(net.text.model.encoder.layer)])  # one forward's worth
    assert flops[None] < flops["selective"] and down_projections > 0
    assert flops["full"] - flops["selective"] == down_projections


def test_only_the_first_checkpointed_layers_recompute():
    """model.checkpointed_layers=N: the first N layers are recomputed in backward, the others run once; the
    gradients stay those of keeping every activation."""
    cfg = load_config([DEFAULT_EXP, TINY], ["model.activation_checkpointing=true", "model.checkpointed_layers=1"])
    net = build_model(cfg.model, num_classes=13).train()
    layers = net.text.model.encoder.layer
    assert len(layers) >= 2 and net.text.checkpointed_layers == 1
    calls = {i: 0 for i in range(len(layers))}
    for i, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    batch = _batch(net)
    torch.manual_seed(0)
    out = net(batch)
    (torch.nn.functional.cross_entropy(out.logits, batch["labels"]) + out.importance_loss).backward()
    assert calls == {i: 2 if i == 0 else 1 for i in range(len(layers))}
    partial = {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}
    _, _, stored = _loss_and_grads(net, batch, checkpointing=None)
    for name, grad in stored.items():
        torch.testing.assert_close(partial[name], grad, rtol=0, atol=1e-5, msg=name)


def test_checkpointed_layers_is_checked():
    with pytest.raises(
        ConfigError, match="model.checkpointed_layers: applies with model.activation_checkpointing=true; got 2"
    ):
        load_config([DEFAULT_EXP], ["model.checkpointed_layers=2"])
    with pytest.raises(ConfigError, match="model.checkpointed_layers: is a count of layers, at least 1; got 0"):
        load_config([DEFAULT_EXP], ["model.activation_checkpointing=true", "model.checkpointed_layers=0"])
    cfg = load_config([DEFAULT_EXP, TINY], ["model.activation_checkpointing=true", "model.checkpointed_layers=99"])
    with pytest.raises(ModelError, match="model.checkpointed_layers: 99, but the deepest prompted encoder has"):
        build_model(cfg.model, num_classes=13)
    with pytest.raises(ConfigError, match="model.checkpoint_policy: applies with model.activation_checkpointing=true"):
        load_config([DEFAULT_EXP], ["model.checkpoint_policy=full"])
    with pytest.raises(ConfigError, match="model.checkpoint_policy"):
        load_config([DEFAULT_EXP], ["model.activation_checkpointing=true", "model.checkpoint_policy=some"])


def test_checkpointing_without_a_prompted_loop_is_refused():
    with pytest.raises(
        ConfigError,
        match="model.activation_checkpointing: applies to the prompted block loop, which "
        "model.fusion=late_concat does not run",
    ):
        load_config([DEFAULT_EXP], ["model.fusion=late_concat", "model.activation_checkpointing=true"])


def test_compile_is_in_place_and_runs_like_activation_checkpointing(tmp_path):
    """model.compile compiles the classifier in place (its state_dict names unchanged); like activation
    checkpointing it says how the model runs, so resuming or exporting with another value is allowed."""
    from mope_lightning.config.schema import HOW_IT_RUNS
    from mope_lightning.training.resume import _may_change
    from mope_lightning.training.build import build

    cfg = load_config(
        [DEFAULT_EXP, TINY],
        ["model.compile=true", f"data.cache_dir={tmp_path}", "data.train_images=8", "data.test_images=4"],
    )
    module, _ = build(cfg)
    eager = build_model(cfg.model, num_classes=13)
    assert module.net._compiled_call_impl is not None and eager._compiled_call_impl is None
    assert list(module.net.state_dict()) == list(eager.state_dict())
    assert all(_may_change(key) for key in HOW_IT_RUNS)
