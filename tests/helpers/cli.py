"""Driving the `mope` command in-process: a tiny experiment's arguments, a run that never ends in a traceback, the
one-message check every hostile-input test makes, and rows of new data for `mope predict`."""

import json
from pathlib import Path

from PIL import Image

from mope_lightning.cli import main

from helpers import DEFAULT_EXP, TINY, TINY_DATA, run_dirs


def experiment_args(tmp_path, experiment, *extra) -> list[str]:
    """`experiment` with the tiny overlay, writing only under `tmp_path`, then `extra` overrides."""
    return [str(experiment), str(TINY), *run_dirs(tmp_path), *extra]


def args(tmp_path, *extra) -> list[str]:
    """The default experiment's tiny run (40 train and 10 test images of easy-VQA)."""
    return experiment_args(tmp_path, DEFAULT_EXP, *TINY_DATA, *extra)


def tiny_fit(tmp_path, args: list[str]) -> dict:
    """`mope fit ARGS` for two optimiser steps, writing under `tmp_path`; the first run's fit_metrics.json."""
    assert main(["fit", *args, "trainer.max_steps=2"]) == 0
    return json.loads((tmp_path / "runs" / "version_0" / "fit_metrics.json").read_text())


def mope(capsys, argv: list[str]) -> tuple[int, str, str]:
    """`mope ARGV` in-process: (exit status, stdout, stderr); never a traceback."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def one_error(capsys, *needles) -> str:
    captured = capsys.readouterr()
    assert captured.err.count("mope: error: ") == 1, captured.err  # after the log lines, one message
    assert "Traceback" not in captured.err + captured.out, captured.err
    err = captured.err[captured.err.index("mope: error: ") :]
    for needle in needles:
        assert needle in err, err
    return err


def write_rows(folder: Path, lines: list) -> Path:
    for i in range(2):
        Image.new("RGB", (32, 32), (200, 30 * i, 0)).save(folder / f"img{i}.png")
    rows = folder / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n")
    return rows
