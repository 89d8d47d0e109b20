"""The low-data protocol (stratified, nested training subsets) and `mope sweep` through the real CLI on tiny
random-init encoders: runs, aggregation, skip and resume, failures, bad sweep files, submitit's local executor."""

import csv
import json
import os
from collections import Counter

import pytest
import yaml

from mope_lightning.cli import main
from mope_lightning.data.samples import Split
from mope_lightning.data.subsets import stratified_order, training_subset
from mope_lightning.errors import DataError

from helpers import DEFAULT_EXP, ROOT, TINY


def labelled_split(labels) -> Split:
    n = len(labels)
    return Split([f"s{i}" for i in range(n)], ["t"] * n, list(labels), list(range(n)), "p", ["f"] * n)


SIZES = {0: 300, 1: 120, 2: 40, 3: 12}  # an unbalanced label set
LABELS = [c for c, n in SIZES.items() for _ in range(n)]
CLASSES = ["a", "b", "c", "d"]


@pytest.mark.parametrize("fraction", [0.03, 0.1, 0.25, 0.5])
def test_a_training_fraction_is_stratified_by_label(fraction):
    kept, note = training_subset(labelled_split(LABELS), CLASSES, fraction=fraction, seed=3)
    assert len(kept) == round(fraction * len(LABELS))
    counts = Counter(kept.labels)
    for c, n in SIZES.items():
        assert abs(counts[c] - fraction * n) <= 1, (c, counts[c], fraction * n)
    assert f"{len(kept):,} of {len(LABELS):,} samples (data.train_fraction={fraction:g}" in note


def test_subsets_are_nested_for_one_seed_and_redrawn_for_another():
    split = labelled_split(LABELS)
    ids = {f: set(training_subset(split, CLASSES, fraction=f, seed=0)[0].ids) for f in (0.01, 0.05, 0.2, 0.6, 1.0)}
    assert ids[0.01] < ids[0.05] < ids[0.2] < ids[0.6] < ids[1.0]
    shots = [set(training_subset(split, CLASSES, shots=k, seed=0)[0].ids) for k in (1, 4, 12)]
    assert shots[0] < shots[1] < shots[2]
    assert set(training_subset(split, CLASSES, fraction=0.2, seed=1)[0].ids) != ids[0.2]
    assert stratified_order(LABELS, 5) == stratified_order(LABELS, 5)


def test_shots_per_class_single_and_multi_label():
    kept, _ = training_subset(labelled_split(LABELS), CLASSES, shots=5, seed=0)
    assert Counter(kept.labels) == {c: 5 for c in SIZES}
    multi = [[0], [0, 1], [1], [1, 2], [2], [0, 2], [0], [1], [2], [0, 1, 2]] * 4
    kept, _ = training_subset(labelled_split(multi), CLASSES[:3], shots=3, seed=0)
    per_label = Counter(c for label in kept.labels for c in label)
    assert all(per_label[c] >= 3 for c in range(3)) and len(kept) < len(multi)
    with pytest.raises(DataError, match=r"data.shots_per_class=13: class 'd' has only 12 training sample\(s\)"):
        training_subset(labelled_split(LABELS), CLASSES, shots=13)


def tiny_args(tmp_path, *extra):
    return [
        str(DEFAULT_EXP),
        str(TINY),
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.train_images=40",
        "data.test_images=10",
        "trainer.enable_progress_bar=false",
        *extra,
    ]


def test_check_data_shows_the_subset_and_bad_sizes_name_the_key(tmp_path, capsys):
    assert main(["check-data", *tiny_args(tmp_path, "data.train_fraction=0.25")]) == 0
    assert "note: train subset: 92 of 367 samples (data.train_fraction=0.25" in capsys.readouterr().out
    assert main(["check-data", *tiny_args(tmp_path, "data.train_fraction=1.5")]) == 2
    assert "data.train_fraction: must be in (0, 1], got 1.5" in capsys.readouterr().err
    assert main(["check-data", *tiny_args(tmp_path, "data.shots_per_class=500")]) == 2
    assert "data.shots_per_class=500: class" in capsys.readouterr().err


# --- mope sweep ---------------------------------------------------------------------------------------------------


def write_sweep(tmp_path, name="tiny", **spec) -> str:
    base = {
        "name": name,
        "experiment": [str(DEFAULT_EXP), str(TINY)],
        "overrides": [
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.train_images=40",
            "data.test_images=10",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
        ],
        "seeds": [1, 2],
        "metric": "test/acc",
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**base, **spec}, sort_keys=False))
    return str(path)


def read_results(out) -> list[dict]:
    return list(csv.DictReader((out / "results.csv").open()))


