"""Paired comparisons of sweep cells (sweeps/paired.py): the per-seed differences, the exact sign-flip test, cells of
another sweep read from its results.csv, and a sweep file's `compare:` section checked with one message per fault."""

import csv
import itertools
import statistics
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mope_lightning.errors import ConfigError
from mope_lightning.sweeps.paired import (
    Comparison,
    paired_markdown,
    paired_rows,
    read_comparisons,
    sign_flip_p,
)


def rows_of(cell: str, values: dict[int, float], status: str = "finished") -> list[dict]:
    return [{"cell": cell, "seed": s, "status": status, "metrics": {"test/acc": v}} for s, v in values.items()]


def test_sign_flip_p_is_exact():
    assert sign_flip_p([0.1] * 5) == 2 / 32  # only all-positive and all-negative reach |mean| 0.1
    assert sign_flip_p([0.2, -0.2]) == 1.0  # the observed mean 0 is reached by every assignment
    # sums of the 8 assignments of [0.3, 0.1, -0.1]: +++ 0.3, ++- 0.5, +-+ 0.1, +-- 0.3 and their negations
    assert sign_flip_p([0.3, 0.1, -0.1]) == 6 / 8


@given(st.lists(st.floats(-1, 1, allow_nan=False), min_size=2, max_size=8))
def test_sign_flip_p_is_a_probability_unchanged_by_negation(differences):
    p = sign_flip_p(differences)
    assert 2 / 2 ** len(differences) - 1e-12 <= p <= 1.0
    assert sign_flip_p([-d for d in differences]) == p
    brute = sum(
        abs(statistics.fmean(s * d for s, d in zip(signs, differences))) >= abs(statistics.fmean(differences)) - 1e-12
        for signs in itertools.product((1, -1), repeat=len(differences))
    ) / 2 ** len(differences)
    assert p == brute


def test_many_seeds_get_a_sampled_p_value_in_bounded_time():
    p = sign_flip_p([0.1] * 30)  # every seed one way: only the observed assignment reaches it among the draws
    assert p == 1 / (2**16 + 1)
    assert sign_flip_p([0.1, -0.1] * 15) == 1.0


def test_only_seeds_both_cells_finished_are_paired(tmp_path):
    rows = rows_of("a", {1: 0.8, 2: 0.7, 3: 0.9}) + rows_of("b", {1: 0.6, 2: 0.75}) + rows_of("b", {3: 0.1}, "failed")
    [record] = paired_rows([Comparison("a", "b", ("test/acc",))], rows, tmp_path / "out")
    assert record["seeds"] == [1, 2]
    assert record["differences"] == pytest.approx([0.2, -0.05])
    stats = record["stats"]
    assert stats["mean"] == pytest.approx(0.075) and stats["a_wins"] == 1 and stats["b_wins"] == 1
    assert stats["std"] == pytest.approx(statistics.stdev([0.2, -0.05]))
    line = paired_markdown([record])[-1]
    assert line.startswith("| a | b | test/acc | 1,2 | +0.2000, -0.0500 | +0.0750 ± ")


def write_results(folder: Path, rows: list[tuple[str, int, str, str]]) -> None:
    folder.mkdir(parents=True)
    with open(folder / "results.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["method", "seed", "status", "test/acc", "trainable_params", "train_seconds", "run_dir", "error"]
        )
        for method, seed, status, acc in rows:
            writer.writerow([method, seed, status, acc, 10, 1.0, f"method={method}/seed_{seed}/version_0", ""])


def test_a_cell_of_a_sibling_sweep_is_read_from_its_results(tmp_path):
    write_results(tmp_path / "other", [("mope", 1, "finished", "0.9"), ("mope", 2, "finished", "0.5")])
    rows = rows_of("method=probe", {1: 0.7, 2: 0.6})
    [record] = paired_rows([Comparison("other/method=mope", "method=probe", ("test/acc",))], rows, tmp_path / "out")
    assert record["differences"] == pytest.approx([0.2, -0.1])


def test_an_unreadable_sibling_is_said_in_the_table_not_raised(tmp_path):
    write_results(tmp_path / "other", [("mope", 1, "finished", "0.9")])
    comparisons = [Comparison("gone/method=mope", "method=probe", ("test/acc",))]
    comparisons.append(Comparison("other/method=nope", "method=probe", ("test/acc",)))
    records = paired_rows(comparisons, rows_of("method=probe", {1: 0.7}), tmp_path / "out")
    lines = paired_markdown(records)
    assert "gone/results.csv: cannot read" in lines[-2] and lines[-2].endswith("| - | - | - |")
    assert "has no cell 'method=nope'; its cells: method=mope" in lines[-1]


@pytest.mark.parametrize(
    "spec, message",
    [
        ([{"a": "x"}], "compare: give a list of {a: CELL, b: CELL}"),
        ([{"a": "x", "b": "y", "c": 1}], "compare: give a list of {a: CELL, b: CELL}"),
        ([{"a": "x", "b": "nope"}], "compare[0].b: 'nope' is not a cell of this sweep (x, y)"),
        ([{"a": "x", "b": "x"}], "compare[0]: a and b are the same cell 'x'"),
        ([{"a": "x", "b": "y", "metrics": "test/acc"}], "compare[0].metrics: give a list of metric names"),
    ],
)
def test_bad_compare_sections_name_the_item(spec, message):
    with pytest.raises(ConfigError) as error:
        read_comparisons(Path("s.yaml"), spec, ["x", "y"], "test/acc")
    assert str(error.value).startswith("s.yaml: ") and message in str(error.value)


def test_a_compare_item_defaults_to_the_sweep_metric_and_may_name_another_sweep():
    spec = [{"a": "x", "b": "other/method=mope"}, {"a": "y", "b": "x", "metrics": ["test/f1", "test/acc"]}]
    assert read_comparisons(Path("s.yaml"), spec, ["x", "y"], "test/auroc") == (
        Comparison("x", "other/method=mope", ("test/auroc",)),
        Comparison("y", "x", ("test/f1", "test/acc")),
    )


SWEEP_FILES = sorted((Path(__file__).parents[1] / "experiments" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_every_shipped_sweep_file_plans_and_compares_its_own_cells(path, tmp_path):
    """Each sweep file of the repository reads and plans (every run's config checked), and its comparisons name
    cells it has (or a sibling sweep's, <folder>/<cell>)."""
    from mope_lightning.sweeps.spec import cell_slug, read_sweep
    from mope_lightning.sweeps.sweep import plan

    sweep = read_sweep(path)
    sweep.seeds = sweep.seeds[:1]  # every cell's config is checked once: the seeds change nothing else
    _, runs = plan(sweep, str(tmp_path / "out"))
    assert len(runs) == len(sweep.cells) > 0
    cells = {cell_slug(cell) for cell in sweep.cells}
    for comparison in sweep.compare:
        for side in (comparison.a, comparison.b):
            assert side in cells or side.split("/", 1)[0] in {p.stem for p in SWEEP_FILES}, side
