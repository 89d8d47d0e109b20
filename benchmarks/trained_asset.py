"""The steady-state benchmark's asset: trained weights of the default experiment and one real batch to time them on.

    python benchmarks/trained_asset.py CKPT [--out benchmarks/assets/easy_vqa_trained]

Step times of freshly initialised weights miss what training does to the model: a converged router gives some
experts probabilities so small that, in float32, they (and the gradients they enter) are subnormal numbers, which
x86 CPUs process many times slower. `bench.py`'s `mope_trained` case therefore times the weights a real run ended
with, on a real batch (the routing depends on the inputs), against the same model freshly initialised on the same
batch (`mope_fresh`).

CKPT is a checkpoint of `experiments/easy_vqa.yaml`; the committed asset comes from
`mope fit experiments/easy_vqa.yaml trainer.max_steps=1600` (seed 42, 1,600 steps of batch 32: past the point, about
step 1,200, where `make train`'s steps slowed down; test accuracy 92.97%). This writes its adapter (`mope export`'s
files: the trainable weights only) and `batch.safetensors`: the first 32 questions of the validation split, as the
DataModule batches them (token ids, attention mask, the cached MobileNetV2 image features, labels).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
BATCH_KEYS = ("input_ids", "attention_mask", "image_features", "labels")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "assets" / "easy_vqa_trained"))
    args = parser.parse_args()
    from safetensors.torch import save

    from mope_lightning.cli import main as mope
    from mope_lightning.training.trainer_config import load_config
    from mope_lightning.fileio import atomic_write
    from mope_lightning.training.build import build

    experiment = ROOT / "experiments" / "easy_vqa.yaml"
    if mope(["export", str(experiment), f"ckpt={args.ckpt}", f"out={args.out}"]) != 0:
        return 2
    _, datamodule = build(load_config([experiment], []))
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.val_dataloader()))
    tensors = {key: batch[key][:32].contiguous() for key in BATCH_KEYS}
    atomic_write(Path(args.out) / "batch.safetensors", lambda fh: fh.write(save(tensors)), binary=True)
    print(
        f"{args.out}: adapter and batch.safetensors ({', '.join(f'{k} {tuple(v.shape)}' for k, v in tensors.items())})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