def test_a_sweep_runs_every_cell_and_seed_aggregates_and_resumes(tmp_path, capsys):
    compare = [{"a": "model.mope.num_experts=2", "b": "model.mope.num_experts=1"}]
    sweep = write_sweep(tmp_path, grid={"model.mope.num_experts": [1, 2]}, compare=compare)
    out = tmp_path / "out"
    assert main(["sweep", sweep, f"out={out}"]) == 0
    rows = read_results(out)
    assert [(r["model.mope.num_experts"], r["seed"], r["status"]) for r in rows] == [
        ("1", "1", "finished"),
        ("1", "2", "finished"),
        ("2", "1", "finished"),
        ("2", "2", "finished"),
    ]
    assert all(0 <= float(r["test/acc"]) <= 1 and int(r["trainable_params"]) > 0 for r in rows)
    assert rows[0]["trainable_params"] != rows[2]["trainable_params"]  # the expert count changes the model
    summary = (out / "summary.md").read_text()
    accs = [float(r["test/acc"]) for r in rows[:2]]
    mean, std = sum(accs) / 2, abs(accs[0] - accs[1]) / 2**0.5
    assert "| 1 | 2/2 | " in summary and f"{mean:.4f} ± {std:.4f}" in summary
    differences = [float(rows[2 + s]["test/acc"]) - float(rows[s]["test/acc"]) for s in (0, 1)]  # 2 experts - 1
    assert f"| 1,2 | {differences[0]:+.4f}, {differences[1]:+.4f} |" in summary.split("## Paired comparisons")[1]
    assert (out / "plot_model.mope.num_experts.png").stat().st_size > 1000
    assert (out / "plot_trainable_params.png").is_file()
    assert (out / "routing_shape.png").stat().st_size > 1000  # easy-VQA's sample attributes, a panel per run
    seeds = [
        json.loads((out / "model.mope.num_experts=1" / f"seed_{s}" / "version_0" / "fit_metrics.json").read_text())[
            "metrics"
        ]
        for s in (1, 2)
    ]
    assert seeds[0] != seeds[1]  # two seeds, two different runs
    capsys.readouterr()

    assert main(["sweep", sweep, f"out={out}"]) == 0  # everything is finished: nothing trains
    assert "4 finished, 0 to run" in capsys.readouterr().out
    assert not list(out.rglob("version_1"))
    moved = out.rename(tmp_path / "moved")  # a sweep folder copied elsewhere (or committed) is still finished
    assert main(["sweep", sweep, f"out={moved}"]) == 0 and "4 finished, 0 to run" in capsys.readouterr().out
    out = moved.rename(out)
    # Another command's settings (robustness, analyze, ...) do not make a finished fit another run: their defaults may
    # move between versions.
    stored = out / "model.mope.num_experts=1" / "seed_1" / "version_0" / "config.yaml"
    config = yaml.safe_load(stored.read_text())
    config["robustness"]["kinds"], config["analyze"]["split"] = ["text"], "test"
    stored.write_text(yaml.safe_dump(config))
    assert main(["sweep", sweep, f"out={out}"]) == 0 and "4 finished, 0 to run" in capsys.readouterr().out

    # A run that stopped before writing its metrics resumes from its last.ckpt, and only that run runs.
    (out / "model.mope.num_experts=2" / "seed_1" / "version_0" / "fit_metrics.json").unlink()
    assert main(["sweep", sweep, f"out={out}"]) == 0
    assert "3 finished, 1 to run" in capsys.readouterr().out
    status = json.loads((out / "model.mope.num_experts=2" / "seed_1" / "sweep_status.json").read_text())
    assert status["status"] == "finished" and status["resumed_from"].endswith("version_0/checkpoints/last.ckpt")
    assert not list(out.rglob("version_1"))  # resumed in its own run directory
    assert [r["status"] for r in read_results(out)] == ["finished"] * 4


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            {"grid": {"model.mope.num_expert": [1, 2]}},
            "grid.model.mope.num_expert[0]: unknown key 'model.mope.num_expert'",
        ),
        ({"grid": {"model.mope.num_experts": []}}, "grid.model.mope.num_experts: the axis has no values"),
        (
            {"grid": {"method": {"pt": {"overlays": ["experiments/overlays/nope.yaml"]}}}},
            "grid.method.pt.overlays[0]: config file experiments/overlays/nope.yaml not found",
        ),
        ({"seeds": []}, "seeds: give a non-empty list of integers"),
        ({"gird": {}}, "unknown key 'gird' (did you mean 'grid'?)"),
        (
            {"grid": {"model.mope.num_experts": [1, 2]}, "compare": [{"a": "model.mope.num_experts=3", "b": "x"}]},
            "compare[0].a: 'model.mope.num_experts=3' is not a cell of this sweep (model.mope.num_experts=1, "
            "model.mope.num_experts=2)",
        ),
        ({"compare": {"a": "default", "b": "default"}}, "compare: give a list of {a: CELL, b: CELL}"),
    ],
)
def test_bad_sweep_files_stop_before_any_run(tmp_path, capsys, spec, message):
    sweep = write_sweep(tmp_path, **spec)
    assert main(["sweep", sweep, f"out={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mope: error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_the_slurm_launcher_records_a_failing_run_while_the_others_finish(tmp_path, capsys, monkeypatch):
    """The job array through submitit's local executor; one cell fails (its batch is larger than its train split).
    Without OMP_NUM_THREADS, the sweep gives each job its share of the cores through submitit's `local_setup` (an
    option the local executor refused would stop the sweep with exit 2)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    sweep = write_sweep(
        tmp_path, grid={"method": {"mope": {}, "too_big": {"overrides": ["data.batch_size=1000"]}}}, seeds=[7]
    )
    out = tmp_path / "out"
    assert main(["sweep", sweep, f"out={out}", "launcher=submitit-local"]) == 1
    captured = capsys.readouterr()
    assert "submitted 2 run(s) as job array" in captured.out
    assert "method=too_big seed 7: mope: error:" in captured.err and "fewer than data.batch_size=1000" in captured.err
    rows = read_results(out)
    assert [(r["method"], r["status"]) for r in rows] == [("mope", "finished"), ("too_big", "failed")]
    assert "fewer than data.batch_size=1000" in rows[1]["error"] and float(rows[0]["test/acc"]) >= 0
    assert "## Failed runs" in (out / "summary.md").read_text()
    assert list((out / ".submitit").rglob("*_log.out"))  # submitit ran them as jobs


def test_local_jobs_get_their_share_of_the_cores_as_threads(monkeypatch):
    from lightning.fabric.utilities import distributed

    from mope_lightning.sweeps.submit import local_thread_setup

    monkeypatch.setattr(distributed, "_num_cpus_available", lambda: 2)
    assert local_thread_setup(2, {}) == ["export OMP_NUM_THREADS=1"]
    assert local_thread_setup(12, {}) == ["export OMP_NUM_THREADS=1"]
    assert local_thread_setup(2, {"OMP_NUM_THREADS": "4"}) == []  # the user's choice stands
    monkeypatch.setattr(distributed, "_num_cpus_available", lambda: 16)
    assert local_thread_setup(2, {}) == ["export OMP_NUM_THREADS=8"]


def start_sweep(sweep: str, out):
    """`mope sweep` in a child process of its own process group, so that its fit can be reaped after a test."""
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", "mope_lightning", "sweep", sweep, f"out={out}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )


def test_sigterm_stops_the_sweep_after_its_run_saved_its_weights(tmp_path):
    import signal
    import time

    sweep = write_sweep(tmp_path, seeds=[1])
    spec = yaml.safe_load(open(sweep))
    spec["overrides"] += ["trainer.max_epochs=1000"]  # runs until it is stopped; last.ckpt at every validation
    open(sweep, "w").write(yaml.safe_dump(spec, sort_keys=False))
    out = tmp_path / "out"
    proc = start_sweep(sweep, out)
    try:
        last = out / "default" / "seed_1" / "version_0" / "checkpoints" / "last.ckpt"
        deadline = time.time() + 240
        while not last.is_file() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert last.is_file(), proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGTERM)  # to the sweep alone: it passes the signal on to the running fit
        _, err = proc.communicate(timeout=120)
    finally:
        try:  # never leave a 1000-epoch fit behind when an assertion above fails
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 143, err[-3000:]
    assert "sweep interrupted during default seed 1" in err and "Traceback" not in err
    (row,) = read_results(out)
    assert row["status"] == "interrupted" and "SIGTERM" in row["error"]
    assert "0 failed, 1 interrupted" in (out / "summary.md").read_text()


def test_sigterm_before_the_fit_is_ready_still_stops_the_sweep(tmp_path):
    """The fit installs its own SIGTERM handler only once it trains; a signal that reaches it while it imports or
    reads data kills it outright. That run is interrupted, not failed, and the sweep must not go on to the next."""
    import signal
    import subprocess
    import time

    sweep = write_sweep(tmp_path, seeds=[1, 2])
    out = tmp_path / "out"
    proc = start_sweep(sweep, out)
    try:
        deadline = time.time() + 120
        children = ""
        while not children and time.time() < deadline and proc.poll() is None:
            children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
            time.sleep(0.05)
        assert children, proc.communicate()[1][-3000:]
        time.sleep(0.2)  # the sweep forwards signals from just after it started the fit
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 143, err[-3000:]
    assert "sweep interrupted during default seed 1" in err and "Traceback" not in err
    rows = {row["seed"]: row for row in read_results(out)}
    assert rows["1"]["status"] == "interrupted" and "SIGTERM" in rows["1"]["error"], rows
    assert not (out / "default" / "seed_2").exists()  # the next run never started
