"""Hostile sweep files, callbacks and trainer values through the real CLI: each refused before anything runs, with one
message naming the file and key, exit status 2 and nothing written; and property-based tests (Hypothesis) of the
sweep-file and config loaders on random YAML trees and overrides: one of our errors with a message, or a checked
config, never another exception, never a file written."""

from pathlib import Path

import pytest
import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from mope_lightning.cli import main
from mope_lightning.training.trainer_config import load_config
from mope_lightning.errors import MopeError
from mope_lightning.sweeps.sweep import plan, read_sweep

from helpers import DEFAULT_EXP, ROOT, TINY
from helpers.cli import args, one_error

OVERLAYS = ROOT / "experiments" / "overlays"


def write_sweep(folder: Path, **spec) -> Path:
    base = {
        "name": "hostile",
        "experiment": [str(DEFAULT_EXP), str(TINY)],
        "overrides": [f"data.cache_dir={folder / 'cache'}", "data.train_images=40", "data.test_images=10"],
        "seeds": [1, 2],
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({**base, **spec}, sort_keys=False))
    return path


def tree(folder: Path) -> dict:
    """Every file under `folder` with its bytes: what a refused command must leave as it was."""
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused_sweep(tmp_path, capsys, message, out=None, extra=()) -> str:
    """`mope sweep` of tmp_path/sweep.yaml exits 2 with one message (after the sweep file's name, unless it is about
    the command line), and leaves every file as it was."""
    sweep = tmp_path / "sweep.yaml"
    before = tree(tmp_path)
    assert main(["sweep", str(sweep), f"out={out or tmp_path / 'out'}", *extra]) == 2
    err = one_error(capsys, message if message.startswith(("out:", "command line:")) else f"{sweep}: {message}")
    assert tree(tmp_path) == before and not (tmp_path / "out").exists()
    return err


# --- sweep files: every section against its shape --------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            {"overrides": "trainer.max_epochs=2"},
            "overrides: give key=value strings or a mapping of config keys to values, "
            "got the str 'trainer.max_epochs=2'",
        ),
        ({"overrides": ["trainer.max_epochs=2", 3]}, "overrides[1]: 3 is not a key=value string"),
        ({"grid": [1, 2]}, "grid: give a mapping of config keys (or named axes) to their values, got a list"),
        ({"grid": {"model.mope.num_experts": 4}}, "grid.model.mope.num_experts: give a list of values, or a mapping"),
        ({"grid": {"method": {"a": "x"}}}, "grid.method.a: give a mapping of `overlays` (files) and `overrides`"),
        ({"grid": {"method": {"a": {"overlays": 3}}}}, "grid.method.a.overlays: give a list of config files"),
        (
            {"grid": {"method": {"a": {"overlays": [str(TINY), ["x.yaml"]]}}}},
            "grid.method.a.overlays[1]: a list is not a file path",
        ),
        (
            {"grid": {"method": {"a": {"overlays": ["experiments/easy_vqa.json"]}}}},
            "grid.method.a.overlays[0]: experiments/easy_vqa.json: a config file ends in .yaml or .yml",
        ),
        (
            {"grid": {"method": {"a": {"overrides": {"x": 1}, "overlay": []}}}},
            "grid.method.a: unknown key 'overlay' (did you mean 'overlays'?)",
        ),
        ({"grid": {"method": {"a": {"overrides": "optim.lr=1"}}}}, "grid.method.a.overrides: give key=value strings"),
        (
            {"grid": {"model.mope.num_experts": [2, 2]}},
            "grid.model.mope.num_experts[0] and grid.model.mope.num_experts[1]"
            " make the same cell folder (model.mope.num_experts=2)",
        ),
        (
            {"grid": {"seed": [1, 2]}},
            "grid.seed[0]: seed cannot be set here: each run's seed comes from the sweep's `seeds:` list",
        ),
        (
            {"cells": [{"trainer.default_root_dir": "elsewhere"}]},
            "cells[0].trainer.default_root_dir: trainer.default_root_dir cannot be set here",
        ),
        (
            {"cells": {"model.mope.num_experts": 2}},
            "cells: give a non-empty list of mappings of config keys to values, got a mapping",
        ),
        ({"cells": [{}]}, "cells[0]: an empty cell"),
        ({"cells": [[1]]}, "cells[0]: give a mapping of config keys to values, got a list"),
        ({"seeds": [1, 1]}, "seeds: 1 is listed twice"),
        ({"seeds": [True]}, "seeds: give a non-empty list of integers"),
        ({"seeds": 3}, "seeds: give a non-empty list of integers"),
        ({"name": "../elsewhere"}, "name: '../elsewhere' is not a folder name"),
        ({"name": ["a"]}, "name: ['a'] is not a folder name"),
        ({"metric": ["test/acc"]}, "metric: give the name of a test metric, e.g. test/acc, got a list"),
        ({"slurm": ["timeout_min=10"]}, "slurm: give a mapping of submitit parameters to values, got a list"),
        ({"slurm": {1: 2}}, "slurm: the key 1 is not a string"),
        ({"robustness": {"rates": [True], "kinds": ["image"]}}, "robustness: rates is a list of numbers"),
        (
            {"experiment": 3},
            "experiment: give a list of config files, e.g. [experiments/overlays/tiny.yaml], got the int 3",
        ),
        ({"experiment": []}, "experiment: give a list of config files"),
        (
            {"experiment": [str(DEFAULT_EXP), "experiments/overlays/nope.yaml"]},
            "experiment[1]: config file experiments/overlays/nope.yaml not found",
        ),
    ],
)
def test_sweep_sections_of_the_wrong_shape_are_refused_naming_the_key(tmp_path, capsys, spec, message):
    write_sweep(tmp_path, **spec)
    refused_sweep(tmp_path, capsys, message)


