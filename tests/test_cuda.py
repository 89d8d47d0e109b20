"""The paths that need a CUDA device: the model on the GPU against the CPU, bf16 autocast, activation checkpointing,
torch.compile, and a bf16-mixed fit through the CLI. Skipped without a GPU (CI has none); `make gpu-check` runs them
(benchmarks/gpu_check.py) on a machine that has one."""

import json

import pytest
import torch

from mope_lightning.cli import main
from mope_lightning.training.trainer_config import load_config
from mope_lightning.models import build_model

from helpers import DEFAULT_EXP, TINY
from helpers.models import CASES, _batch, _loss_and_grads

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (make gpu-check)"),
]


@pytest.fixture(autouse=True)
def _exact_fp32():
    """fp32 products in full precision (no TF32), so that the GPU can be compared with the CPU."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _on(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def _model(case: str):
    experiment, overrides = CASES[case]
    cfg = load_config([experiment, TINY], overrides)
    return build_model(cfg.model, num_classes=13), cfg.model.prompted


@pytest.mark.parametrize("case", ["bert", "swin"])
def test_the_model_on_the_gpu_computes_what_it_computes_on_the_cpu(case):
    """Eval mode (no routing noise, whose random numbers differ by device): the same logits and gradients."""
    net, prompted = _model(case)
    net.eval()
    batch = _batch(net, prompted)
    results = {}
    for device in ("cpu", "cuda"):
        net.to(device).zero_grad(set_to_none=True)
        on_device = _on(batch, device)
        logits = net(on_device).logits
        torch.nn.functional.cross_entropy(logits, on_device["labels"]).backward()
        results[device] = (
            logits.detach().cpu(),
            {n: p.grad.cpu() for n, p in net.named_parameters() if p.grad is not None},
        )
    torch.testing.assert_close(results["cuda"][0], results["cpu"][0], rtol=1e-4, atol=1e-4)
    assert results["cuda"][1].keys() == results["cpu"][1].keys()
    for name, grad in results["cpu"][1].items():
        torch.testing.assert_close(results["cuda"][1][name], grad, rtol=1e-3, atol=1e-4, msg=name)


def test_bf16_autocast_on_the_gpu_stays_close_to_fp32():
    net, prompted = _model("bert")
    net.cuda().eval()
    batch = _on(_batch(net, prompted), "cuda")
    with torch.no_grad():
        fp32 = net(batch).logits.float()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = net(batch).logits.float()
    assert torch.isfinite(bf16).all()
    assert (bf16 - fp32).abs().max() < 0.05 * fp32.abs().max() + 1e-2


@pytest.mark.parametrize("policy", ["selective", "full"])
@pytest.mark.parametrize("case", ["bert", "swin", "pmoe"])
def test_activation_checkpointing_on_the_gpu_gives_the_same_gradients(case, policy):
    net, prompted = _model(case)
    net.cuda().train()
    batch = _on(_batch(net, prompted), "cuda")
    loss, importance, grads = _loss_and_grads(net, batch, checkpointing=None)
    loss_ckpt, importance_ckpt, grads_ckpt = _loss_and_grads(net, batch, checkpointing=policy)
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=1e-5)
    torch.testing.assert_close(importance_ckpt, importance, rtol=0, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=0, atol=1e-5, msg=name)


def test_compiled_model_on_the_gpu_computes_what_eager_does():
    net, prompted = _model("bert")
    net.cuda().eval()
    batch = _on(_batch(net, prompted), "cuda")
    with torch.no_grad():
        eager = net(batch).logits
        net.compile()
        compiled = net(batch).logits
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_a_bf16_mixed_fit_on_the_gpu_through_the_cli(tmp_path):
    args = [
        str(DEFAULT_EXP),
        str(TINY),
        f"trainer.default_root_dir={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.train_images=64",
        "data.test_images=16",
        "trainer.accelerator=gpu",
        "trainer.devices=1",
        "trainer.precision=bf16-mixed",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
    ]
    assert main(["fit", *args]) == 0
    fit = json.loads((tmp_path / "runs" / "version_0" / "fit_metrics.json").read_text())
    assert set(fit["metrics"]) >= {"test/acc", "test/loss"}
    assert all(torch.isfinite(torch.tensor(float(v))) for v in fit["metrics"].values())
