"""pMoE (two random-init ViT experts of different widths) and VPT-deep on a generated copy of every image
classification layout: check-data, fit, test, analyze, export and from_pretrained(...).predict through the real
entry points (issue 38)."""

from __future__ import annotations

import json
from pathlib import Path

import mope_lightning
import numpy as np
import pytest
import yaml
from PIL import Image

from mope_lightning.cli import main

from helpers import EXPERIMENTS
from helpers.vision_datasets import make_cub200, make_flowers102, make_imagefolder, make_medmnist, make_vtab_task
from helpers.models import EXPERTS
from helpers.cli import experiment_args

# layout -> (builder of its files under a folder, its data section beside data.name and data.root)
LAYOUTS = {
    "imagefolder": (lambda root: make_imagefolder(root, val_per_class=2), {}),
    "vtab": (lambda root: make_vtab_task(root, "dtd"), {"task": "dtd", "vtab_protocol": "tune"}),
    "cub200": (lambda root: make_cub200(root, train_per_class=6), {"val_fraction": 0.34}),
    "flowers102": (make_flowers102, {}),
    "medmnist": (lambda root: make_medmnist(root, "pathmnist", classes=9, counts=(12, 4, 4)), {"task": "pathmnist"}),
    "medmnist_multilabel": (
        lambda root: make_medmnist(root, "chestmnist", num_labels=14, counts=(12, 4, 4)),
        {"task": "chestmnist"},
    ),
}
MODELS = {
    "pmoe": {"fusion": "pmoe", "pmoe": {"experts": EXPERTS, "static_length": 4, "condition_dispatcher": False}},
    "vpt_deep": {"fusion": "prompt_tuning", "mope": {"static_length": 4, "dynamic_length": 0, "mapped_length": 0}},
}


def experiment(tmp: Path, layout: str, model: str) -> Path:
    build, data = LAYOUTS[layout]
    root = build(tmp / "data")
    name = layout.removesuffix("_multilabel")
    cfg = {
        "experiment": f"{model}_{layout}",
        "data": {"name": name, "root": str(root), "batch_size": 4, "num_workers": 0, **data},
        "model": {
            "modalities": ["image"],
            "prompted": "image",
            "image_encoder": {"library": "timm", "name": "vit_base_patch16_224.dino"},
            **MODELS[model],
        },
    }
    path = tmp / f"{model}_{layout}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def args(tmp: Path, experiment: Path, *extra) -> list[str]:
    return experiment_args(tmp, experiment, "data.batch_size=4", *extra)


def some_images(tmp: Path, layout: str) -> list:
    """Two images of the dataset as a user would pass them: files, or for MedMNIST PIL images of its arrays."""
    if layout.startswith("medmnist"):
        with np.load(next((tmp / "data").glob("*.npz")), allow_pickle=False) as arrays:
            return [Image.fromarray(arrays["test_images"][k]) for k in range(2)]
    files = sorted(p for p in (tmp / "data").rglob("*") if p.suffix in (".jpg", ".png"))
    return files[:2]


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_image_only_model_runs_every_command_on_every_layout(tmp_path, capsys, layout, model):
    exp = experiment(tmp_path, layout, model)
    assert main(["check-data", *args(tmp_path, exp)]) == 0, capsys.readouterr().err
    assert main(["fit", *args(tmp_path, exp)]) == 0, capsys.readouterr().err
    metrics = json.loads(next((tmp_path / "runs").rglob("fit_metrics.json")).read_text())["metrics"]
    monitored = "test/f1_micro" if layout.endswith("multilabel") else "test/acc"
    assert monitored in metrics, metrics
    ckpt = next((tmp_path / "runs").rglob("epoch*.ckpt"))
    capsys.readouterr()
    assert main(["test", *args(tmp_path, exp, f"ckpt={ckpt}")]) == 0
    assert monitored in capsys.readouterr().out
    report = tmp_path / "report"
    analyzed = main(["analyze", *args(tmp_path, exp, f"ckpt={ckpt}", f"out={report}")])
    if model == "pmoe":
        assert analyzed == 0 and "## Dispatch path" in (report / "summary.md").read_text()
    else:  # VPT-deep has no router: one message says so, and no report is written
        assert analyzed == 2 and "has no router, so there is no routing to report" in capsys.readouterr().err
        assert not report.exists()
    adapter = tmp_path / "adapter"
    assert main(["export", *args(tmp_path, exp, f"ckpt={ckpt}", f"out={adapter}")]) == 0
    images = some_images(tmp_path, layout)
    from_adapter = mope_lightning.from_pretrained(adapter).predict(images=images)
    from_ckpt = mope_lightning.from_pretrained(ckpt).predict(images=images)
    assert from_adapter.probs.shape[0] == 2 and np.allclose(from_adapter.probs, from_ckpt.probs, atol=1e-6)


def test_the_vtab_sweep_file_plans_every_task(tmp_path):
    from mope_lightning.data.datasets.vtab import TASKS
    from mope_lightning.sweeps.spec import read_sweep
    from mope_lightning.sweeps.sweep import plan

    _, runs = plan(read_sweep(EXPERIMENTS / "sweeps" / "vtab.yaml"), str(tmp_path / "out"))
    tasks = [setting.value for run in runs for setting in run.cell if setting.column == "data.task"]
    assert sorted(tasks) == sorted(TASKS) and len(TASKS) == 19
