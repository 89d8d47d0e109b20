"""End to end with the real offline encoders (MiniLM-L6, MobileNetV2) on a fixed easy-VQA subset.

One short `fit` is shared by the tests of this module: it must learn (well above the majority answer), its best
checkpoint must reproduce its test metric after a reload that rebuilds the frozen encoders from their source, and
the checkpoint must hold the trainable weights only.
"""

import csv
import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mope_lightning.training.trainer_config import load_config
from mope_lightning.data.datasets.easy_vqa import default_root
from mope_lightning.errors import CheckpointError
from mope_lightning.cli.fit import run

from helpers import DEFAULT_EXP, TINY

MAJORITY = 0.40  # the most frequent answer ("yes"/"no") is about 37% of the questions in any subset


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e")


def e2e_overrides(workdir, *extra):
    # The CI subset of datasets.md: 800 train / 200 test images; 64 px images for a quick one-time feature cache.
    return [
        f"trainer.default_root_dir={workdir / 'runs'}",
        f"data.cache_dir={workdir / 'cache'}",
        "data.train_images=800",
        "data.test_images=200",
        "data.image_size=64",
        "trainer.max_steps=90",
        "trainer.val_check_interval=45",
        "optim.warmup_steps=20",
        "optim.lr=3e-3",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(workdir):
    cfg = load_config([DEFAULT_EXP], e2e_overrides(workdir))
    return cfg, run("fit", cfg)


def test_fit_learns_to_answer(trained):
    _, summary = trained
    assert summary["metrics"]["test/acc"] > MAJORITY + 0.15, summary["metrics"]


def test_checkpoint_round_trip_reproduces_the_test_metric(trained, workdir):
    _, summary = trained
    again = run("test", load_config([DEFAULT_EXP], e2e_overrides(workdir, f"ckpt={summary['best_checkpoint']}")))
    assert again["metrics"]["test/acc"] == pytest.approx(summary["metrics"]["test/acc"], abs=1e-7)
    assert again["metrics"]["test/loss"] == pytest.approx(summary["metrics"]["test/loss"], rel=1e-5)


def test_checkpoint_holds_trainable_weights_only(trained):
    _, summary = trained
    ckpt = torch.load(summary["best_checkpoint"], map_location="cpu", weights_only=True)
    keys = list(ckpt["state_dict"])
    assert keys and not any(k.startswith(("net.text.model.", "net.image.model.")) for k in keys)
    assert any(k.endswith("router.keys") for k in keys)  # frozen random routing keys must be saved
    trainable = sum(v.numel() for v in ckpt["state_dict"].values())
    assert trainable < 0.1 * 26_000_000  # MiniLM-L6 + MobileNetV2 hold about 26M frozen weights
    assert ckpt["mope_backbones"]["signature"]["text"]["model_type"] == "bert"


def test_training_is_logged_to_tensorboard(trained):
    _, summary = trained
    scalars, images = set(), {}
    for events in Path(summary["run_dir"]).glob("events.out.*"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0})
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
        images.update({tag: acc.Images(tag) for tag in acc.Tags()["images"]})
    expected = {
        "train/loss",
        "train/task_loss",
        "train/importance_loss",
        "train/acc",
        "val/acc",
        "val/loss",
        "test/acc",
        "model/params/trainable",
        "model/params/total",
        "model/params/trainable_percent",
        "lr-AdamW/prompts",
        "lr-AdamW/head",
        "data/effective_batch_size",
    }
    routing = {
        "routing/entropy/layer_00",
        "routing/entropy/layer_05",
        "routing/max_load/layer_00",
        "routing/mi_class_relative",
        "routing/mi_group_relative",
    }
    assert expected | routing <= scalars, (expected | routing) - scalars
    # One heatmap per validation (two in this run), to step through in TensorBoard's images tab.
    for tag in ("routing/layer_expert", "routing/class_expert", "routing/group_expert", "routing/exemplars"):
        assert tag in images and [e.step for e in images[tag]] == [45, 90], tag
        assert images[tag][0].encoded_image_string.startswith(b"\x89PNG")


def test_predict_writes_one_row_per_test_question(trained, workdir):
    _, summary = trained
    out = workdir / "predictions.csv"
    run(
        "predict",
        load_config([DEFAULT_EXP], e2e_overrides(workdir, f"ckpt={summary['best_checkpoint']}", f"predict.out={out}")),
    )
    rows = list(csv.DictReader(out.open()))
    questions = json.loads((default_root() / "test/questions.json").read_text())
    assert len(rows) == sum(1 for q in questions if q[2] < 200)
    correct = sum(row["prediction"] == questions[int(row["id"].split("/")[1])][1] for row in rows) / len(rows)
    assert correct == pytest.approx(summary["metrics"]["test/acc"], abs=1e-6)


def test_exported_adapter_predicts_raw_inputs_like_mope_predict(trained, workdir):
    """The round trip a user makes: export the best checkpoint, load it with `from_pretrained` (rebuilding MiniLM
    and MobileNetV2 from their installed weights), and score easy-VQA test pairs given as PIL images and strings."""
    from PIL import Image

    import mope_lightning
    from mope_lightning.cli import main

    _, summary = trained
    out_csv, adapter = workdir / "predictions-roundtrip.csv", workdir / "adapter"
    common = [str(DEFAULT_EXP), *e2e_overrides(workdir, f"ckpt={summary['best_checkpoint']}")]
    assert main(["predict", *common, f"predict.out={out_csv}"]) == 0
    assert main(["export", *common, f"out={adapter}"]) == 0
    card = json.loads((adapter / "adapter_config.json").read_text())
    assert card["metrics"]["test/acc"] == pytest.approx(summary["metrics"]["test/acc"])  # recorded by fit
    rows = list(csv.DictReader(out_csv.open()))[:300]
    questions = json.loads((default_root() / "test/questions.json").read_text())
    picked = [questions[int(row["id"].split("/")[1])] for row in rows]
    model = mope_lightning.from_pretrained(adapter)
    images = [Image.open(default_root() / "test/images" / f"{q[2]}.png") for q in picked]
    preds = model.predict(texts=[q[0] for q in picked], images=images)
    expected = torch.tensor([[float(row[f"prob_{c}"]) for c in preds.classes] for row in rows])
    torch.testing.assert_close(preds.probs, expected, atol=1e-5, rtol=0)
    assert preds.labels == [row["prediction"] for row in rows]


def test_a_checkpoint_does_not_load_into_another_backbone(trained, workdir):
    _, summary = trained
    cfg = load_config([DEFAULT_EXP, TINY], e2e_overrides(workdir, f"ckpt={summary['best_checkpoint']}"))
    with pytest.raises(CheckpointError, match="trained with backbones"):
        run("test", cfg)
