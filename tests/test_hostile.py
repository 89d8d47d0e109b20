"""Hostile input through the real CLI (config values, run directories, resumes, diverging training, non-finite
results): each case ends with one message naming the key or file, the documented exit status, and no damaged or
misleading output. Dataset faults are in test_hostile_data.py."""

import json
import os
import re

import pytest
import torch

from mope_lightning.cli import main
from mope_lightning.errors import NonFiniteError
from mope_lightning.training.launch import SafeCheckpointIO

from helpers import DEFAULT_EXP
from helpers.cli import args, one_error


def checkpoints(tmp_path) -> list:
    return sorted((tmp_path / "runs").rglob("*.ckpt"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.num_workers=-1", "command line: data.num_workers: must be at least 0, got -1"),
        ("data.max_text_length=-3", "data.max_text_length: must be at least 1"),
        ("data.eval_batch_size=0", "data.eval_batch_size: must be at least 1"),
        ("model.mope.dynamic_length=-2", "model.mope.dynamic_length: must be at least 0"),
        ("model.mope.prompt_dropout=1.5", "model.mope.prompt_dropout: must be in [0, 1)"),
        ("model.mope.router.top_k=9", "model.mope.router.top_k: 9 is more than the 4 experts"),
        ("optim.lr=0", "optim.lr: must be greater than 0"),
        ("optim.betas=[0.9]", "optim.betas: needs 2 numbers"),
        ("optim.group_lr.prompt=0.1", "optim.group_lr.prompt: unknown parameter group"),
        ("seed=-1", "seed: must be in [0, 4294967295]"),
        ("trainer.max_epochs=abc", "trainer.max_epochs: 'abc' is not accepted by lightning.Trainer"),
        ("trainer.precision=fp32", "trainer.precision: 'fp32' is not accepted by lightning.Trainer"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches: must be at least 1"),
        ("optim.lr=${optim.nope}", "optim.lr: Interpolation key 'optim.nope' not found"),
    ],
)
def test_nonsensical_config_values_are_refused_before_anything_runs(tmp_path, capsys, override, message):
    assert main(["fit", *args(tmp_path), override]) == 2
    one_error(capsys, message)
    assert not (tmp_path / "runs").exists()  # refused while reading the config: no run was started


def test_a_config_file_that_is_not_utf8_names_file_and_line(tmp_path, capsys):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_bytes(b"trainer:\n  max_epochs: 2\n# caf\xe9\n")
    assert main(["params", str(DEFAULT_EXP), str(overlay)]) == 2
    one_error(capsys, f"{overlay}:3: not UTF-8 text")


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.batch_size=1", "data.batch_size=1: the model's BatchNorm"),
        ("trainer.strategy=nonsense", "trainer: lightning.Trainer refused these settings"),
        ("model.mope.num_experts=100000000", "model.mope: num_experts=100000000"),
    ],
)
def test_settings_the_model_or_trainer_cannot_run_are_refused_before_training(tmp_path, capsys, override, message):
    assert main(["fit", *args(tmp_path), override]) == 2
    one_error(capsys, message)
    assert checkpoints(tmp_path) == []


def test_a_run_directory_that_cannot_be_written_is_named(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["fit", *args(tmp_path), f"trainer.default_root_dir={blocker}/runs"]) == 2
    one_error(capsys, "trainer.default_root_dir: cannot write in", "point trainer.default_root_dir at a writable")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_run_directory_is_named(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o500)
    try:
        assert main(["fit", *args(tmp_path)]) == 2
        one_error(capsys, f"trainer.default_root_dir: cannot write in {runs}")
    finally:
        runs.chmod(0o700)


def test_a_diverging_run_stops_naming_the_step_and_saves_no_weights(tmp_path, capsys):
    assert main(["fit", *args(tmp_path, "optim.lr=1e12", "trainer.max_epochs=3")]) == 2
    err = one_error(
        capsys, "training diverged: the loss is nan at step", "the last finite loss was", "Lower optim.lr (now 1e+12)"
    )
    # The step before the diverged one had a finite loss, and the message names it (transformers' warmup gives the
    # first step a learning rate of 0, so the run diverges at step 2 here, not 1).
    found = re.search(r"nan at step (\d+) .* finite loss was \S+ at step (\d+)", err)
    nan_step, finite_step = int(found.group(1)), int(found.group(2))
    assert nan_step == finite_step + 1 and nan_step <= 3
    assert checkpoints(tmp_path) == []  # it diverged before the first validation: nothing to keep
    assert not list((tmp_path / "runs").rglob("fit_metrics.json"))


