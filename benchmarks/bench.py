"""Training-step benchmarks of MoPE against its floor, deep prompt tuning and full fine-tuning, of pMoE over 2
and 3 ViT-B experts against VPT-deep and full fine-tuning on one ViT-B (image-only, batch 8 at 224), and of prompted
segmentation (VPT-deep, MoPE, pMoE over 2 ViT-B experts; UperNet head, batch 2 at 512) against fine-tuning the ViT-B.

    python benchmarks/bench.py [--quick] [--device cpu|cuda] [--precision 32|bf16] [--out benchmarks/results.json]

Every case runs in its own process (so peak memory is the case's own), builds the real model classes from an
experiment config with random weights, and times whole training steps (forward, loss, backward, AdamW step) on a
synthetic batch of the experiment's shape: the median of repeats after warm-up. Ratios compare cases measured in
the same run. Results go to results.json (with a top-level `ratios` object) and a Markdown table.

Memory is the peak of live tensor memory in a training step: `torch.cuda.max_memory_allocated` on CUDA, and on
CPU, which keeps no such statistic, the tensors the step starts with (weights, buffers, the previous step's
gradients, optimizer state, the batch) plus the peak of the step's own allocations and frees, replayed in order from
the profiler's records (one more step, after the timed ones). The process's peak RSS over the timed steps is reported
beside it: on CPU it also counts memory the C allocator keeps after tensors are freed, which depends on the
allocator more than on the model.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"

# The two configurations: the offline default experiment (MiniLM-L6 prompted, conditioned on a cached MobileNetV2
# feature) and the paper's (Swin-B 224 prompted, conditioned on a BERT-base [CLS] feature, batch 8).
CONFIGS = {
    "default": {"files": ["easy_vqa.yaml"], "batch": 32, "text_tokens": 13, "image_size": 128},
    "paper": {
        "files": ["easy_vqa.yaml", "overlays/paper_encoders.yaml"],
        "batch": 8,
        "text_tokens": 40,
        "image_size": 224,
    },
    "pmoe": {"files": ["easy_vqa_pmoe.yaml"], "batch": 32, "text_tokens": 13, "image_size": 128},
    # Image-only (model.modalities: [image]): the model sections of the VTAB-1k experiments, which need no data here
    "vit": {"files": ["vpt_vtab.yaml"], "batch": 8, "image_size": 224, "model_only": True},
    "vit_pmoe": {"files": ["pmoe_vtab.yaml"], "batch": 8, "image_size": 224, "model_only": True},
    # Semantic segmentation (issue 39) at ADE20K's usual 512 x 512 crops and 150 classes, with mmseg's ViT-UperNet
    # batch per GPU (2): the same ViT-B models with the UperNet head on four of their layers' grids (32 x 32)
    "vit_seg": {
        "files": ["vpt_vtab.yaml"],
        "batch": 2,
        "image_size": 512,
        "model_only": True,
        "task": "segmentation",
        "classes": 150,
        "overrides": "model.head=upernet model.image_encoder.kwargs.img_size=512",
    },
    "vit_seg_pmoe": {
        "files": ["pmoe_vtab.yaml"],
        "batch": 2,
        "image_size": 512,
        "model_only": True,
        "task": "segmentation",
        "classes": 150,
        "overrides": "model.head=upernet model.pmoe.experts='[{library: timm, name: vit_base_patch16_224.dino, "
        "kwargs: {img_size: 512}}, {library: timm, name: vit_base_patch16_224.mae, kwargs: {img_size: 512}}]'",
    },
}
# A third ViT-B expert for pMoE (random weights like the others: the tag only names the architecture here)
THIRD_VIT = (
    "model.pmoe.experts='[{library: timm, name: vit_base_patch16_224.dino}, {library: timm, name: "
    "vit_base_patch16_224.mae}, {library: timm, name: vit_base_patch16_224.augreg_in21k}]'"
)
# name -> overrides. "bare" is the floor: the frozen prompted backbone with as many plain (static) prompt tokens as
# MoPE's static + dynamic + mapped ones, which is also the framework's vanilla deep prompt tuning baseline.
CASES = {
    "bare": "model.fusion=prompt_tuning",
    "mope": "",
    "finetune": "model.fusion=finetune",
    "experts16": "model.mope.num_experts=16",
    "experts64": "model.mope.num_experts=64",
    "prompt12": "model.mope.static_length=12 model.mope.dynamic_length=12",
    "prompt24": "model.mope.static_length=24 model.mope.dynamic_length=24",
    "mope_condition_prompts": "model.condition_prompts=4",  # the reference also prompt-tunes its BERT: not cached
    # Reference mode: its training-time dropouts run the frozen conditioning encoder in train mode, so its feature is
    # computed every step (BERT-base in the paper config; the default's MobileNetV2 has no dropout and stays cached)
    "reference": "model.compat.mode=reference",
    "reference_condition_prompts": "model.compat.mode=reference model.condition_prompts=4",  # the official setup
    # MoPE recomputing each prompted block in backward, but its MLP's down-projection (the selective policy)
    "checkpointing": "model.activation_checkpointing=true",
    "checkpointing_full": "model.activation_checkpointing=true model.checkpoint_policy=full",  # ... all of it
    # ... only the first 18 of Swin-B's 24 blocks. The last six, on Swin's smallest maps, keep their activations and
    # are not recomputed; their memory is freed before the backward pass reaches the first blocks, where it peaks
    "checkpointing18": "model.activation_checkpointing=true model.checkpointed_layers=18",
    "compile": "model.compile=true",  # torch.compile (inductor) of the classifier
    "mope_bf16": "",  # MoPE under bf16 autocast (CASE_PRECISION)
    # ... with the libraries' own attention kernels: PyTorch's fused one, slow in bf16 on CPU (models/attention.py)
    "mope_bf16_library_attention": "model.attention=library",
    # Steady state: the weights a real run ended with against fresh ones, both on a real batch (TRAINED_ASSET)
    "mope_trained": "",
    "mope_fresh": "",
    "mope_trained_plain_softmax": "",  # ... with the router's softmax as it was: subnormal probabilities kept
    # pMoE (config "pmoe": MiniLM-L6 + MiniLM-L3 experts) against MoPE on each single expert (config "default")
    "pmoe": "",
    "pmoe_static_epts": "model.pmoe.dynamic_length=0 model.pmoe.mapped_length=0",
    "mope_l3": "model.text_encoder.name=sentence-transformers/paraphrase-MiniLM-L3-v2",
    # ViT-B cases: VPT-deep (config "vit"), full fine-tuning of the same ViT-B, pMoE over 2 and 3 ViT-B experts
    "vpt_deep": "",
    "finetune_vit": "model.fusion=finetune",
    "pmoe2": "",
    "pmoe3": THIRD_VIT,
    # Segmentation: VPT-deep (10 static prompts per layer), MoPE with as many prompt tokens per layer (4 static,
    # 4 dynamic, 2 mapped) conditioned on a cached BERT-base [CLS] feature (the paper configuration's conditioning;
    # image-text MoPE), full fine-tuning of the ViT-B and head, and pMoE over 2 ViT-B experts
    "seg_vpt_deep": "",
    "seg_mope": "model.fusion=mope model.modalities=[text,image] model.text_encoder.library=transformers "
    "model.text_encoder.name=bert-base-uncased model.text_encoder.arch=bert model.pool=cls "
    "model.mope.static_length=4 model.mope.dynamic_length=4 model.mope.mapped_length=2",
    "seg_finetune": "model.fusion=finetune",
    "seg_pmoe2": "",
}
CASE_PRECISION = {
    "mope_bf16": "bf16",
    "mope_bf16_library_attention": "bf16",
}  # cases run in another precision than the benchmark's
# Trained weights of the default experiment and a real validation batch (benchmarks/trained_asset.py says how made)
TRAINED_ASSET = ROOT / "benchmarks" / "assets" / "easy_vqa_trained"
REAL_BATCH = ("mope_trained", "mope_fresh", "mope_trained_plain_softmax")
STEADY = [("default", name) for name in REAL_BATCH]  # --only steady
BF16 = [(c, n) for c in ("default", "paper") for n in ("mope", "mope_bf16", "mope_bf16_library_attention")]
PMOE = [("default", "mope"), ("default", "mope_l3"), ("pmoe", "pmoe"), ("pmoe", "pmoe_static_epts")]
VISION = [("vit", "vpt_deep"), ("vit", "finetune_vit"), ("vit_pmoe", "pmoe2"), ("vit_pmoe", "pmoe3")]
SEG = [("vit_seg", "seg_vpt_deep"), ("vit_seg", "seg_mope"), ("vit_seg", "seg_finetune"), ("vit_seg_pmoe", "seg_pmoe2")]
QUICK = [
    ("paper", "bare"),
    ("paper", "mope"),
    ("paper", "experts64"),
    ("paper", "finetune"),
    ("paper", "checkpointing"),
    ("paper", "checkpointing_full"),
    ("paper", "checkpointing18"),
    ("default", "bare"),
    ("default", "mope"),
    ("default", "mope_bf16"),
    ("default", "compile"),
    ("default", "mope_fresh"),
    ("default", "mope_trained"),
    *VISION,
    *SEG,
]
# bf16 and compile in the default configuration only: on a CPU without native bf16 a paper-configuration bf16 step
# takes minutes, and compiling Swin-B + BERT-base longer still.
FULL = (
    [
        (c, n)
        for c in ("default", "paper")
        for n in CASES
        if n not in {name for _, name in PMOE[1:] + VISION + SEG}
        and not (
            c == "default"
            and n in ("mope_condition_prompts", "reference_condition_prompts", "checkpointing_full", "checkpointing18")
        )
        and n != "mope_bf16_library_attention"
        and not (c == "paper" and n in ("mope_bf16", "compile", *REAL_BATCH))
    ]
    + PMOE[1:]
    + VISION
    + SEG
)


def _config(config: str, overrides: str):
    from mope_lightning.training.trainer_config import load_config

    spec = CONFIGS[config]
    overrides = shlex.split(spec.get("overrides", "")) + shlex.split(overrides)  # the configuration's, then the case's
    if spec.get("model_only"):  # the model section alone: its data (a reader and files) is not needed to time steps
        return _model_config(spec["files"], overrides)
    return load_config([EXPERIMENTS / f for f in spec["files"]], overrides)


def _model_config(files: list[str], overrides: list[str]):
    """`{"model": ...}`: the experiment files' model sections on the schema's defaults, then `overrides`."""
    import yaml
    from omegaconf import OmegaConf

    from mope_lightning.config.model import ModelConfig, merge_node, parse_overrides

    cfg = OmegaConf.create({"model": OmegaConf.structured(ModelConfig)})
    for name in files:
        model = yaml.safe_load((EXPERIMENTS / name).read_text())["model"]
        cfg = merge_node(cfg, OmegaConf.create({"model": model}), name)
    return merge_node(cfg, parse_overrides(overrides), "overrides")


def _batch(net, config: str, device: torch.device) -> dict:
    """A synthetic batch of the experiment's shape, cached features where the DataModule would cache them."""
    spec, batch = CONFIGS[config], CONFIGS[config]["batch"]
    if spec.get("task") == "segmentation":  # a class per pixel
        labels = torch.randint(0, spec["classes"], (batch, spec["image_size"], spec["image_size"]))
    else:
        labels = torch.randint(0, 13, (batch,))
    out = {"labels": labels}
    cached = net.input_spec().cacheable if hasattr(net, "input_spec") else {}
    for modality in ("text", "image"):
        if modality not in net.modalities():  # an image-only model reads no text
            continue
        if modality in cached:
            out[f"{modality}_features"] = torch.randn(batch, net.encoder(modality).num_features)
        elif modality == "text":
            out["input_ids"] = torch.randint(1000, 20000, (batch, spec["text_tokens"]))
            out["attention_mask"] = torch.ones(batch, spec["text_tokens"], dtype=torch.long)
        else:
            size = net.image.data_config["input_size"][-1] if config == "paper" else spec["image_size"]
            out["images"] = torch.randn(batch, 3, size, size)
    return {k: v.to(device) for k, v in out.items()}


