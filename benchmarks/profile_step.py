"""Where a training step's time goes, fp32 against bf16: torch.profiler over the step benchmark's own steps.

    python benchmarks/profile_step.py [--config default|paper] [--steps 3] [--out benchmarks/results-profile.md]

Builds the same model, synthetic batch and training step as `bench.py` (random weights), runs warm-up steps, then
profiles a few steps in each precision and groups the operators by self CPU time into families: matrix products
(the work bf16 accelerates), dtype conversions (the round trips autocast adds), copies and reshapes (memory-bound
layout work such as Swin's window partition), elementwise and normalisation, softmax, the optimizer, and the rest.
A bf16 step can be no faster than its non-matmul families allow, whatever the matmul rate: the table says which
family keeps it from that rate. Each precision runs in this process, one after the other; compare the shares, and
the step times only within one run.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the step benchmark's model, batch and step, so both time the same thing)

FAMILIES = {  # family -> operator names (aten::...), matched exactly
    "matmul": {
        "mm",
        "addmm",
        "bmm",
        "baddbmm",
        "matmul",
        "linear",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention_for_cpu_backward",
        "convolution",
        "mkldnn_convolution",
        "convolution_backward",
        "_convolution",
        "conv2d",
    },
    "dtype conversion": {"to", "_to_copy", "copy_"},
    "layout (copy, reshape, cat)": {
        "contiguous",
        "clone",
        "cat",
        "stack",
        "roll",
        "index",
        "index_select",
        "constant_pad_nd",
        "pad",
        "narrow",
        "slice_backward",
        "index_put_",
        "select_backward",
        "cat_backward",
        "_unsafe_view",
        "view",
        "reshape",
        "permute",
        "transpose",
        "expand",
        "fill_",
        "zero_",
        "zeros",
        "empty",
        "empty_strided",
        "new_zeros",
        "split",
        "chunk",
        "unbind",
        "masked_fill_",
    },
    "softmax": {
        "softmax",
        "_softmax",
        "_softmax_backward_data",
        "log_softmax",
        "_log_softmax",
        "_log_softmax_backward_data",
    },
    "normalisation": {
        "layer_norm",
        "native_layer_norm",
        "native_layer_norm_backward",
        "native_batch_norm",
        "native_batch_norm_backward",
        "_native_batch_norm_legit_no_training",
    },
    "elementwise": {
        "add",
        "add_",
        "mul",
        "mul_",
        "div",
        "div_",
        "gelu",
        "gelu_backward",
        "sum",
        "mean",
        "sub",
        "rsub",
        "tanh",
        "tanh_backward",
        "sigmoid",
        "sigmoid_backward",
        "exp",
        "where",
        "threshold_backward",
        "relu",
        "hardtanh",
        "hardtanh_backward",
        "silu",
        "silu_backward",
        "neg",
        "pow",
        "sqrt",
        "addcmul_",
        "addcdiv_",
        "lerp_",
        "mul_backward",
        "dropout",
        "native_dropout",
        "gt",
        "eq",
        "clamp",
        "clamp_min",
        "abs",
        "max",
        "topk",
        "sort",
        "_foreach_add_",
        "_foreach_mul_",
        "_foreach_addcmul_",
        "_foreach_addcdiv_",
        "_foreach_sqrt",
        "_foreach_div_",
        "_foreach_lerp_",
        "_foreach_sub_",
        "_foreach_add",
        "_foreach_mul",
        "_foreach_div",
        "_foreach_sqrt_",
        "_foreach_neg",
        "_foreach_maximum_",
        "_foreach_pow",
    },
}


def family(op: str) -> str:
    name = op.removeprefix("aten::")
    for fam, names in FAMILIES.items():
        if name in names:
            return fam
    return "other"


def profile_steps(config: str, precision: str, warmup: int, steps: int) -> dict:
    torch.manual_seed(0)
    cfg = bench._config(config, bench.CASES["mope"])
    from mope_lightning.models import build_model

    net = build_model(cfg.model, 13, weights=False)
    net.train()
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    batch = bench._batch(net, config, torch.device("cpu"))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    for _ in range(warmup):
        bench._train_step(net, optimizer, batch, autocast)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            bench._train_step(net, optimizer, batch, autocast)
    by_family, by_op = defaultdict(float), defaultdict(lambda: [0.0, 0])
    for event in prof.key_averages():
        by_family[family(event.key)] += event.self_cpu_time_total
        by_op[event.key][0] += event.self_cpu_time_total
        by_op[event.key][1] += event.count
    total = sum(by_family.values())
    return {
        "step_seconds": total / steps / 1e6,
        "families": {k: v / steps / 1e6 for k, v in by_family.items()},
        "top": sorted(((k, t / steps / 1e6, n // steps) for k, (t, n) in by_op.items()), key=lambda r: -r[1])[:15],
        "total": total / steps / 1e6,
    }


def markdown(config: str, results: dict, command: str) -> str:
    fams = sorted(
        {f for r in results.values() for f in r["families"]}, key=lambda f: -results["32"]["families"].get(f, 0)
    )
    info = bench.machine("cpu")
    lines = [
        f"# Where a training step's time goes: fp32 and bf16 ({config} configuration)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {info.get('cpu_model', info['processor'])}, "
        f"{info['cpus']} CPUs, {info['threads']} torch threads; torch {info['torch']}; "
        f"native bf16 on this CPU: {'yes' if bench._cpu_native_bf16() else 'no'}  ",
        "Self CPU time per step by operator family (torch.profiler; profiled steps run slower than timed ones).",
        "",
        "| family | fp32 (s) | fp32 share | bf16 (s) | bf16 share | bf16 / fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for fam in fams:
        a, b = results["32"]["families"].get(fam, 0.0), results["bf16"]["families"].get(fam, 0.0)
        lines.append(
            f"| {fam} | {a:.4f} | {a / results['32']['total']:.0%} | {b:.4f} | "
            f"{b / results['bf16']['total']:.0%} | {b / a if a else float('nan'):.2f} |"
        )
    a, b = results["32"]["total"], results["bf16"]["total"]
    lines += [f"| **step** | {a:.4f} | | {b:.4f} | | {b / a:.2f} |", ""]
    for precision, result in results.items():
        lines += [
            f"Top operators, {precision}:",
            "",
            "| operator | s/step | calls/step | family |",
            "|---|---|---|---|",
        ]
        lines += [f"| `{op}` | {t:.4f} | {n} | {family(op)} |" for op, t, n in result["top"]] + [""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=tuple(bench.CONFIGS), default="default")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results = {p: profile_steps(args.config, p, args.warmup, args.steps) for p in ("32", "bf16")}
    command = "python benchmarks/profile_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(args.config, results, command.strip())
    print(text)
    if args.out:
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
