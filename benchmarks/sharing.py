"""Adapter sizes and the Python API's predict throughput.

    python benchmarks/sharing.py [--samples 512] [--repeats 5] [--out benchmarks/results-sharing.json]

Sizes: the adapter folder `save_pretrained` writes (adapter.safetensors, adapter_config.json, README.md) for the
default experiment (MiniLM-L6 + MobileNetV2, their real offline weights) and for the paper's configuration (Swin-B
224 prompted, conditioned on BERT-base; random-init weights of the real architectures, since only the sizes matter
and the weights are not available offline), against the whole model (every tensor, frozen encoders included) in
the same safetensors format.

Throughput: `mope_lightning.from_pretrained(adapter).predict(texts=..., images=...)` on easy-VQA test questions
given as strings and in-memory PIL images (tokenization, image preprocessing, both encoders and the prompted
forward included), and given as image file paths (decoding included): the median of repeats after one warm-up.
The weights of the default adapter are the untrained initial ones: throughput does not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
PAPER_RANDOM_INIT = [
    "model.text_encoder.pretrained=false",
    "model.image_encoder.pretrained=false",
    # bert-base-uncased's WordPiece vocabulary, from the offline MiniLM copy
    "model.text_encoder.tokenizer=sentence-transformers/all-MiniLM-L6-v2",
]
CONFIGS = {
    "default": (["easy_vqa.yaml"], []),
    "paper": (["easy_vqa.yaml", "overlays/paper_encoders.yaml"], PAPER_RANDOM_INIT),
}


def build(name: str):
    from mope_lightning.weights.checkpoints import TrainedWeights
    from mope_lightning.config.schema import to_container
    from mope_lightning.training.trainer_config import load_config
    from mope_lightning.data.datasets.easy_vqa import default_root
    from mope_lightning.models import build_model
    from mope_lightning.pretrained import PretrainedModel

    files, overrides = CONFIGS[name]
    cfg = load_config([EXPERIMENTS / f for f in files], overrides)
    classes = (default_root() / "answers.txt").read_text().split()
    torch.manual_seed(cfg.seed)
    net = build_model(cfg.model, len(classes))
    trained = TrainedWeights(
        "untrained", to_container(cfg), classes, "multiclass", net.backbone_record(), net.trained_state_dict()
    )
    return PretrainedModel(net, trained, cfg.data)


def sizes(model, folder: Path) -> dict:
    from safetensors.torch import save

    out = model.save_pretrained(folder)
    files = {f.name: f.stat().st_size for f in out.iterdir()}
    full = len(save({k: v.contiguous() for k, v in model.net.state_dict().items()}))
    counts = model.net.parameter_counts()
    return {
        "adapter_files": files,
        "adapter_bytes": sum(files.values()),
        "full_model_bytes": full,
        "adapter_percent_of_full": round(100 * sum(files.values()) / full, 3),
        "trainable_parameters": counts["trainable"],
        "total_parameters": counts["total"],
    }


def throughput(folder: Path, samples: int, repeats: int, batch_size: int) -> dict:
    from PIL import Image

    import mope_lightning
    from mope_lightning.data.datasets.easy_vqa import default_root

    model = mope_lightning.from_pretrained(folder)
    questions = json.loads((default_root() / "test" / "questions.json").read_text())[:samples]
    texts = [q[0] for q in questions]
    paths = [default_root() / "test" / "images" / f"{q[2]}.png" for q in questions]
    images = []
    for p in paths:
        with Image.open(p) as img:
            images.append(img.convert("RGB"))
    result = {}
    for kind, given in (("pil", images), ("paths", paths)):
        model.predict(texts=texts[:batch_size], images=given[:batch_size], batch_size=batch_size)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.predict(texts=texts, images=given, batch_size=batch_size)
            times.append(time.perf_counter() - start)
        result[kind] = {
            "median_s": round(statistics.median(times), 3),
            "min_s": round(min(times), 3),
            "max_s": round(max(times), 3),
            "samples_per_s": round(samples / statistics.median(times), 1),
        }
    return result


def markdown(results: dict) -> str:
    lines = [
        "# Adapters and the Python API",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}; torch {results['torch']}, {results['threads']} threads",
        "",
        "| configuration | adapter.safetensors | adapter folder | whole model (safetensors) | adapter / whole "
        "| trainable / total parameters |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in results["sizes"].items():
        lines.append(
            f"| {name} | {s['adapter_files']['adapter.safetensors'] / 1e6:.2f} MB | "
            f"{s['adapter_bytes'] / 1e6:.2f} MB | {s['full_model_bytes'] / 1e6:.1f} MB | "
            f"{s['adapter_percent_of_full']:.2f}% | {s['trainable_parameters']:,} / "
            f"{s['total_parameters']:,} |"
        )
    t = results["throughput"]
    lines += [
        "",
        f"`from_pretrained(...).predict` on {t['samples']} easy-VQA test pairs, default configuration, "
        f"batch {t['batch_size']}, median of {t['repeats']} after a warm-up:",
        "",
        "| images given as | median (s) | min / max (s) | samples/s |",
        "|---|---|---|---|",
    ]
    for kind, label in (("pil", "PIL images in memory"), ("paths", "file paths (decoded each time)")):
        r = t[kind]
        lines.append(f"| {label} | {r['median_s']} | {r['min_s']} / {r['max_s']} | {r['samples_per_s']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results-sharing.json"))
    ns = parser.parse_args()
    results = {
        "command": "python benchmarks/sharing.py",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "sizes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in CONFIGS:
            model = build(name)
            results["sizes"][name] = sizes(model, Path(tmp) / name)
            print(name, results["sizes"][name], flush=True)
            del model
        results["throughput"] = {
            "samples": ns.samples,
            "repeats": ns.repeats,
            "batch_size": ns.batch_size,
            **throughput(Path(tmp) / "default", ns.samples, ns.repeats, ns.batch_size),
        }
    print(results["throughput"], flush=True)
    out = Path(ns.out)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(results))
    print(f"written {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