def test_an_overlay_list_written_as_one_string_gets_one_message(tmp_path, capsys):
    write_sweep(tmp_path, experiment=f"{DEFAULT_EXP} {TINY}")
    refused_sweep(
        tmp_path,
        capsys,
        f"experiment: '{DEFAULT_EXP} {TINY}' is one string; list the files as a YAML list: [{DEFAULT_EXP}, {TINY}]",
    )
    overlays = f"{OVERLAYS / 'prompt_tuning.yaml'}, {OVERLAYS / 'cpu.yaml'}"
    write_sweep(tmp_path, grid={"method": {"pt": {"overlays": overlays}}})
    refused_sweep(
        tmp_path,
        capsys,
        f"grid.method.pt.overlays: '{overlays}' is one string; list the files as a YAML "
        f"list: [{OVERLAYS / 'prompt_tuning.yaml'}, {OVERLAYS / 'cpu.yaml'}]",
    )


def test_one_overlay_file_given_as_a_string_is_that_file(tmp_path):
    sweep = read_sweep(
        write_sweep(tmp_path, grid={"method": {"pt": {"overlays": str(OVERLAYS / "prompt_tuning.yaml")}}})
    )
    assert sweep.cells[0][0].files == (str(OVERLAYS / "prompt_tuning.yaml"),)


# --- every run's full config through the checks of `mope fit`, at planning time -------------------------------


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            {"grid": {"model.mope.num_experts": [1, 2, -1]}},
            "grid.model.mope.num_experts[2]: model.mope.num_experts: must be at least 0, got -1",
        ),
        (
            {"grid": {"method": {"ok": {}, "bad": {"overrides": {"model.mope.prompt_dropout": 1.5}}}}},
            "grid.method.bad: model.mope.prompt_dropout: must be in [0, 1)",
        ),
        (
            {"cells": [{"model.mope.num_experts": 2}, {"model.mope.num_experts": 2, "data.batch_size": 0}]},
            "cells[1].data.batch_size: data.batch_size: must be at least 1, got 0",
        ),
        ({"seeds": [1, -4]}, "seeds[1]: seed: must be in [0, 4294967295], got -4"),
        ({"overrides": {"optim.lr": 0, "data.cache_dir": "c"}}, "overrides.optim.lr: optim.lr: must be greater than 0"),
        # a combination: the grid value that makes the fixed overrides fail is the one named
        (
            {"overrides": {"model.mope.router.top_k": 3}, "grid": {"model.mope.num_experts": [4, 2]}},
            "grid.model.mope.num_experts[1]: model.mope.router.top_k: 3 is more than the 2 experts",
        ),
        (
            {"grid": {"trainer.max_time": ["00:01:00:00", "1 hour"]}},
            "grid.trainer.max_time[1]: trainer.max_time: '1 hour' is not accepted by lightning.Trainer",
        ),
        (
            {"grid": {"model.mope.num_expert": [1, 2]}},
            "grid.model.mope.num_expert[0]: unknown key 'model.mope.num_expert'",
        ),
    ],
)
def test_a_run_config_the_checks_refuse_stops_the_sweep_at_planning(tmp_path, capsys, spec, message):
    write_sweep(tmp_path, **spec)
    err = refused_sweep(tmp_path, capsys, message)
    assert "command line:" not in err  # the place in the sweep file is named, not the runs' command line