def test_non_finite_weights_are_never_written_as_a_checkpoint(tmp_path):
    state = {"state_dict": {"net.head.weight": torch.tensor([1.0, float("nan")])}, "epoch": 0}
    with pytest.raises(NonFiniteError, match=r"not saved: the weights hold NaN or infinite values \(net.head.weight"):
        SafeCheckpointIO().save_checkpoint(state, tmp_path / "best.ckpt")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one_epoch")
    assert main(["fit", *args(tmp)]) == 0
    return tmp


def test_a_checkpoint_with_non_finite_outputs_reports_no_result(one_epoch, tmp_path, capsys):
    ckpt = torch.load(one_epoch / "runs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    head = next(k for k in ckpt["state_dict"] if k.startswith("net.head") and k.endswith("weight"))
    ckpt["state_dict"][head] = torch.full_like(ckpt["state_dict"][head], float("nan"))
    broken = tmp_path / "nan.ckpt"
    torch.save(ckpt, broken)
    assert main(["test", *args(tmp_path), f"ckpt={broken}"]) == 2
    one_error(capsys, "test: test/loss is nan", "no result was written")
    assert not list((tmp_path / "runs").rglob("test_metrics.json"))


def test_resume_refuses_changed_settings_and_leaves_the_run_untouched(one_epoch, capsys):
    run = one_epoch / "runs" / "version_0"
    config = (run / "config.yaml").read_text()
    assert main(["fit", *args(one_epoch, "ckpt=last", "optim.lr=0.5", "seed=3")]) == 2
    one_error(
        capsys,
        "was trained with other settings (optim.lr: 0.003 -> 0.5; seed: 42 -> 3)",
        "start a new run without ckpt=",
    )
    assert (run / "config.yaml").read_text() == config  # the record still says what the weights were trained with
    assert main(["fit", *args(one_epoch, "ckpt=last", "trainer.precision=bf16-mixed")]) == 2
    one_error(capsys, "trainer.precision: '32-true' -> 'bf16-mixed'")


def test_resume_applies_and_records_run_length_changes(one_epoch, capsys):
    assert main(["fit", *args(one_epoch, "ckpt=last", "trainer.max_epochs=2")]) == 0
    assert "with changed settings: trainer.max_epochs: 1 -> 2" in capsys.readouterr().out
    run = one_epoch / "runs" / "version_0"
    record = json.loads((run / "resumes.json").read_text())
    assert record[-1]["changes"] == [{"key": "trainer.max_epochs", "was": 1, "now": 2}]
    assert "max_epochs: 2" in (run / "config.yaml").read_text()
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 * 4 and last["hyper_parameters"]["config"]["trainer"]["max_epochs"] == 2


def test_out_of_memory_and_ctrl_c_outside_training_get_one_message(tmp_path, capsys, monkeypatch):
    import mope_lightning.cli.fit as runner

    def out_of_memory(command, cfg):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(runner, "run", out_of_memory)
    assert main(["test", *args(tmp_path), "ckpt=x.ckpt"]) == 2
    one_error(capsys, "out of memory (CUDA out of memory. Tried to allocate 20.00 GiB)", "lower data.batch_size")

    def ctrl_c(command, cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run", ctrl_c)
    assert main(["test", *args(tmp_path), "ckpt=x.ckpt"]) == 130
    one_error(capsys, "interrupted by SIGINT")


def test_compile_without_a_cxx_compiler_is_one_message(tmp_path, capsys, monkeypatch):
    """model.compile on CPU needs a C++ compiler for inductor: refused before anything trains, not mid-step."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no compiler to be found
    monkeypatch.delenv("CXX", raising=False)
    assert main(["fit", *args(tmp_path, "model.compile=true")]) == 2
    one_error(capsys, "model.compile=true: torch.compile on CPU builds C++ kernels, and no C++ compiler was found")
    assert not checkpoints(tmp_path)


def test_bf16_on_a_cpu_without_native_bf16_runs_with_a_note(capsys, monkeypatch):
    from mope_lightning.training import launch

    monkeypatch.setattr(launch, "cpu_has_bf16", lambda: False)
    launch.check_trainer({"accelerator": "cpu", "precision": "bf16-mixed"})  # allowed, not refused
    assert "trainer.precision=bf16-mixed on a CPU without native bfloat16" in capsys.readouterr().err
    monkeypatch.setattr(launch, "cpu_has_bf16", lambda: True)
    launch.check_trainer({"accelerator": "cpu", "precision": "bf16-mixed"})
    assert capsys.readouterr().err == ""
