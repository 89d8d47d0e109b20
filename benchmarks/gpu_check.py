"""The GPU check (`make gpu-check`): everything that needs a CUDA device, in one run of under 8 minutes.

    python benchmarks/gpu_check.py [--out benchmarks/results-gpu.md] [--minutes 8]

1. the CUDA tests (`pytest -m cuda`: the model on the GPU against the CPU, bf16 autocast, activation checkpointing,
   torch.compile, a bf16-mixed fit through the CLI);
2. a short bf16-mixed fit of the default experiment on the GPU (its test accuracy after `--fit-steps` steps);
3. the benchmark's GPU cases on CUDA, in fp32 and in bf16 (torch.compile among them), as in benchmarks/bench.py.

Each part runs in its own process, within its share of the time; the report (`--out`, with a .json beside it) says
what each part did, how long it took, and its output's tail when it failed. The exit status is non-zero when a part
failed or ran out of time, and 2 when there is no CUDA device.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# The cases whose numbers change on a GPU: MoPE against its floor and full fine-tuning, checkpointing, compile.
BENCH_CASES = (
    "paper:mope,paper:finetune,paper:checkpointing,paper:checkpointing_full,paper:checkpointing18,"
    "default:mope,default:compile"
)
SHARE = {"tests": 0.3, "fit": 0.25, "bench32": 0.2, "bench_bf16": 0.2}  # of the time budget


def _run(name: str, cmd: list[str], seconds: float, env: dict | None = None) -> dict:
    print(f"[gpu-check] {name}: {' '.join(cmd)} (at most {seconds:.0f} s)", flush=True)
    tic = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds, env={**os.environ, **(env or {})}
        )
        status, output = (
            ("passed" if proc.returncode == 0 else f"failed (exit {proc.returncode})"),
            proc.stdout + proc.stderr,
        )
    except subprocess.TimeoutExpired as exc:
        status = f"ran out of its {seconds:.0f} s"
        output = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
    result = {
        "part": name,
        "command": " ".join(cmd),
        "status": status,
        "seconds": round(time.perf_counter() - tic, 1),
        "tail": output[-2500:],
    }
    print(f"[gpu-check] {name}: {status} in {result['seconds']} s", flush=True)
    return result


def _fit_accuracy(root: Path) -> dict:
    found = sorted(root.rglob("fit_metrics.json"))
    if not found:
        return {}
    fit = json.loads(found[-1].read_text())
    return {"test_metrics": fit.get("metrics"), "seconds": fit.get("seconds")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results-gpu.md"))
    parser.add_argument("--minutes", type=float, default=8.0, help="time budget of the whole check")
    parser.add_argument("--fit-steps", type=int, default=300, help="training steps of the short bf16 fit")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "gpu-check: error: no CUDA device is visible to torch (torch.cuda.is_available() is False); run it on "
            "a machine with an NVIDIA GPU and a CUDA build of torch",
            file=sys.stderr,
        )
        return 2
    budget = args.minutes * 60
    out = Path(args.out)
    python = sys.executable
    tests = _run("tests", [python, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py"], SHARE["tests"] * budget)
    if tests["status"] == "passed" and re.search(r"\d+ (skipped|deselected)", tests["tail"]):
        tests["status"] = "failed (CUDA tests were skipped: the test process saw no GPU)"
        print(f"[gpu-check] tests: {tests['status']}", flush=True)
    parts = [tests]
    with tempfile.TemporaryDirectory() as runs:
        fit = _run(
            "fit",
            [
                python,
                "-m",
                "mope_lightning",
                "fit",
                "experiments/easy_vqa.yaml",
                "trainer.accelerator=gpu",
                "trainer.devices=1",
                "trainer.precision=bf16-mixed",
                f"trainer.max_steps={args.fit_steps}",
                "trainer.enable_progress_bar=false",
                f"trainer.default_root_dir={runs}",
            ],
            SHARE["fit"] * budget,
        )
        fit.update(_fit_accuracy(Path(runs)))
    parts.append(fit)
    tables = {}
    for precision, share in (("32", SHARE["bench32"]), ("bf16", SHARE["bench_bf16"])):
        json_out = out.with_name(f"{out.stem}-{precision}.json")
        part = _run(
            f"bench {precision}",
            [
                python,
                "benchmarks/bench.py",
                "--device",
                "cuda",
                "--precision",
                precision,
                "--only",
                BENCH_CASES,
                "--repeats",
                "5",
                "--warmup",
                "2",
                "--out",
                str(json_out),
            ],
            share * budget,
        )
        parts.append(part)
        if part["status"] == "passed":
            tables[precision] = json_out.with_suffix(".md").read_text()
    report = {
        "machine": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "budget_seconds": budget,
        "parts": parts,
    }
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.write_text(_markdown(report, tables))
    failed = [p["part"] for p in parts if p["status"] != "passed"]
    print(f"[gpu-check] report: {out}" + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


def _markdown(report: dict, tables: dict) -> str:
    lines = [
        "# GPU check",
        "",
        "Command: `make gpu-check` (benchmarks/gpu_check.py)  ",
        f"Machine: {report['machine']}; torch {report['torch']}, CUDA {report['cuda']}",
        "",
        "| part | status | seconds | result |",
        "|---|---|---|---|",
    ]
    for p in report["parts"]:
        result = ""
        if p.get("test_metrics"):
            result = ", ".join(f"{k} {v:.4f}" for k, v in p["test_metrics"].items() if isinstance(v, float))
        lines.append(f"| {p['part']} | {p['status']} | {p['seconds']} | {result} |")
    for p in report["parts"]:
        if p["status"] != "passed":
            lines += ["", f"## {p['part']}: output tail", "", "```", p["tail"], "```"]
    for precision, table in tables.items():
        body = table.split("\n", 1)[1] if table.startswith("# ") else table
        lines += ["", f"## Benchmark on CUDA, {'fp32' if precision == '32' else 'bf16'}", body]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