def test_a_command_line_override_the_checks_refuse_is_named_as_such(tmp_path, capsys):
    write_sweep(tmp_path)
    refused_sweep(tmp_path, capsys, "command line: optim.lr: must be greater than 0", extra=["optim.lr=-1"])
    refused_sweep(tmp_path, capsys, "command line: 'seed=3': seed cannot be set here", extra=["seed=3"])


def test_out_naming_an_existing_file_is_refused_before_anything_runs(tmp_path, capsys):
    write_sweep(tmp_path, grid={"model.mope.num_experts": [1, 2]})
    results = tmp_path / "results.csv"
    results.write_text("cell,seed\nkeep,1\n")
    refused_sweep(tmp_path, capsys, f"out: {results} is a file; give a folder for the sweep", out=results)
    refused_sweep(
        tmp_path, capsys, f"out: {results} is a file, so {results / 'sweep'} cannot be created", out=results / "sweep"
    )
    assert results.read_text() == "cell,seed\nkeep,1\n"


def test_out_holding_summary_files_mope_did_not_write_is_refused(tmp_path, capsys):
    """A sweep continues its own folder (replacing its results.csv and summary.md), never another one's files."""
    write_sweep(tmp_path, grid={"model.mope.num_experts": [1, 2]})
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "summary.md").write_text("# My notes\n")
    refused_sweep(tmp_path, capsys, f"out: {folder / 'summary.md'}: not a sweep written by mope", out=folder)
    assert (folder / "summary.md").read_text() == "# My notes\n" and sorted(folder.iterdir()) == [folder / "summary.md"]


# --- callbacks that lightning.Trainer would refuse, at load time -------------------------------------------------

SECOND_STATE = [
    (
        "[{class_path: ModelCheckpoint}]",
        "callbacks[0] (ModelCheckpoint): the same settings as the last.ckpt ModelCheckpoint (checkpoint.save_last) that "
        "every fit has",
    ),
    (
        "[{class_path: ModelCheckpoint, init_args: {monitor: val/acc, mode: max}}]",
        "callbacks[0] (ModelCheckpoint): the same settings as the best weights' ModelCheckpoint",
    ),
    (
        "[{class_path: EarlyStopping, init_args: {monitor: val/acc}}, {class_path: ModelCheckpoint, init_args: "
        "{monitor: val/loss}}, {class_path: EarlyStopping, init_args: {monitor: val/acc, patience: 9}}]",
        "callbacks[2] (EarlyStopping): the same settings as callbacks[0] (state key EarlyStopping{'monitor': 'val/acc', "
        "'mode': 'min'})",
    ),
    (
        "[{class_path: TQDMProgressBar}, {class_path: RichProgressBar}]",
        "callbacks[1] (RichProgressBar): a second progress bar (the first is callbacks[0])",
    ),
]


@pytest.mark.parametrize("callbacks, message", SECOND_STATE)
def test_callbacks_lightning_would_refuse_are_refused_when_the_config_loads(tmp_path, capsys, callbacks, message):
    assert main(["fit", *args(tmp_path), f"callbacks={callbacks}", "trainer.enable_progress_bar=true"]) == 2
    one_error(capsys, f"command line: {message}")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_callbacks_in_a_config_file_name_the_file(tmp_path, capsys):
    overlay = tmp_path / "callbacks.yaml"
    overlay.write_text(
        "callbacks:\n  - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n  - class_path: TQDMProgressBar\n"
    )
    assert main(["fit", *args(tmp_path)[:2], str(overlay), *args(tmp_path)[2:]]) == 2
    one_error(capsys, f"{overlay}: callbacks[0] (ModelCheckpoint)")
    overlay.write_text("callbacks:\n  - class_path: TQDMProgressBar\n")  # with trainer.enable_progress_bar=false
    assert main(["fit", *args(tmp_path)[:2], str(overlay), *args(tmp_path)[2:]]) == 2
    one_error(
        capsys, f"{overlay}: callbacks[0] (TQDMProgressBar): a progress bar, but trainer.enable_progress_bar is false"
    )