def _trained_or_fresh(cfg, name: str):
    """The default experiment's model with its real frozen encoders (their weights shape the routing), holding the
    asset's trained weights (`mope_trained`) or its fresh initial ones (`mope_fresh`)."""
    from mope_lightning.weights.adapters import read_trained_weights
    from mope_lightning.weights.checkpoints import load_into
    from mope_lightning.models import build_model

    net = build_model(cfg.model, 13)
    if name != "mope_fresh":
        load_into(net, read_trained_weights(TRAINED_ASSET))
    if name == "mope_trained_plain_softmax":  # this case runs in a process of its own: nothing else sees the patch
        from mope_lightning.models import router

        router.softmax_without_subnormals = lambda logits: logits.float().softmax(dim=-1)
    return net


def _real_batch(device: torch.device) -> dict:
    from safetensors.torch import load_file

    return {k: v.to(device) for k, v in load_file(TRAINED_ASSET / "batch.safetensors").items()}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _tensor_bytes(tensors) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if torch.is_tensor(t)}
    return sum(storages.values())


def _step_tensor_memory_mb(net, optimizer, batch: dict, autocast) -> float:
    """Peak live tensor memory (MB) of one CPU training step: what it starts with, plus the peak of the running
    total of the allocations (positive) and frees (negative) that the profiler records during the step.

    The profiler records no free of a tensor allocated before it started, so the previous step's gradients, which
    the step frees (zero_grad) and replaces, are copied inside the profiled window first: their frees are then
    recorded, and they are counted there rather than in the starting tensors."""
    state = [v for per_param in optimizer.state.values() for v in per_param.values()]
    start = _tensor_bytes([*net.parameters(), *net.buffers(), *state, *batch.values()])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profiler:
        for param in net.parameters():
            if param.grad is not None:
                param.grad = param.grad.clone()
        _train_step(net, optimizer, batch, autocast)
    records = [
        e
        for e in profiler.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    live = peak = 0
    for record in sorted(records, key=lambda e: e.start_ns()):
        live += record.nbytes()
        peak = max(peak, live)
    return (start + peak) / 2**20


def _checkpoint_bytes(net, optimizer) -> int:
    """Size of what a checkpoint holds: trainable weights and buffers outside frozen backbones, optimizer state."""
    frozen = tuple(f"{name}." for name in net.frozen_backbones())
    state = {k: v for k, v in net.state_dict().items() if not k.startswith(frozen)}
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "optimizer": optimizer.state_dict()}, buffer)
    return buffer.tell()


