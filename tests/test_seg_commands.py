"""Segmentation through every command (issue 39): check-data, fit, test, predict (mask PNGs and their index), analyze,
export and `from_pretrained(...).predict` (masks), on generated copies of ADE20K (pMoE of two tiny random-init ViTs,
experiments/ade20k.yaml) and Kvasir-SEG (the linear head on a tiny MobileNetV2, experiments/kvasir_seg.yaml)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mope_lightning
from mope_lightning.cli import main
from mope_lightning.data.masks import read_mask
from mope_lightning.errors import ConfigError
from mope_lightning.mask_predictions import INDEX, MaskFolder, claim_mask_folder, mask_file_name

from helpers import EXPERIMENTS
from helpers.cli import experiment_args, mope, one_error
from helpers.seg_datasets import make_ade20k, make_kvasir

LINEAR_PROBE = (  # the linear head on the frozen (tiny, random-init) MobileNetV2's last grid
    "model.fusion=linear_probe",
    "model.image_encoder.library=torchvision",
    "model.image_encoder.name=mobilenet_v2",
    "model.head=linear",
)
SETUPS = {
    "pmoe": ("ade20k.yaml", make_ade20k, ()),
    "linear": ("kvasir_seg.yaml", make_kvasir, LINEAR_PROBE),
}


class Run:
    """A setup's generated data, experiment arguments and trained checkpoint (one tiny fit per test module)."""

    def __init__(self, root: Path, name: str):
        experiment, make, extra = SETUPS[name]
        self.root, self.data = root, make(root / "data")
        self.args = experiment_args(
            root, EXPERIMENTS / experiment, f"data.root={self.data}", "data.num_workers=0", *extra
        )
        assert main(["fit", *self.args, "trainer.max_steps=2"]) == 0
        self.fit_metrics = json.loads((root / "runs" / "version_0" / "fit_metrics.json").read_text())
        self.ckpt = self.fit_metrics["tested_weights"]
        self.images = sorted(p for p in self.data.rglob("*.jpg") if "images" in p.parts)
        self._predicted: dict[str, Path] = {}

    def predicted(self) -> Path:
        """The folder `mope predict` wrote for the test split (once)."""
        if "split" not in self._predicted:
            out = self.root / "masks"
            assert main(["predict", *self.args, f"ckpt={self.ckpt}", f"predict.out={out}"]) == 0
            self._predicted["split"] = out
        return self._predicted["split"]


@pytest.fixture(scope="module", params=list(SETUPS))
def run(request, tmp_path_factory):
    return Run(tmp_path_factory.mktemp(request.param), request.param)


def index_rows(folder: Path) -> list[dict]:
    with open(folder / INDEX, newline="") as fh:
        return list(csv.DictReader(fh))


def source_image(run: Run, sample_id: str) -> Path:
    """The image file of a test sample (ids are the image's path under its images folder, less the suffix)."""
    matches = [p for p in run.images if p.with_suffix("").as_posix().endswith(sample_id)]
    assert len(matches) == 1, (sample_id, matches)
    return matches[0]


# --- the command path ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("experiment, make", [("ade20k.yaml", make_ade20k), ("kvasir_seg.yaml", make_kvasir)])
def test_check_data_reads_the_experiments_generated_releases(tmp_path, capsys, experiment, make):
    root = make(tmp_path / "data")
    code, out, _ = mope(
        capsys, ["check-data", *experiment_args(tmp_path, EXPERIMENTS / experiment, f"data.root={root}")]
    )
    assert code == 0 and "the dataset is clean" in out and "labels (images per class)" in out


def test_fit_and_test_log_test_miou(run, capsys):
    assert 0 <= run.fit_metrics["metrics"]["test/miou"] <= 1
    code, out, _ = mope(capsys, ["test", *run.args, f"ckpt={run.ckpt}"])
    assert code == 0
    logged = {line.split()[0]: float(line.split()[1]) for line in out.splitlines() if line.strip().startswith("test/")}
    assert logged["test/miou"] == pytest.approx(run.fit_metrics["metrics"]["test/miou"], abs=1e-4)


def test_predict_writes_one_mask_png_per_sample_at_its_original_size(run):
    out = run.predicted()
    rows = index_rows(out)
    classes = [k[len("pixels_") :] for k in rows[0] if k.startswith("pixels_")]
    assert sorted(p.name for p in out.iterdir()) == sorted([INDEX, *(r["mask"] for r in rows)])
    for row in rows:
        mask = read_mask(out / row["mask"])  # by its palette indices: the class indices
        with Image.open(source_image(run, row["id"])) as image:
            assert mask.shape == (image.height, image.width)
        counts = np.bincount(mask.ravel(), minlength=len(classes))
        assert [int(row[f"pixels_{c}"]) for c in classes] == counts.tolist()
        assert row["classes"].split("|") == [c for c, n in zip(classes, counts) if n]


