"""benchmarks/loader.py's machinery on a few generated JPEGs (`--samples tiny`): the results it writes, and the
sections of the results file it must keep."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import loader as loader_bench  # noqa: E402  (benchmarks/loader.py)

PREDICT = {
    "command": "python benchmarks/predict.py",
    "machine": "x86_64, 2 CPUs",
    "threads": 2,
    "old_ref": "abc",
    "repeats": 1,
    "batch_size": 4,
    "new_over_old": {"pairs_paths": 2.5},
    "results": {"old": {"pairs_paths": {"samples_per_s": 10.0}}, "new": {"pairs_paths": {"samples_per_s": 25.0}}},
}


def test_tiny_run_adds_the_loader_section_and_keeps_the_others(tmp_path, monkeypatch):
    out = tmp_path / "results-loader.json"
    out.write_text(json.dumps({"predict": PREDICT, "ratios": {"api_predict_new_over_old": 2.5}}))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    committed = (ROOT / "benchmarks" / "results-loader.json").stat().st_mtime_ns

    # In-process only: a DataLoader worker forked from a pytest-xdist worker hung once in `make test` (the
    # benchmark itself runs its workers from a plain process, with a timeout)
    loader_bench.main(["--samples", "tiny", "--workers", "0", "--out", str(out)])

    results = json.loads(out.read_text())
    assert results["predict"] == PREDICT
    assert results["ratios"]["api_predict_new_over_old"] == 2.5
    section = results["loader"]
    assert section["samples"] == 16 and section["workers"] == [0]
    assert set(section["recipes"]) == {"snli_ve", "food101", "easy_vqa"}
    snli, food, vqa = (section["recipes"][name] for name in ("snli_ve", "food101", "easy_vqa"))
    assert snli["images"]["size"] == [500, 375] and snli["images"]["format"] == "JPEG"
    assert food["images"]["size"] == [512, 512] and food["images"]["count"] == 2
    assert vqa["images"]["format"] == "PNG"  # its installed images
    # the recipes' own preprocessing: RandAugment(2, 5) for SNLI-VE only, the reference normalisation, 224 crops
    assert snli["randaugment"] == [2, 5] and food["randaugment"] is None
    assert snli["transforms"]["train"][0].startswith("RandAugment(num_ops=2, magnitude=5")
    assert snli["transforms"]["eval"] == snli["transforms"]["train"][1:]
    assert "CenterCrop(size=(224, 224))" in food["transforms"]["eval"]
    assert "0.4678" in snli["transforms"]["eval"][-1]
    for recipe in (snli, food, vqa):
        for split in ("train", "eval"):
            result = recipe["paths"]["pil"][split]
            assert set(result["workers"]) == {"0"}
            assert all(r["per_worker_samples_per_s"] > 0 for r in result["workers"].values())
            assert list(result["stages_us_per_sample"]) == list(loader_bench.STAGES)
    assert snli["paths"]["pil"]["train"]["stages_us_per_sample"]["augment"] > 0
    assert food["paths"]["pil"]["train"]["stages_us_per_sample"]["augment"] is None

    step = next(
        r
        for r in json.loads((ROOT / "benchmarks" / "results-quick.json").read_text())["results"]
        if r["config"] == "paper" and r["case"] == "mope"
    )
    demand = section["demand"]
    assert demand["flops_per_sample"] == step["step_flops"] / step["batch"]
    assert demand["samples_per_s"]["0.4"] == round(0.4 * 989e12 * step["batch"] / step["step_flops"])
    assert set(section["cores_per_gpu"]) == {"snli_ve", "food101"}  # the demand is the paper configuration's
    per_worker = snli["paths"]["pil"]["train"]["workers"]["0"]["per_worker_samples_per_s"]  # without "1"
    cores = section["cores_per_gpu"]["snli_ve"]["pil"]["train"]["0.4"]
    assert cores == round(demand["samples_per_s"]["0.4"] / per_worker, 1)
    assert results["ratios"]["loader_cores_h100_40pct_pil_train_snli_ve"] == cores

    summary = out.with_suffix(".md").read_text()
    assert "## loader" in summary and "## predict" in summary and "| pairs_paths | 10.0 | 25.0 | 2.5 |" in summary
    assert not list(scratch.iterdir())  # the generated JPEGs are gone
    assert (ROOT / "benchmarks" / "results-loader.json").stat().st_mtime_ns == committed


def test_step_results_without_the_paper_case_stop_before_measuring(tmp_path):
    steps = tmp_path / "steps.json"
    steps.write_text(json.dumps({"results": [{"config": "default", "case": "mope", "step_flops": 1, "batch": 1}]}))
    out = tmp_path / "results-loader.json"
    with pytest.raises(SystemExit, match="steps.json: no paper/mope case"):
        loader_bench.main(["--samples", "tiny", "--step-results", str(steps), "--out", str(out)])
    assert not out.exists()


@pytest.mark.parametrize("samples", ["0", "many"])
def test_a_bad_sample_count_is_refused(samples, capsys):
    with pytest.raises(SystemExit) as exc:
        loader_bench.main(["--samples", samples])
    assert exc.value.code == 2
    assert f"'{samples}' is neither a positive number of samples nor one of tiny, full" in capsys.readouterr().err


def test_the_loaders_run_the_pipeline_the_benchmark_times():
    from mope_lightning.training.trainer_config import load_config
    from mope_lightning.data import DATAMODULES
    from mope_lightning.data.features import image_pipeline
    from mope_lightning.models.classifier import InputSpec

    cfg = load_config([ROOT / "experiments" / "easy_vqa.yaml"], ["data.randaugment=[2,5]"])
    image_config = {
        "input_size": (3, 64, 64),
        "interpolation": "bilinear",
        "mean": (0.5,) * 3,
        "std": (0.25,) * 3,
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    dm = DATAMODULES["easy_vqa"](cfg.data)
    dm.attach(InputSpec(image_config=image_config, reads=("image",)))
    train, evaluation = dm._load_media(train=True).transform, dm._load_media().transform
    assert repr(train) == repr(image_pipeline(image_config, cfg.data, train=True))
    assert repr(evaluation) == repr(image_pipeline(image_config, cfg.data))
    assert [type(t).__name__ for t in loader_bench.flatten(train)][:2] == ["RandAugment", "Resize"]
    assert [repr(t) for t in loader_bench.flatten(train)[1:]] == [repr(t) for t in loader_bench.flatten(evaluation)]