def _loss(net, batch: dict):
    """The training loss of `batch`: cross-entropy, or for masks (B, H, W) the segmentation loss on the logits
    upsampled to the masks' size, as the LightningModule's training step computes it; plus the routing term."""
    out = net(batch)
    logits, labels = out.logits.float(), batch["labels"]
    if labels.ndim == 3:
        from mope_lightning.mask_predictions import upsample
        from mope_lightning.training.segmentation import segmentation_loss

        task_loss = segmentation_loss(upsample(logits, labels.shape[-2:]), labels)
    else:
        task_loss = torch.nn.functional.cross_entropy(logits, labels)
    return task_loss + 0.01 * out.importance_loss


def _train_step(net, optimizer, batch: dict, autocast) -> None:
    with autocast:
        loss = _loss(net, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def run_case(config: str, name: str, device: str, precision: str, warmup: int, repeats: int) -> dict:
    from mope_lightning.models import build_model

    torch.manual_seed(0)
    precision = CASE_PRECISION.get(name, precision)
    cfg = _config(config, CASES[name])
    dev = torch.device(device)
    baseline_mb = _peak_rss_mb()
    start = time.perf_counter()
    spec = CONFIGS[config]
    net = (
        _trained_or_fresh(cfg, name)
        if name in REAL_BATCH
        else build_model(cfg.model, spec.get("classes", 13), weights=False, task=spec.get("task", "multiclass"))
    )
    net = net.to(dev)
    build_seconds = time.perf_counter() - start
    if cfg.model.compile:
        net.compile()  # compiled by the first step, a warm-up step
    net.train()
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    batch = _real_batch(dev) if name in REAL_BATCH else _batch(net, config, dev)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    times = []
    for _ in range(warmup + repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        _train_step(net, optimizer, batch, autocast)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - tic)
    timed = times[warmup:]
    median = statistics.median(timed)
    rss_mb = _peak_rss_mb() - baseline_mb
    # Both after the timed steps: under the profiler or the FLOP counter the process holds more.
    peak_mb = (
        torch.cuda.max_memory_allocated(dev) / 2**20
        if dev.type == "cuda"
        else _step_tensor_memory_mb(net, optimizer, batch, autocast)
    )
    flops = _step_flops(net, optimizer, batch, autocast)
    counts = net.parameter_counts()
    result = {
        "config": config,
        "case": name,
        "overrides": CASES[name],
        "precision": precision,
        "batch": CONFIGS[config]["batch"],
        "step_seconds": timed,
        "median_step_seconds": median,
        "samples_per_second": CONFIGS[config]["batch"] / median,
        "peak_memory_mb": peak_mb,
        "peak_rss_mb": rss_mb,
        "trainable": counts["trainable"],
        "total": counts["total"],
        "build_seconds": build_seconds,
        "first_step_seconds": times[0],
        "step_flops": flops,
        "achieved_flops_per_second": flops / median,
    }
    if name in ("mope", "finetune"):
        result["checkpoint_bytes"] = _checkpoint_bytes(net, optimizer)
    if config == "default" and name == "mope":
        result["predict_samples_per_second"] = _predict_throughput(net, config, dev, autocast, repeats)
    return result


def _step_flops(net, optimizer, batch: dict, autocast) -> int:
    """Floating-point operations of one training step as executed (torch.utils.flop_counter: matmuls, convolutions
    and attention; a checkpointed model's recomputed forward counts too), from one more, untimed step."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, autocast:
        loss = _loss(net, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    return counter.get_total_flops()


def matmul_rate(device: str, precision: str, largest: int = 2048, repeats: int = 10) -> tuple[float, int]:
    """The machine's dense matmul rate (FLOP/s) in this run, the ceiling the training steps are compared with: the
    median of `repeats` (n x n) @ (n x n) products in the given precision, and n. n doubles from 256 up to `largest`
    while a product takes under 0.1 s (a CPU without native bf16 multiplies bf16 about 50x slower than fp32)."""
    dev = torch.device(device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    def product_seconds(size: int, count: int) -> list[float]:
        a, b = torch.randn(size, size, device=dev, dtype=dtype), torch.randn(size, size, device=dev, dtype=dtype)
        times = []
        for step in range(count + 1):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            tic = time.perf_counter()
            a @ b
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if step:  # the first warms up
                times.append(time.perf_counter() - tic)
        return times

    size = 256
    while size < largest and product_seconds(size, 1)[0] < 0.1:
        size *= 2
    return 2 * size**3 / statistics.median(product_seconds(size, repeats)), size


@torch.no_grad()
def _predict_throughput(net, config: str, dev: torch.device, autocast, repeats: int) -> float:
    net.eval()
    batch = _batch(net, config, dev)
    times = []
    for step in range(repeats + 1):
        tic = time.perf_counter()
        with autocast:
            net(batch).logits.softmax(-1)
        if step:
            times.append(time.perf_counter() - tic)
    return CONFIGS[config]["batch"] / statistics.median(times)


def _cpu_native_bf16() -> bool:
    from mope_lightning.training.launch import cpu_has_bf16

    return cpu_has_bf16()


def machine(device: str) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
    }
    try:
        info["cpu_model"] = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def ratios(results: list[dict]) -> dict:
    by = {(r["config"], r["case"]): r for r in results}
    out = {}

    def ratio(key, num, den, field="median_step_seconds"):
        if num in by and den in by:
            out[key] = by[num][field] / by[den][field]

    ratio("mope_over_bare", ("paper", "mope"), ("paper", "bare"))
    ratio("mope_over_bare_default", ("default", "mope"), ("default", "bare"))
    ratio("experts64_over_experts4", ("paper", "experts64"), ("paper", "mope"))
    ratio("experts16_over_experts4", ("paper", "experts16"), ("paper", "mope"))
    ratio("mope_memory_over_finetune", ("paper", "mope"), ("paper", "finetune"), "peak_memory_mb")
    ratio("mope_over_finetune", ("paper", "mope"), ("paper", "finetune"))
    ratio("mope_condition_prompts_over_bare", ("paper", "mope_condition_prompts"), ("paper", "bare"))
    ratio("prompt24_over_prompt6", ("paper", "prompt24"), ("paper", "mope"))
    ratio("reference_over_mope", ("paper", "reference"), ("paper", "mope"))
    ratio("reference_over_mope_default", ("default", "reference"), ("default", "mope"))
    ratio(
        "reference_condition_prompts_over_mope_condition_prompts",
        ("paper", "reference_condition_prompts"),
        ("paper", "mope_condition_prompts"),
    )
    ratio("checkpoint_mope_over_finetune", ("paper", "mope"), ("paper", "finetune"), "checkpoint_bytes")
    ratio("checkpoint_mope_over_finetune_default", ("default", "mope"), ("default", "finetune"), "checkpoint_bytes")
    ratio("pmoe_over_mope_l6", ("pmoe", "pmoe"), ("default", "mope"))
    ratio("pmoe_over_mope_l3", ("pmoe", "pmoe"), ("default", "mope_l3"))
    for experts in (2, 3):  # what each ViT-B expert costs: pMoE against VPT-deep and full fine-tuning on one ViT-B
        ratio(f"pmoe{experts}_over_vpt_deep", ("vit_pmoe", f"pmoe{experts}"), ("vit", "vpt_deep"))
        ratio(
            f"pmoe{experts}_over_vpt_deep_memory", ("vit_pmoe", f"pmoe{experts}"), ("vit", "vpt_deep"), "peak_memory_mb"
        )
        ratio(f"pmoe{experts}_over_finetune_vit", ("vit_pmoe", f"pmoe{experts}"), ("vit", "finetune_vit"))
        ratio(
            f"pmoe{experts}_over_finetune_vit_memory",
            ("vit_pmoe", f"pmoe{experts}"),
            ("vit", "finetune_vit"),
            "peak_memory_mb",
        )
    # prompted segmentation against fine-tuning the same ViT-B and UperNet head (pMoE: two ViT-B experts)
    for config, case, key in (
        ("vit_seg", "seg_vpt_deep", "prompt"),
        ("vit_seg", "seg_mope", "mope"),
        ("vit_seg_pmoe", "seg_pmoe2", "pmoe2"),
    ):
        ratio(f"seg_{key}_step_over_finetune", (config, case), ("vit_seg", "seg_finetune"))
        ratio(f"seg_{key}_mem_over_finetune", (config, case), ("vit_seg", "seg_finetune"), "peak_memory_mb")
    ratio("seg_mope_step_over_prompt", ("vit_seg", "seg_mope"), ("vit_seg", "seg_vpt_deep"))
    ratio("mope_rss_over_finetune", ("paper", "mope"), ("paper", "finetune"), "peak_rss_mb")
    for case in ("checkpointing", "checkpointing_full", "checkpointing18"):
        ratio(f"{case}_memory_over_finetune", ("paper", case), ("paper", "finetune"), "peak_memory_mb")
        ratio(f"{case}_memory_over_mope", ("paper", case), ("paper", "mope"), "peak_memory_mb")
        ratio(f"{case}_rss_over_finetune", ("paper", case), ("paper", "finetune"), "peak_rss_mb")
        ratio(f"{case}_step_over_mope", ("paper", case), ("paper", "mope"))
    for config in ("default", "paper"):
        ratio(f"bf16_step_over_fp32_{config}", (config, "mope_bf16"), (config, "mope"))
        ratio(
            f"bf16_library_attention_step_over_fp32_{config}", (config, "mope_bf16_library_attention"), (config, "mope")
        )
    ratio("compile_step_over_eager_default", ("default", "compile"), ("default", "mope"))
    ratio("trained_over_fresh_step_default", ("default", "mope_trained"), ("default", "mope_fresh"))
    ratio(
        "plain_softmax_over_router_trained_default",
        ("default", "mope_trained_plain_softmax"),
        ("default", "mope_trained"),
    )
    return out


def markdown(report: dict) -> str:
    r, m = report["ratios"], report["machine"]
    kind = "quick" if report["quick"] else f"cases {report['only']}" if report.get("only") else "full"
    rates = ", ".join(
        f"{v / 1e9:.1f} GFLOP/s in {'fp32' if p == '32' else p} ({report['matmul_size'][p]} x "
        f"{report['matmul_size'][p]} products)"
        for p, v in report["matmul_flops_per_second"].items()
    )
    lines = [
        f"# Benchmarks ({kind})",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {m.get('cpu_model', m['processor'])}, {m['cpus']} CPUs, "
        f"{m['threads']} torch threads{', ' + m['gpu'] if 'gpu' in m else ''}; torch {m['torch']}; device "
        f"{report['device']}; native bf16 on this CPU: {'yes' if report['cpu_native_bf16'] else 'no'}  ",
        f"Steps: median of {report['repeats']} after {report['warmup']} warm-up step(s), each case in its own "
        "process.  ",
        "Memory: peak live tensor memory of a training step ("
        + (
            "`torch.cuda.max_memory_allocated`"
            if report["device"] == "cuda"
            else "the tensors a step starts with, plus the peak of its allocations replayed from the profiler's records"
        )
        + "); peak RSS: the process's peak resident memory over the "
        "timed steps, above what it held before the model was built, which on CPU also counts memory the C "
        "allocator keeps after tensors are freed.",
        "",
        f"FLOP utilisation: the FLOPs of one step (torch.utils.flop_counter, as executed) per median step time, "
        f"against this run's dense matmul rate ({rates}).",
        "",
        "| config | case | overrides | precision | batch | step (s) | samples/s | peak memory (MB) "
        "| peak RSS (MB) | GFLOP/step | GFLOP/s | of matmul rate | trainable | total |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in report["results"]:
        lines.append(
            f"| {x['config']} | {x['case']} | `{x['overrides'] or '-'}` | {x['precision']} | {x['batch']} | "
            f"{x['median_step_seconds']:.3f} | {x['samples_per_second']:.1f} | {x['peak_memory_mb']:.0f} | "
            f"{x['peak_rss_mb']:.0f} | {x['step_flops'] / 1e9:.1f} | "
            f"{x['achieved_flops_per_second'] / 1e9:.1f} | {x['of_matmul_rate']:.0%} | "
            f"{x['trainable']:,} | {x['total']:,} |"
        )
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in r.items()]
    compiled = [x for x in report["results"] if x["case"] == "compile"]
    for x in compiled:
        lines += ["", f"Compilation ({x['config']}): the first step took {x['first_step_seconds']:.0f} s."]
    predict = [x["predict_samples_per_second"] for x in report["results"] if "predict_samples_per_second" in x]
    if predict:
        lines += [
            "",
            f"Predict throughput, default configuration: {predict[0]:.0f} samples/s (batch "
            f"{CONFIGS['default']['batch']}, forward + softmax).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="the key cases only, fewer repeats (about 15 min on 2 CPUs)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("32", "bf16"), default="32")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results.json"))
    parser.add_argument("--repeats", type=int, help="timed steps per case (default 5; quick 3)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 2; quick 1)")
    parser.add_argument(
        "--only",
        help="comma-separated config:case pairs to run instead (e.g. default:mope,pmoe:pmoe); "
        "'pmoe': pMoE against MoPE on each single expert; 'steady': trained weights against fresh "
        "ones, and against the plain softmax; 'bf16': bf16 against fp32 in both configurations, with the attention "
        "kernel models/attention.py picks and with the libraries' own; 'vision': pMoE over 2 and 3 ViT-B experts "
        "against VPT-deep and full fine-tuning of one ViT-B; 'seg': segmentation (ViT-B at 512 with the UperNet head) by "
        "VPT-deep, MoPE and pMoE over 2 ViT-B experts against full fine-tuning",
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: config:name, run in this process
    args = parser.parse_args()
    warmup, repeats = (1, 3) if args.quick else (2, 5)
    warmup, repeats = args.warmup if args.warmup is not None else warmup, args.repeats or repeats
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.case:
        config, name = args.case.split(":")
        print(json.dumps(run_case(config, name, args.device, args.precision, warmup, repeats)))
        return
    results = []
    named = {"pmoe": PMOE, "steady": STEADY, "bf16": BF16, "vision": VISION, "seg": SEG}
    if args.only in named:
        plan = named[args.only]
    elif args.only:
        plan = [tuple(item.split(":")) for item in args.only.split(",")]
        unknown = [":".join(p) for p in plan if len(p) != 2 or p[0] not in CONFIGS or p[1] not in CASES]
        if unknown:
            parser.error(
                f"--only: {', '.join(unknown)}: give one of {', '.join(named)} or config:case pairs "
                f"(configs: {', '.join(CONFIGS)}; cases: {', '.join(CASES)})"
            )
    elif args.quick:  # the paper configuration in bf16 only where bf16 is native (it takes minutes elsewhere)
        plan = QUICK + ([("paper", "mope_bf16")] if args.device == "cuda" or _cpu_native_bf16() else [])
    else:
        plan = FULL
    for config, name in plan:
        cmd = [
            sys.executable,
            __file__,
            "--case",
            f"{config}:{name}",
            "--device",
            args.device,
            "--precision",
            args.precision,
            "--warmup",
            str(warmup),
            "--repeats",
            str(repeats),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"case {config}:{name} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        x = results[-1]
        print(
            f"{config:8s} {name:14s} step {x['median_step_seconds']:.3f} s  {x['samples_per_second']:.1f} "
            f"samples/s  peak {x['peak_memory_mb']:.0f} MB",
            flush=True,
        )
    rates, sizes = {}, {}
    for precision in sorted({x["precision"] for x in results}):
        rates[precision], sizes[precision] = matmul_rate(args.device, precision)
    for x in results:
        x["of_matmul_rate"] = x["achieved_flops_per_second"] / rates[x["precision"]]
    report = {
        "command": " ".join(["python", "benchmarks/bench.py", *sys.argv[1:]]),
        "quick": args.quick,
        "only": args.only,
        "device": args.device,
        "precision": args.precision,
        "warmup": warmup,
        "repeats": repeats,
        "machine": machine(args.device),
        "cpu_native_bf16": _cpu_native_bf16(),
        "matmul_flops_per_second": rates,
        "matmul_size": sizes,
        "results": results,
        "ratios": ratios(results),
    }
    out = Path(args.out)
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report))
    print(json.dumps(report["ratios"], indent=1))


if __name__ == "__main__":
    main()