@pytest.mark.parametrize(
    "callbacks, refused",
    [(c, True) for c, _ in SECOND_STATE]
    + [
        ("[{class_path: ModelCheckpoint, init_args: {monitor: val/loss}}]", False),
        ("[{class_path: ModelCheckpoint, init_args: {monitor: val/acc, mode: max, every_n_epochs: 2}}]", False),
        (
            "[{class_path: EarlyStopping, init_args: {monitor: val/acc}}, {class_path: EarlyStopping, init_args: "
            "{monitor: val/loss}}]",
            False,
        ),
    ],
)
def test_the_load_time_rule_is_lightnings_own(tmp_path, callbacks, refused):
    """What the config check refuses, lightning.Trainer refuses when built with the fit's checkpoints and these
    callbacks; what it lets through, the Trainer takes."""
    import lightning as L
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    from mope_lightning.training.config_callbacks import fit_checkpoints, resolve_callbacks

    overrides = [f"trainer.default_root_dir={tmp_path}", f"callbacks={callbacks}"]
    if refused:
        with pytest.raises(MopeError, match=r"callbacks\[\d\]"):
            load_config([DEFAULT_EXP, TINY], overrides)
    cfg = load_config([DEFAULT_EXP, TINY], [f"trainer.default_root_dir={tmp_path}"])
    built = [
        *fit_checkpoints(cfg.checkpoint, "val/acc").values(),
        *resolve_callbacks(yaml.safe_load(callbacks), "callbacks"),
    ]
    if refused:
        with pytest.raises((RuntimeError, MisconfigurationException)):
            L.Trainer(callbacks=built, logger=False, default_root_dir=tmp_path)
    else:
        assert load_config([DEFAULT_EXP, TINY], overrides).callbacks
        L.Trainer(callbacks=built, logger=False, default_root_dir=tmp_path)


# --- trainer.max_time in the forms Lightning's Timer takes --------------------------------------------------------


@pytest.mark.parametrize(
    "value, shown",
    [
        ("00:12:00:00", "max_time: 00:12:00:00"),
        ("010:00:00:00", "max_time: 010:00:00:00"),
        ("{days: 1, hours: 2}", "max_time:\n    days: 1\n    hours: 2"),
        ("{minutes: 0.5}", "minutes: 0.5"),
    ],
)
def test_max_time_in_lightnings_forms_passes(tmp_path, capsys, value, shown):
    assert main(["fit", *args(tmp_path), f"trainer.max_time={value}", "print_config=true"]) == 0
    assert shown in capsys.readouterr().out


@pytest.mark.parametrize(
    "value, reason",
    [
        ("12h", "`Timer(duration='12h')` is not a valid duration"),
        ("3600", "int values are neither form"),
        (
            "10:00:00:00",
            "YAML reads an unquoted 10:00:00:00 as a base-60 number; quote it, or write the days as 010:00:00:00",
        ),
        ("{days:1}", "YAML needs a space after each colon"),
        ("{fortnights: 1}", "'fortnights' is an invalid keyword argument"),
        ("{hours: x}", "unsupported type for timedelta hours component: str"),
        ("{hours: -1}", "no time at all: give a positive duration"),
        ("[1, 2]", "list values are neither form"),
    ],
)
def test_max_time_in_other_forms_is_one_message_with_the_accepted_forms(tmp_path, capsys, value, reason):
    assert main(["fit", *args(tmp_path), f"trainer.max_time={value}"]) == 2
    one_error(
        capsys,
        "command line: trainer.max_time: ",
        reason,
        "give a string DD:HH:MM:SS",
        "a mapping of timedelta arguments (e.g. {days: 1, hours: 2})",
    )
    assert not (tmp_path / "runs").exists()


# --- property-based: random YAML trees and overrides through the loaders ----------------------------------------

