"""The command line on tiny random-init encoders: commands, errors, run directories, frozen modes."""

import csv
import json
import subprocess
import sys

import lightning as L
import pytest
import torch

from mope_lightning.cli import main
from mope_lightning.training.trainer_config import load_config
from mope_lightning.training.build import build, build_trainer

from helpers import DEFAULT_EXP, ROOT
from helpers.cli import args


def base_args(tmp_path):
    return args(tmp_path)


def test_fit_then_test_predict_and_validate_a_checkpoint(tmp_path, capsys):
    assert main(["fit", *base_args(tmp_path)]) == 0
    run_dir = tmp_path / "runs" / "version_0"
    fit = json.loads((run_dir / "fit_metrics.json").read_text())
    assert set(fit["metrics"]) >= {"test/acc", "test/loss"} and fit["best_checkpoint"]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    out = capsys.readouterr().out
    assert "[mope] fit finished" in out and "test/acc" in out and str(run_dir) in out

    ckpt = fit["best_checkpoint"]
    assert main(["test", *base_args(tmp_path), f"ckpt={ckpt}"]) == 0
    tested = json.loads((tmp_path / "runs" / "version_1" / "test_metrics.json").read_text())
    assert tested["metrics"]["test/acc"] == pytest.approx(fit["metrics"]["test/acc"], abs=1e-6)

    assert main(["validate", *base_args(tmp_path), f"ckpt={ckpt}"]) == 0
    assert "val/acc" in capsys.readouterr().out

    out_csv = tmp_path / "pred.csv"
    assert (
        main(
            [
                "predict",
                *base_args(tmp_path),
                f"ckpt={ckpt}",
                f"predict.out={out_csv}",
                "trainer.limit_predict_batches=2",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 2 * 16 and rows[0]["id"].startswith("test/")  # 2 batches of 2 x batch_size
    classes = [c[len("prob_") :] for c in rows[0] if c.startswith("prob_")]
    assert len(classes) == 13
    for row in rows:
        probs = [float(row[f"prob_{c}"]) for c in classes]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert row["prediction"] == classes[probs.index(max(probs))]


def test_fit_ckpt_last_resumes_the_newest_run_in_place(tmp_path):
    assert main(["fit", *base_args(tmp_path)]) == 0
    assert main(["fit", *base_args(tmp_path), "ckpt=last", "trainer.max_epochs=2"]) == 0
    run_dir = tmp_path / "runs" / "version_0"
    assert not (tmp_path / "runs" / "version_1").exists()  # the same run directory, continued
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 * 4  # 4 steps per epoch (tiny overlay), 2 epochs in all


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "missing.yaml"], "missing.yaml: config file not found"),
        (["fit", str(DEFAULT_EXP), "model.mope.num_expert=2"], "did you mean 'model.mope.num_experts'?"),
        (["test", str(DEFAULT_EXP)], "test needs ckpt=PATH"),
        (["test", str(DEFAULT_EXP), "ckpt=/no/such.ckpt"], "ckpt: /no/such.ckpt: not found"),
        (["fit", str(DEFAULT_EXP), "data.root=/no/data"], "/no/data: no easy-VQA dataset here"),
        (["fit", str(DEFAULT_EXP), "trainer"], "'trainer' is neither a .yaml config file nor a key=value override"),
    ],
)
def test_errors_are_one_clear_message(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("mope: error: ") and message in err and "Traceback" not in err


def test_frozen_encoders_stay_in_eval_mode_while_training(tmp_path):
    cfg = load_config(base_args(tmp_path)[:2], base_args(tmp_path)[2:])
    module, datamodule = build(cfg)
    seen = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            net = pl_module.net
            seen.append((net.training, net.fusion.training, net.text.model.training, net.image.model.training))

    trainer = build_trainer(cfg, datamodule, "fit")
    trainer.callbacks.append(Probe())
    trainer.fit(module, datamodule=datamodule)
    assert seen and all(s == (True, True, False, False) for s in seen)


def test_python_dash_m_entry_point(tmp_path):
    args = base_args(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mope_lightning",
            "fit",
            *args[:2],
            str(ROOT / "experiments/overlays/fast_dev_run.yaml"),
            *args[2:],
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[mope] fit finished" in proc.stdout and "test/acc" in proc.stdout
