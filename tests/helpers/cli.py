"""Driving the `mope` command in-process: the tiny default experiment's arguments, the one-message check every
hostile-input test makes, and rows of new data for `mope predict`."""

import json
from pathlib import Path

from PIL import Image

from helpers import DEFAULT_EXP, TINY


def args(tmp_path, *extra):
    return [
        str(DEFAULT_EXP),
        str(TINY),
        f"trainer.default_root_dir={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.train_images=40",
        "data.test_images=10",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        *extra,
    ]


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
