"""The segmentation cases of benchmarks/bench.py (issue 39): the real configurations are ViT-B at 512 with the
UperNet head, and each case times a training step on masks and gives its ratios against full fine-tuning, checked on
random-init miniatures of the same configurations (the real ones take minutes on CPU)."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench  # noqa: E402

from mope_lightning.models import build_model  # noqa: E402

TINY_SIZE = 32  # the tiny ViT's 32 px at patch 8: a 4 x 4 grid, 2 layers
TINY_EXPERTS = (
    "model.pmoe.experts='[{library: timm, name: vit_base_patch16_224.dino, tiny: true}, "
    "{library: timm, name: vit_base_patch16_224.mae, tiny: true}]'"
)


@pytest.fixture
def tiny_seg(monkeypatch):
    """The segmentation configurations on tiny random-init ViTs (and a tiny BERT for MoPE's condition), batch 2."""
    for config, overrides in (
        ("vit_seg", "model.head=upernet model.image_encoder.tiny=true model.text_encoder.tiny=true"),
        ("vit_seg_pmoe", f"model.head=upernet {TINY_EXPERTS}"),
    ):
        spec = {**bench.CONFIGS[config], "image_size": TINY_SIZE, "overrides": overrides}
        monkeypatch.setitem(bench.CONFIGS, config, spec)


def test_the_seg_cases_are_vit_b_at_512_with_upernet_and_150_classes():
    assert bench.SEG == [
        ("vit_seg", "seg_vpt_deep"),
        ("vit_seg", "seg_mope"),
        ("vit_seg", "seg_finetune"),
        ("vit_seg_pmoe", "seg_pmoe2"),
    ]
    assert all(case in bench.QUICK and case in bench.FULL for case in bench.SEG)  # make bench-quick runs them
    fusions = {}
    for config, name in bench.SEG:
        model = bench._config(config, bench.CASES[name]).model
        assert model.head == "upernet" and model.prompted == "image"
        encoders = model.pmoe.experts if model.fusion == "pmoe" else [model.image_encoder]
        assert [e.name.split(".")[0] for e in encoders] == ["vit_base_patch16_224"] * len(encoders)
        assert all(e.kwargs["img_size"] == 512 and not e.tiny for e in encoders)
        fusions[name] = model.fusion
    assert fusions == {
        "seg_vpt_deep": "prompt_tuning",
        "seg_mope": "mope",
        "seg_finetune": "finetune",
        "seg_pmoe2": "pmoe",
    }
    spec = bench.CONFIGS["vit_seg"]
    assert (spec["image_size"], spec["classes"], spec["task"]) == (512, 150, "segmentation")


def test_a_seg_case_trains_on_masks_at_the_image_size(tiny_seg):
    """The loss is the segmentation loss on the logits upsampled from the head's grid to the masks' size."""
    torch.manual_seed(0)
    cfg = bench._config("vit_seg", bench.CASES["seg_vpt_deep"])
    net = build_model(cfg.model, 150, weights=False, task="segmentation").eval()  # eval: no BatchNorm batch stats
    batch = bench._batch(net, "vit_seg", torch.device("cpu"))
    assert batch["labels"].shape == (2, TINY_SIZE, TINY_SIZE) and int(batch["labels"].max()) >= 13
    with torch.no_grad():
        logits = net(batch).logits
        assert logits.shape == (2, 150, 4, 4)
        upsampled = F.interpolate(logits, size=(TINY_SIZE, TINY_SIZE), mode="bilinear", align_corners=False)
        expected = F.cross_entropy(upsampled, batch["labels"])
        torch.testing.assert_close(bench._loss(net, batch), expected)


def test_seg_cases_run_and_give_their_ratios_against_fine_tuning(tiny_seg):
    results = [bench.run_case(config, name, "cpu", "32", warmup=0, repeats=1) for config, name in bench.SEG]
    by_case = {r["case"]: r for r in results}
    for r in results:
        assert r["median_step_seconds"] > 0 and r["peak_memory_mb"] > 0 and r["step_flops"] > 0, r["case"]
        assert r["batch"] == 2
    finetune = by_case["seg_finetune"]
    # fine-tuning trains the ViT too; the prompted cases train prompts (and routers, dispatchers) and the head
    assert all(by_case[c]["trainable"] < finetune["trainable"] for c in ("seg_vpt_deep", "seg_mope"))
    assert by_case["seg_pmoe2"]["total"] > finetune["total"]  # two ViT experts
    ratios = bench.ratios(results)
    for case, key in (("seg_vpt_deep", "prompt"), ("seg_mope", "mope"), ("seg_pmoe2", "pmoe2")):
        step = by_case[case]["median_step_seconds"] / finetune["median_step_seconds"]
        memory = by_case[case]["peak_memory_mb"] / finetune["peak_memory_mb"]
        assert ratios[f"seg_{key}_step_over_finetune"] == pytest.approx(step)
        assert ratios[f"seg_{key}_mem_over_finetune"] == pytest.approx(memory)
    assert "| vit_seg | seg_finetune |" in bench.markdown(_report(results, ratios))


def _report(results: list[dict], ratios: dict) -> dict:
    for r in results:
        r["of_matmul_rate"] = 0.5
    return {
        "ratios": ratios,
        "machine": bench.machine("cpu"),
        "quick": False,
        "only": "seg",
        "command": "python benchmarks/bench.py --only seg",
        "device": "cpu",
        "cpu_native_bf16": False,
        "matmul_flops_per_second": {"32": 1e11},
        "matmul_size": {"32": 1024},
        "repeats": 1,
        "warmup": 0,
        "results": results,
    }


def test_an_unknown_only_group_is_one_usage_message():
    import subprocess

    done = subprocess.run([sys.executable, bench.__file__, "--only", "segx"], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--only: segx: give one of pmoe, steady, bf16, vision, seg" in done.stderr
