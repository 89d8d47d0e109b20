"""Loggers, callbacks and run identity from the config (mope_lightning/training/tracking.py, config_callbacks.py), driven
through the command line's entry point."""

import csv
import importlib.util
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from mope_lightning.cli import main
from mope_lightning.training.trainer_config import load_config
from mope_lightning.errors import ConfigError

from helpers import DEFAULT_EXP, EXPERIMENTS, ROOT, TINY

HAS_WANDB = importlib.util.find_spec("wandb") is not None
EARLY_STOPPING = EXPERIMENTS / "overlays" / "early_stopping.yaml"


def _tiny_args(tmp: Path) -> list[str]:
    return [
        f"trainer.default_root_dir={tmp / 'runs'}",
        f"data.cache_dir={tmp / 'cache'}",
        "data.train_images=40",
        "data.test_images=10",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, monkeypatch_module):
    """One tiny fit with every logger this machine has, the early-stopping overlay and a learning rate too small to
    change the validation accuracy: it must stop after 1 + patience (3) validations of the 10 epochs."""
    monkeypatch_module.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch_module.setenv("WANDB_MODE", "offline")
    tmp = tmp_path_factory.mktemp("tracked")
    loggers = "[tensorboard,csv,mlflow" + (",wandb]" if HAS_WANDB else "]")
    overrides = [
        *_tiny_args(tmp),
        f"loggers={loggers}",
        "trainer.max_epochs=10",
        "optim.lr=1e-12",
        "tags=[smoke,tracking]",
        "notes=three trackers at once",
    ]
    assert main(["fit", str(DEFAULT_EXP), str(TINY), str(EARLY_STOPPING), *overrides]) == 0
    return tmp / "runs" / "version_0", overrides


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_csv_logger_writes_scalars(tracked_run):
    run_dir, _ = tracked_run
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert any(r.get("routing/mi_class_relative") for r in rows)  # routing scalars go to every logger


def test_tensorboard_gets_scalars_and_heatmaps(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = tracked_run
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0}).Reload()
    assert "train/loss" in events.Tags()["scalars"]
    images = events.Images("routing/layer_expert")
    assert len(images) == 4 and images[0].encoded_image_string.startswith(b"\x89PNG")


def test_mlflow_gets_scalars_heatmaps_and_identity(tracked_run):
    from mlflow.tracking import MlflowClient

    run_dir, overrides = tracked_run
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("easy_vqa")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "version_0"
    assert client.get_metric_history(run.info.run_id, "train/loss")
    heatmaps = client.list_artifacts(run.info.run_id, "routing/layer_expert")
    assert len(heatmaps) == 4 and all(f.path.endswith(".png") for f in heatmaps)
    png = Path(client.download_artifacts(run.info.run_id, heatmaps[0].path, str(run_dir.parent)))
    assert png.read_bytes().startswith(b"\x89PNG")
    params, tags = run.data.params, run.data.tags
    assert params["config/run/files"] == str([str(DEFAULT_EXP), str(TINY), str(EARLY_STOPPING)])
    assert params["config/run/versions/torch"] == torch.__version__.split("+")[0]
    assert tags["tags"] == "smoke, tracking" and tags["mlflow.note.content"] == "three trackers at once"


def test_run_records_its_commit_and_overrides(tracked_run):
    run_dir, overrides = tracked_run
    record = yaml.safe_load((run_dir / "config.yaml").read_text())["run"]
    assert record["overrides"] == overrides
    assert record["files"] == [str(DEFAULT_EXP), str(TINY), str(EARLY_STOPPING)]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:
        assert record["git_commit"] == head.stdout.strip() and isinstance(record["git_dirty"], bool)
    assert record["versions"]["lightning"] and record["versions"]["transformers"]
    hparams = yaml.safe_load((run_dir / "hparams.yaml").read_text())  # TensorBoard's and CSV's hyperparameters
    assert hparams["config"]["run"] == record and hparams["config"]["tags"] == ["smoke", "tracking"]


def test_early_stopping_overlay_stops_the_run(tracked_run):
    run_dir, _ = tracked_run
    epochs = {int(r["epoch"]) for r in csv.DictReader(open(run_dir / "metrics.csv")) if r.get("val/acc")}
    assert epochs == {0, 1, 2, 3}  # of max_epochs=10: the accuracy never improved after the first validation


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is optional and not installed")
def test_wandb_offline_run_gets_scalars_and_images(tracked_run):
    run_dir, _ = tracked_run
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    images = list((offline / "files" / "media" / "images" / "routing").glob("layer_expert_*.png"))
    assert len(images) == 4


