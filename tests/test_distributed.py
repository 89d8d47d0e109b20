"""Scale-out: DDP on CPU (gloo) equals one process with the global batch, a killed run resumes to the same result,
launch mismatches and unsupported settings are refused, checkpoints are written atomically."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from mope_lightning.cli import main
from mope_lightning.errors import ConfigError
from mope_lightning.training.launch import SafeCheckpointIO, check_trainer

from helpers import DEFAULT_EXP, TINY

# Per-device effects are switched off where the comparison needs them off: the importance loss is computed on each
# device's batch (a documented design choice), routing noise and prompt dropout are random per process, and the
# mapper's BatchNorm normalises each device's batch unless sync_batchnorm (GPU only) is on, so it keeps fixed
# statistics here.
EXACT = [
    "model.mope.importance_weight=0",
    "model.mope.router.noise_std=0",
    "model.mope.prompt_dropout=0",
    "model.compat.mapper_bn_frozen=true",
]


def cli(tmp_path, *extra, cwd=None, launcher=()):
    args = [
        *launcher,
        *(() if launcher else (sys.executable,)),
        "-m",
        "mope_lightning",
        "fit",
        str(DEFAULT_EXP),
        str(TINY),
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.train_images=24",
        "data.test_images=10",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        *extra,
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=cwd or tmp_path)


def trainable(ckpt_path):
    return torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]


def test_two_process_ddp_equals_one_process_with_twice_the_batch(tmp_path):
    common = [*EXACT, "trainer.max_steps=3", "trainer.limit_val_batches=0", "trainer.limit_test_batches=1"]
    one = cli(tmp_path, *common, "data.batch_size=8", f"trainer.default_root_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]
    two = cli(
        tmp_path,
        *common,
        "data.batch_size=4",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        f"trainer.default_root_dir={tmp_path / 'two'}",
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a = trainable(tmp_path / "one" / "version_0" / "checkpoints" / "last.ckpt")
    b = trainable(tmp_path / "two" / "version_0" / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    moved = torch.load(tmp_path / "one" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert moved["global_step"] == 3
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=2e-6, rtol=1e-4, msg=key)


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import lightning as L
    from mope_lightning.cli import fit as runner
    from mope_lightning.training.trainer_config import load_config

    class KillAt(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == int(os.environ["KILL_AT_STEP"]):
                os.kill(os.getpid(), signal.SIGKILL)

    build = runner.build_trainer
    def build_with_kill(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.callbacks.append(KillAt())
        return trainer

    runner.build_trainer = build_with_kill
    runner.run("fit", load_config(sys.argv[1:3], sys.argv[3:]))
""")


def test_a_run_killed_mid_epoch_resumes_with_ckpt_last_to_the_same_result(tmp_path):
    """Killed in the second epoch after its first validation: last.ckpt is mid-epoch (step 42 of 56), and the resumed
    epoch must go on with the 14 batches it had not trained, not start its order again. With data workers, which
    fetch their first indices as soon as the loader is iterated, before the trainer's state is restored; the
    uninterrupted run has none, which must not change its random numbers either."""
    # 24 images -> 224 training questions -> 28 steps per epoch at batch 8; 2 epochs; a validation (and last.ckpt)
    # every half epoch. checkpoint.test_with=last: the test metrics are those of the final weights.
    common = [
        "trainer.limit_train_batches=1.0",
        "trainer.max_epochs=2",
        "trainer.val_check_interval=0.5",
        "trainer.limit_val_batches=3",
        "trainer.limit_test_batches=4",
        "checkpoint.test_with=last",
    ]
    whole = cli(tmp_path, *common, f"trainer.default_root_dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]

    runs = tmp_path / "killed"
    args = [
        str(DEFAULT_EXP),
        str(TINY),
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.train_images=24",
        "data.test_images=10",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "data.num_workers=2",
        *common,
        f"trainer.default_root_dir={runs}",
    ]
    killed = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "KILL_AT_STEP": "48"},
        cwd=tmp_path,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL, mid-way through the second epoch
    last = runs / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 42 and saved["EasyVQADataModule"] == {
        "training_position": {"epoch": 1, "batches": 14}
    }
    assert not (runs / "version_0" / "fit_metrics.json").exists()  # nothing that looks like a finished run

    assert main(["fit", *args, "ckpt=last"]) == 0
    resumed = json.loads((runs / "version_0" / "fit_metrics.json").read_text())
    expected = json.loads((tmp_path / "whole" / "version_0" / "fit_metrics.json").read_text())
    assert resumed["metrics"] == pytest.approx(expected["metrics"], rel=1e-6, abs=1e-7)
    assert torch.load(last, weights_only=True)["global_step"] == 56
    a, b = trainable(tmp_path / "whole" / "version_0" / "checkpoints" / "last.ckpt"), trainable(last)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=1e-5, msg=key)


