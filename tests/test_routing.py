"""Routing statistics, the routing report of `mope analyze`, and their correctness under 2-process DDP."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from mope_lightning.cli import main
from mope_lightning.errors import CheckpointError, ConfigError
from mope_lightning.analysis.routing import RoutingStats, attribute_routing, mutual_information
from mope_lightning.cli.analyze import analyze
from mope_lightning.cli.fit import run

from helpers import DEFAULT_EXP, TINY, tiny_config


def test_routing_stats_hand_worked():
    stats = RoutingStats(num_layers=1, num_experts=2, num_classes=2)
    probs = torch.tensor([[[1.0, 0.0]], [[0.5, 0.5]], [[0.0, 1.0]]])  # (B=3, L=1, K=2)
    stats.update(probs[:2], torch.tensor([0, 0]), torch.tensor([0, 1]))
    stats.update(probs[2:], torch.tensor([1]), torch.tensor([2]))
    out = stats.compute()
    torch.testing.assert_close(out["layer_expert"], torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(out["class_expert"][:, 0], torch.tensor([[0.75, 0.25], [0.0, 1.0]]))
    # one sample of three has ln 2; torchmetrics squeezes one-element results, hence the reshape
    torch.testing.assert_close(out["entropy"].reshape(1), torch.log(torch.tensor([2.0])) / 3)
    assert out["sample_index"].tolist() == [0, 1, 2] and out["sample_routing"].shape == (3, 1, 2)


def test_mutual_information_is_one_for_perfect_specialisation_and_zero_for_none():
    counts = torch.tensor([10.0, 10.0])
    perfect = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # class 0 -> expert 0, class 1 -> expert 1
    bits, relative = mutual_information(perfect, counts)
    assert bits.item() == pytest.approx(1.0) and relative.item() == pytest.approx(1.0)
    _, relative = mutual_information(torch.full((2, 1, 2), 0.5), counts)
    assert relative.item() == pytest.approx(0.0, abs=1e-6)
    # Grouping classes {0, 1} against {2}: experts that split within a group carry no group information.
    three = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[0.5, 0.5]]])
    _, grouped = mutual_information(three, torch.tensor([10.0, 10.0, 20.0]), [[0, 1], [2]])
    assert grouped.item() == pytest.approx(0.0, abs=1e-6)
    # A collapsed router (every class to expert 0) whose rounding-sized leaks differ by class: no information, and
    # the relative figure is 0, not the ratio of two rounding errors (it read -0.12 and 2.0 before it was guarded).
    leak = torch.tensor([[[0.0, 1e-13, 0.0, 0.0]], [[0.0, 0.0, 1e-13, 0.0]], [[0.0, 0.0, 0.0, 1e-13]]])
    bits, relative = mutual_information(torch.tensor([1.0, 0.0, 0.0, 0.0]) + leak, torch.tensor([10.0, 20.0, 30.0]))
    assert 0.0 <= bits.item() < 1e-9 and relative.item() == 0.0


def test_attribute_mutual_information_of_a_router_that_copies_or_ignores_it():
    # 12 samples, an attribute with 3 values (4 samples each), 3 experts; routing is hand-built.
    values = [["circle"], ["square"], ["triangle"]] * 4
    index = torch.arange(12)
    copies = torch.eye(3)[torch.arange(12) % 3].reshape(12, 1, 3)  # value k -> expert k, hard
    names, value_expert, weight, unknown = attribute_routing(copies, index, values)
    assert names == ["circle", "square", "triangle"] and weight.tolist() == [4.0, 4.0, 4.0] and unknown == 0
    bits, relative = mutual_information(value_expert, weight)
    assert bits.item() == pytest.approx(torch.log2(torch.tensor(3.0)).item()) and relative.item() == pytest.approx(1.0)
    ignores = torch.eye(3)[(torch.arange(12) // 3) % 3].reshape(12, 1, 3)  # by position: every value alike
    bits, relative = mutual_information(*attribute_routing(ignores, index, values)[1:3])
    assert bits.item() == pytest.approx(0.0, abs=1e-9) and relative.item() == pytest.approx(0.0, abs=1e-9)
    # Samples without a value are counted and left out; a sample with two values weighs half on each.
    values = [["a"], [], ["a", "b"], ["b"]]
    names, value_expert, weight, unknown = attribute_routing(
        torch.eye(2)[[0, 0, 1, 1]].reshape(4, 1, 2), torch.arange(4), values
    )
    assert unknown == 1 and weight.tolist() == [1.5, 1.5]
    torch.testing.assert_close(value_expert[:, 0], torch.tensor([[2 / 3, 1 / 3], [0.0, 1.0]]))


def test_a_sweeps_routing_figure_has_a_panel_per_finished_run_and_skips_the_rest(tmp_path):
    from mope_lightning.analysis.sweep_routing import routing_figures, write_routing_figures

    def run_dir(name, shape_routing, mi):
        path = tmp_path / name
        path.mkdir()
        ids = [f"id{i}" for i in range(41)]  # too many values to draw: left out
        attributes = {
            "shape": {"values": ["circle", "square"], "routing": shape_routing, "weight": [5, 5], "unknown": 0},
            "id": {"values": ids, "routing": [[1.0, 0.0]] * 41, "weight": [1] * 41, "unknown": 0},
        }
        (path / "routing_val.json").write_text(json.dumps({"attributes": attributes, "mi_shape_relative": mi}))
        return str(path)

    rows = [
        {"cell": "w=0", "seed": 1, "status": "finished", "run_dir": run_dir("a", [[1, 0], [0, 1]], [1.0, 0.5])},
        {"cell": "w=0", "seed": 2, "status": "finished", "run_dir": run_dir("b", [[0.5, 0.5], [0.5, 0.5]], [0.0])},
        {"cell": "w=1", "seed": 1, "status": "finished", "run_dir": run_dir("c", [[0, 1], [1, 0]], [1.0])},
        {"cell": "w=1", "seed": 2, "status": "failed", "run_dir": run_dir("d", [[0, 1], [1, 0]], [1.0])},
        {"cell": "w=1", "seed": 3, "status": "pending", "run_dir": str(tmp_path / "none")},
    ]
    figures = routing_figures(rows)
    assert list(figures) == ["routing_shape.png"]
    drawn = [ax for ax in figures["routing_shape.png"].axes if ax.images]
    assert [ax.get_title() for ax in drawn] == [
        "w=0\nseed 1: relative MI 0.750",
        "w=0\nseed 2: relative MI 0.000",
        "w=1\nseed 1: relative MI 1.000",
    ]
    assert drawn[2].images[0].get_array().tolist() == [[0, 1], [1, 0]]
    assert [t.get_text() for t in drawn[0].get_yticklabels()] == ["circle", "square"]

    # Written into the sweep folder, and drawn again only when a panel would change.
    out = tmp_path / "sweep"
    out.mkdir()
    assert [p.name for p in write_routing_figures(out, rows)] == ["routing_shape.png"]
    assert write_routing_figures(out, rows) == []
    rows[3]["status"] = "finished"  # another run finished: a fourth panel
    assert [p.name for p in write_routing_figures(out, rows)] == ["routing_shape.png"]
    os.utime(tmp_path / "a" / "routing_val.json", ns=(1, 1))  # a routing file rewritten
    assert [p.name for p in write_routing_figures(out, rows)] == ["routing_shape.png"]
    assert write_routing_figures(out, rows) == []


def test_easy_vqa_shape_and_colour_attributes_agree_with_the_images():
    """The attributes are read from the dataset's questions; the pictures must say the same. The shape's colour is
    the most frequent colour after the background (one colour per name across images), and its fill of its bounding
    box tells the shape: about 1 for a rectangle, pi/4 for a circle, 1/2 for a triangle."""
    import numpy as np
    from PIL import Image

    from mope_lightning.training.trainer_config import load_config
    from mope_lightning.data import DATAMODULES

    dm = DATAMODULES["easy_vqa"](load_config([DEFAULT_EXP], ["data.test_images=60"]).data)
    scan = dm.index()
    test = scan.splits["test"]
    seen, rgb_of = set(), {}
    for row, j in enumerate(test.media_index):
        shape, color = test.attributes["shape"][row], test.attributes["color"][row]
        if j in seen or not shape or not color:
            continue
        seen.add(j)
        pixels = np.asarray(Image.open(scan.pools["test"][j]).convert("RGB")).reshape(-1, 3)
        colours, counts = np.unique(pixels, axis=0, return_counts=True)
        ink = colours[np.argsort(-counts)[1]]
        rgb_of.setdefault(color[0], set()).add(tuple(ink))
        ys, xs = np.nonzero((pixels == ink).all(1).reshape(64, 64))
        fill = len(ys) / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
        guess = "rectangle" if fill > 0.9 else "circle" if fill > 0.62 else "triangle"
        assert guess == shape[0], (scan.pools["test"][j], shape, color, fill)
    assert len(seen) >= 40 and all(len(v) == 1 for v in rgb_of.values()), rgb_of
    assert len({next(iter(v)) for v in rgb_of.values()}) == len(rgb_of)  # different names, different colours


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("routing")
    summary = run("fit", tiny_config(tmp, "data.train_images=24"))
    return tmp, summary


def analyze_args(tmp, summary, out, *extra):
    return [
        str(DEFAULT_EXP),
        str(TINY),
        f"data.cache_dir={tmp / 'cache'}",
        "data.train_images=24",
        "data.test_images=10",
        f"ckpt={summary['best_checkpoint']}",
        f"out={out}",
        "trainer.enable_progress_bar=false",
        *extra,
    ]


def test_analyze_writes_a_routing_report(tiny_run, capsys):
    tmp, summary = tiny_run
    out = tmp / "report"
    assert main(["analyze", *analyze_args(tmp, summary, out)]) == 0
    for name in (
        "summary.md",
        "routing.csv",
        "routing.json",
        "layer_expert.png",
        "class_expert.png",
        "group_expert.png",
        "exemplars.png",
    ):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "routing.csv").open()))
    assert len(rows) == 24 and rows[0]["id"].startswith("train/") and rows[0]["label"]
    assert abs(sum(float(rows[0][f"mean_e{k}"]) for k in range(4)) - 1.0) < 1e-4
    text = (out / "summary.md").read_text()
    assert "MI class (relative)" in text and "MI group (relative)" in text and "expert 3:" in text
    # routing by the samples' attributes: easy-VQA's image shape and colour and the question type
    assert "| shape | 3 | 0 |" in text and "| color | " in text and "| question_type | 3 | 0 |" in text
    assert (out / "shape_expert.png").is_file() and (out / "color_expert.png").is_file()
    report = json.loads((out / "routing.json").read_text())
    assert set(report["attributes"]) == {"shape", "color", "question_type"}
    assert 0.0 <= sum(report["mi_shape_relative"]) / len(report["mi_shape_relative"]) <= 1.0
    # An existing report is never overwritten without overwrite=true.
    assert main(["analyze", *analyze_args(tmp, summary, out)]) == 2
    assert "already holds a routing report" in capsys.readouterr().err
    assert main(["analyze", *analyze_args(tmp, summary, out, "overwrite=true", "split=test")]) == 0
    assert len(list(csv.DictReader((out / "routing.csv").open()))) == 98


def test_analyze_refuses_a_model_without_router_and_an_unknown_split(tmp_path, tiny_run, capsys):
    tmp, summary = tiny_run
    assert main(["analyze", *analyze_args(tmp, summary, tmp_path / "r", "split=train")]) == 2
    assert "analyze.split: 'train' is not one of val, test" in capsys.readouterr().err
    baseline = run("fit", tiny_config(tmp_path, "data.train_images=24", "model.fusion=late_concat"))
    cfg = tiny_config(
        tmp_path,
        "data.train_images=24",
        "model.fusion=late_concat",
        f"ckpt={baseline['best_checkpoint']}",
        f"analyze.out={tmp_path / 'r'}",
    )
    with pytest.raises(CheckpointError, match="model.fusion=late_concat\\) has no router"):
        analyze(cfg)
    with pytest.raises(ConfigError, match="analyze needs out=DIR"):
        analyze(tiny_config(tmp_path, f"ckpt={summary['best_checkpoint']}"))
    assert main(["analyze", *analyze_args(tmp, summary, tmp_path / "r", "analyze.attributes=[size]")]) == 2
    assert (
        "analyze.attributes: 'size' is not an attribute of easy_vqa's samples; it has color, question_type, shape"
    ) in capsys.readouterr().err


def validate_routing(tmp, summary, devices):
    out = tmp / f"validate_{devices}"
    args = [
        sys.executable,
        "-m",
        "mope_lightning",
        "validate",
        str(DEFAULT_EXP),
        str(TINY),
        f"data.cache_dir={tmp / 'cache'}",
        "data.train_images=24",
        "data.test_images=10",
        f"ckpt={summary['best_checkpoint']}",
        f"trainer.default_root_dir={out}",
        "trainer.accelerator=cpu",
        f"trainer.devices={devices}",
        "trainer.enable_progress_bar=false",
        "data.eval_batch_size=5",
        "trainer.limit_val_batches=1.0",
        *(["trainer.strategy=ddp"] if devices > 1 else []),
    ]
    proc = subprocess.run(
        args, capture_output=True, text=True, timeout=600, cwd=tmp, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(out.rglob("routing_val.json")).read_text())


def test_routing_statistics_under_two_process_ddp_equal_one_process(tiny_run):
    # 24 validation samples: split evenly over 2 ranks, so DistributedSampler adds no duplicates.
    tmp, summary = tiny_run
    one, two = validate_routing(tmp, summary, 1), validate_routing(tmp, summary, 2)
    assert one["class_count"] == two["class_count"] and sum(one["class_count"]) == 24
    for key in (
        "layer_expert",
        "entropy",
        "max_load",
        "mi_class_relative",
        "mi_group_relative",
        "mi_shape_relative",
        "mi_color_relative",
        "mi_question_type_relative",
    ):
        torch.testing.assert_close(torch.tensor(two[key]), torch.tensor(one[key]), atol=1e-5, rtol=1e-4)