def test_exported_adapter_predicts_the_masks_mope_predict_wrote(run, tmp_path):
    adapter = tmp_path / "adapter"
    assert main(["export", *run.args, f"ckpt={run.ckpt}", f"out={adapter}"]) == 0
    model = mope_lightning.from_pretrained(adapter)
    rows = index_rows(run.predicted())
    images = [source_image(run, row["id"]) for row in rows]
    preds = model.predict(images=images, batch_size=16)
    assert isinstance(preds, mope_lightning.SegmentationPredictions) and len(preds.masks) == len(rows)
    for row, mask in zip(rows, preds.masks):
        assert mask.dtype == torch.long
        assert np.array_equal(mask.numpy(), read_mask(run.predicted() / row["mask"]))
    # a PIL image and its uint8 tensor give the same mask, at the image's own size
    with Image.open(images[0]) as image:
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
        again = model.predict(images=[image.convert("RGB"), pixels]).masks
    assert all(torch.equal(m, preds.masks[0]) for m in again)


def test_predict_of_new_image_rows_writes_their_masks(run, tmp_path):
    images = run.images[:2]
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"id": f"row {i}/x", "image": str(p)}) + "\n" for i, p in enumerate(images)))
    assert main(["predict", *run.args, f"ckpt={run.ckpt}", f"predict.input={rows}"]) == 0
    out = tmp_path / "rows.masks"  # the default: beside the rows file
    written = index_rows(out)
    assert [r["id"] for r in written] == ["row 0/x", "row 1/x"] and written[0]["mask"] == "row_0_x.png"
    for row, image in zip(written, images):
        with Image.open(image) as img:
            assert read_mask(out / row["mask"]).shape == (img.height, img.width)


def test_predict_replaces_only_a_mask_folder_it_wrote(run, tmp_path, capsys):
    out = run.predicted()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["predict", *run.args, f"ckpt={run.ckpt}", f"predict.out={out}"]) == 2
    one_error(capsys, "predict.out", "already holds", "predict.overwrite=true")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    for target in (foreign, out):
        if target == out:
            (out / "notes.txt").write_text("keep")  # a file mope did not write, in mope's folder
        argv = ["predict", *run.args, f"ckpt={run.ckpt}", f"predict.out={target}", "predict.overwrite=true"]
        assert main(argv) == 2
        one_error(capsys, "predict.out", "notes.txt")
        assert (target / "notes.txt").read_text() == "keep"
    (out / "notes.txt").unlink()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_analyze_reports_pmoe_routing_per_image_or_names_the_missing_router(run, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["analyze", *run.args, f"ckpt={run.ckpt}", f"out={out}", "analyze.split=test"])
    if run.args[0].endswith("kvasir_seg.yaml"):  # the linear probe has no router: one message, no report
        assert code == 2 and not out.exists()
        one_error(capsys, "has no router", "model.fusion=linear_probe", "analyze a MoPE or pMoE checkpoint")
        return
    assert code == 0
    report = json.loads((out / "routing.json").read_text())
    assert report["dispatch_path"] and "classes" in report["attributes"] and "labels" not in report["attributes"]
    with open(out / "routing.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    predicted = index_rows(run.predicted())
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in predicted)  # one row per test image
    assert all(r["label"] and "/" not in r["label"] for r in rows)  # its mask's classes, not the mask's path


# --- the mask folder -------------------------------------------------------------------------------------------------


def test_mask_folder_round_trips_class_indices_and_names_files_uniquely(tmp_path):
    classes = [f"c{k}" for k in range(150)]
    masks = [torch.randint(0, 150, (5, 7)), torch.randint(0, 150, (3, 2))]
    folder = MaskFolder(tmp_path / "out", classes)
    folder.add(["a/b", "a_b"], masks)
    out = folder.commit()
    rows = index_rows(out)
    assert [r["mask"] for r in rows] == ["a_b.png", "a_b_2.png"]
    for row, mask in zip(rows, masks):
        assert np.array_equal(read_mask(out / row["mask"]), mask.numpy())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    with pytest.raises(ConfigError, match="predict.overwrite=true"):
        claim_mask_folder(out, [], overwrite=False)
    assert claim_mask_folder(out, [], overwrite=True) == out


def test_mask_file_names_are_safe_and_unique():
    taken: set[str] = set()
    names = [mask_file_name(i, taken) for i in ["../x", "x", "", "..", "a b", "a_b"]]
    assert len(set(names)) == len(names) and all("/" not in n and not n.startswith(".") for n in names)