def test_unknown_logger_and_forbidden_callbacks_are_refused(capsys):
    def error(*overrides):
        assert main(["fit", str(DEFAULT_EXP), *overrides]) == 2
        return capsys.readouterr().err

    assert "loggers: unknown logger 'tensorbord' (did you mean 'tensorboard'?)" in error("loggers=[tensorbord]")
    err = error("callbacks=[{class_path: os.system, init_args: {command: ls}}]")
    assert "callbacks[0]: class_path 'os.system' is outside the allowed callbacks" in err
    err = error("callbacks=[{class_path: lightning.pytorch.callbacks.EarlyStoping}]")
    assert "has no callback 'EarlyStoping' (did you mean 'EarlyStopping'?)" in err
    err = error("callbacks=[{class_path: EarlyStopping, init_args: {monitor: val/acc, patiance: 3}}]")
    assert "callbacks[0] (EarlyStopping): init_args do not fit EarlyStopping" in err and "'patience'" in err
    err = error("callbacks=[{class_path: EarlyStopping, init_args: {monitor: val/acc, mode: best}}]")
    assert "callbacks[0] (EarlyStopping): EarlyStopping refused init_args" in err
    assert "added by mope_lightning itself" in error(
        "callbacks=[{class_path: mope_lightning.training.callbacks.FiniteLoss}]"
    )
    assert "a list (callbacks) is set as a whole" in error("callbacks.0.init_args.patience=3")


def test_unreachable_mlflow_server_is_one_error_at_start(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the discard port: nothing answers
    assert main(["fit", str(DEFAULT_EXP), str(TINY), *_tiny_args(tmp_path), "loggers=[csv,mlflow]"]) == 2
    err = capsys.readouterr().err
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:9 does not answer" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # refused before anything was built


def test_missing_wandb_package_says_what_to_install(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert main(["fit", str(DEFAULT_EXP), str(TINY), *_tiny_args(tmp_path), "loggers=[wandb]"]) == 2
    assert "pip install wandb" in capsys.readouterr().err


def test_print_config_prints_the_resolved_config_and_builds_nothing(tmp_path, capsys):
    assert (
        main(["fit", str(DEFAULT_EXP), f"trainer.default_root_dir={tmp_path / 'runs'}", "seed=7", "print_config=true"])
        == 0
    )
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["seed"] == 7 and printed["trainer"]["default_root_dir"] == str(tmp_path / "runs")
    assert printed["run"]["overrides"] == [f"trainer.default_root_dir={tmp_path / 'runs'}", "seed=7"]
    assert not (tmp_path / "runs").exists()


def test_schedules_and_optimizers_come_from_the_libraries():
    from transformers import get_cosine_schedule_with_warmup

    from mope_lightning.training.optim import build_optimizer, build_scheduler

    def optim(*overrides):
        return load_config([DEFAULT_EXP], list(overrides)).optim

    weights = torch.nn.Parameter(torch.zeros(2))
    o = optim("optim.lr=0.1", "optim.warmup_steps=10")
    optimizer = build_optimizer(o, {"head": [weights]})
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["name"] == "head"
    scheduler = build_scheduler(o, optimizer, total_steps=100)["scheduler"]
    reference = get_cosine_schedule_with_warmup(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), 10, 100)
    for _ in range(40):
        optimizer.step(), scheduler.step(), reference.optimizer.step(), reference.step()
        assert scheduler.get_last_lr() == reference.get_last_lr()
    sgd = build_optimizer(optim("optim.optimizer=sgd", "optim.momentum=0.5"), {"head": [weights]})
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.5
    with pytest.raises(ConfigError, match="optim.warmup_steps: multistep is stepped per epoch"):
        optim("optim.scheduler=multistep", "optim.warmup_steps=5")
    with pytest.raises(ConfigError, match="optim.optimizer: 'lion' is not one of adamw, adam, sgd"):
        optim("optim.optimizer=lion")


def test_a_resumed_run_continues_its_tracker_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["fit", str(DEFAULT_EXP), str(TINY), *_tiny_args(tmp_path), "loggers=[csv,mlflow]"]
    assert main([*args, "trainer.max_epochs=1"]) == 0
    assert main([*args, "trainer.max_epochs=2", "ckpt=last"]) == 0
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "runs" / "version_0"
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("easy_vqa").experiment_id])
    steps = sorted({m.step for m in client.get_metric_history(run.info.run_id, "train/loss")})
    assert steps[0] < 4 < steps[-1]  # the first epoch's steps and the resumed second epoch's, in one MLflow run
    earlier = list(csv.DictReader(open(run_dir / "metrics.part1.csv")))
    assert any(r.get("train/loss") for r in earlier) and (run_dir / "metrics.csv").is_file()