def test_the_training_order_resumes_each_process_after_the_batches_it_trained():
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import TrainerFn

    from mope_lightning.training.training_order import TrainingOrder, training_position

    data = list(range(103))
    for rank in (0, 1):
        whole = TrainingOrder(data, 2, rank, seed=5, batch_size=4)
        whole.set_epoch(1)
        resumed = TrainingOrder(data, 2, rank, seed=5, batch_size=4, start={"epoch": 1, "batches": 3})
        assert resumed.epoch == 1 and list(resumed) == list(whole)[12:] and len(resumed) == len(whole)
        whole.set_epoch(2)
        resumed.set_epoch(2)
        assert list(resumed) == list(whole)  # only the resumed epoch starts late

    def trainer(step, epoch, batches=10, accumulate=1, fn=TrainerFn.FITTING):
        return SimpleNamespace(
            state=SimpleNamespace(fn=fn),
            num_training_batches=batches,
            current_epoch=epoch,
            accumulate_grad_batches=accumulate,
            global_step=step,
        )

    assert training_position(trainer(13, 1)) == {"epoch": 1, "batches": 3}
    assert training_position(trainer(10, 0)) == {"epoch": 1, "batches": 0}  # an epoch's end: the next one's start
    assert training_position(trainer(7, 1, accumulate=3)) == {"epoch": 1, "batches": 9}  # 4 steps an epoch
    assert training_position(trainer(3, 0, fn=TrainerFn.TESTING)) is None
    assert training_position(trainer(0, 0, batches=float("inf"))) is None


def test_torchrun_with_a_mismatched_world_size_is_refused(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    proc = cli(
        tmp_path,
        "trainer.devices=1",
        f"trainer.default_root_dir={tmp_path / 'runs'}",
        launcher=(torchrun, "--nproc_per_node=2", "--master_port=29531"),
    )
    assert proc.returncode != 0
    assert (
        "torchrun started 2 processes (1 node(s) x 2), but trainer.devices x trainer.num_nodes = 1 x 1; set "
        "trainer.devices=2 trainer.num_nodes=1" in proc.stdout + proc.stderr
    )
    assert not (tmp_path / "runs").exists()  # refused before anything was built or written


def test_slurm_mismatch_and_settings_refused_before_training(monkeypatch):
    for key, value in {
        "SLURM_NTASKS": "8",
        "SLURM_NNODES": "2",
        "SLURM_NTASKS_PER_NODE": "4(x2)",
        "SLURM_JOB_NAME": "train",
        "SLURM_NODEID": "0",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
    }.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(
        ConfigError,
        match=r"SLURM \(srun\) started 8 processes \(2 node\(s\) x 4\).*"
        r"set trainer.devices=4 trainer.num_nodes=2",
    ):
        check_trainer({"devices": 4, "num_nodes": 1})
    check_trainer({"devices": 4, "num_nodes": 2, "accelerator": "cpu"})  # 4 x 2 = 8: accepted
    monkeypatch.delenv("SLURM_NTASKS")
    with pytest.raises(ConfigError, match="trainer.strategy=ddp with trainer.devices=1"):
        check_trainer({"strategy": "ddp", "devices": 1})
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="float16 mixed precision needs a GPU"):
            check_trainer({"precision": "16-mixed", "accelerator": "auto"})
        with pytest.raises(ConfigError, match="trainer.sync_batchnorm=true needs GPUs"):
            check_trainer({"sync_batchnorm": True, "accelerator": "cpu"})


def test_resuming_from_another_experiments_checkpoint_is_refused(tmp_path, capsys):
    base = [
        str(DEFAULT_EXP),
        str(TINY),
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.train_images=24",
        "data.test_images=10",
        "trainer.enable_progress_bar=false",
        f"trainer.default_root_dir={tmp_path / 'runs'}",
    ]
    assert main(["fit", *base]) == 0
    ckpt = tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    assert main(["fit", *base, "model.mope.num_experts=8", f"ckpt={ckpt}"]) == 2
    assert "was trained with other settings (model.mope.num_experts: 4 -> 8)" in capsys.readouterr().err
    assert main(["fit", *base, "experiment=other", f"ckpt={ckpt}"]) == 2
    assert "was trained by experiment 'easy_vqa'" in capsys.readouterr().err


def test_checkpoints_are_written_atomically(tmp_path):
    io = SafeCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("crash in the middle of saving")

    with pytest.raises(RuntimeError, match="crash in the middle of saving"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(1000), "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["step"] == 1  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # and no partial file is left behind


def test_atomically_written_files_get_the_usual_permissions(tmp_path):
    from mope_lightning.fileio import atomic_write

    mask = os.umask(0o022)
    try:
        written = atomic_write(tmp_path / "report.md", lambda fh: fh.write("done\n"))
        with open(tmp_path / "plain.md", "w") as fh:
            fh.write("done\n")
    finally:
        os.umask(mask)
    assert written.stat().st_mode & 0o777 == (tmp_path / "plain.md").stat().st_mode & 0o777 == 0o644