TEXT = st.text(st.sampled_from("ab_.=:$/{}[]-, 0\n'\"#!&*|>%@`\\é"), max_size=8)
SCALARS = st.none() | st.booleans() | st.integers(-3, 2**40) | st.floats(allow_nan=True) | TEXT
CONFIG_KEYS = [
    "seed",
    "trainer.max_time",
    "trainer.max_epochs",
    "model.mope.num_experts",
    "optim.lr",
    "callbacks",
    "data.batch_size",
    "model.fusion",
    "loggers",
    "trainer.default_root_dir",
    "model",
    "data.name",
    "run",
    "checkpoint.monitor",
    "model.mope.router.top_k",
    "method",
]
KEYS = st.sampled_from(CONFIG_KEYS) | TEXT


def yaml_trees(leaves=SCALARS, keys=KEYS, size=3):
    return st.recursive(
        leaves, lambda inner: st.lists(inner, max_size=size) | st.dictionaries(keys, inner, max_size=size), max_leaves=8
    )


@st.composite
def sweep_specs(draw):
    """A sweep file: each section either a plausible value (so that planning is reached) or a random tree."""
    tiny = [str(DEFAULT_EXP), str(TINY)]
    small = st.lists(st.integers(0, 3), min_size=1, max_size=2, unique=True)
    sections = {
        "experiment": st.just(tiny) | yaml_trees(),
        "seeds": small | yaml_trees(),
        "overrides": st.dictionaries(st.sampled_from(CONFIG_KEYS), SCALARS, max_size=2) | yaml_trees(),
        "grid": st.dictionaries(st.sampled_from(CONFIG_KEYS), st.lists(SCALARS, max_size=2), max_size=2)
        | st.dictionaries(
            TEXT, st.dictionaries(st.sampled_from(["overlays", "overrides"]), yaml_trees(), max_size=2), max_size=2
        )
        | yaml_trees(),
        "cells": st.lists(st.dictionaries(st.sampled_from(CONFIG_KEYS), SCALARS, max_size=2), max_size=2)
        | yaml_trees(),
        "name": TEXT | yaml_trees(),
        "metric": TEXT | yaml_trees(),
        "slurm": yaml_trees(),
        "robustness": yaml_trees(),
        "bogus": yaml_trees(),
    }
    chosen = draw(st.lists(st.sampled_from(sorted(sections)), unique=True, max_size=len(sections)))
    spec = {"experiment": tiny, "seeds": [1]}
    spec.update({key: draw(sections[key]) for key in chosen})
    return spec


def outside_files() -> set:
    """The repository's top-level entries and run folders, where a loader that writes would leave something."""
    return {p.name for p in ROOT.iterdir() if not p.name.startswith(".")} | set((ROOT / "runs").rglob("*"))


def check_loaded_or_refused(call) -> None:
    try:
        call()
    except MopeError as exc:
        assert str(exc).strip(), "an error without a message"
        event(f"refused: {type(exc).__name__}")
    else:
        event("loaded")


# key=value overrides: a config key or random text, a YAML value or random text
OVERRIDES = st.lists(
    st.tuples(KEYS, TEXT | SCALARS.map(lambda v: yaml.safe_dump(v).strip().removesuffix("\n..."))).map(
        lambda kv: f"{kv[0]}={kv[1]}"
    ),
    max_size=3,
)


@given(spec=sweep_specs(), extra=OVERRIDES)
def test_random_sweep_files_are_planned_or_refused_with_one_of_our_errors(tmp_path_factory, spec, extra):
    folder = tmp_path_factory.mktemp("sweep")
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    before = outside_files()

    def read_and_plan():
        out, runs = plan(read_sweep(path, extra), str(folder / "out"))
        assert runs and all(Path(r.root).is_relative_to(out) for r in runs)

    check_loaded_or_refused(read_and_plan)
    assert sorted(p.name for p in folder.iterdir()) == ["sweep.yaml"] and outside_files() == before


@given(
    overlay=st.dictionaries(st.sampled_from([k.split(".")[0] for k in CONFIG_KEYS]) | TEXT, yaml_trees(), max_size=3),
    overrides=OVERRIDES,
)
def test_random_config_trees_and_overrides_load_or_are_refused_with_one_of_our_errors(
    tmp_path_factory, overlay, overrides
):
    folder = tmp_path_factory.mktemp("config")
    path = folder / "overlay.yaml"
    path.write_text(yaml.safe_dump(overlay, allow_unicode=True))
    before = outside_files()
    check_loaded_or_refused(lambda: load_config([DEFAULT_EXP, TINY, path], overrides))
    assert sorted(p.name for p in folder.iterdir()) == ["overlay.yaml"] and outside_files() == before
