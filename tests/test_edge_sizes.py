"""Edge sizes through the real CLI on tiny models: runs extended by a resume (`max_epochs`, `max_steps`) train on to
the new limit exactly as an uninterrupted run would, or are refused when there is nothing left to train; splits and
batches of one sample, a class absent from a split and a split with one class train, validate, draw the routing
views and test."""

import json

import pytest
import torch

from mope_lightning.cli import main

from test_hostile import args, one_error

# A learning rate that does not depend on the run's length (the default cosine schedule spans max_steps or
# max_epochs, which a resume changes), so a resumed run can be compared with an uninterrupted one.
FLAT_LR = ["optim.scheduler=constant", "optim.warmup_steps=0", "checkpoint.test_with=last"]
STEPS_PER_EPOCH = 4  # the tiny overlay's limit_train_batches


def last_checkpoint(tmp) -> dict:
    return torch.load(tmp / "runs" / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)


def logged_step(checkpoint: dict) -> int:
    """The step the loggers write metrics at (Lightning's count of batches that stepped the optimizer)."""
    return checkpoint["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        torch.testing.assert_close(b["state_dict"][key], a["state_dict"][key], atol=1e-6, rtol=1e-5, msg=key)


def assert_trained_since(before: dict, after: dict) -> None:
    changed = [k for k in before["state_dict"] if not torch.equal(before["state_dict"][k], after["state_dict"][k])]
    assert changed, "the resumed run left every weight as it was"


def files_of(tmp) -> dict:
    return {p: p.read_bytes() for p in sorted((tmp / "runs").rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Three epochs in one run: 12 steps."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    assert main(["fit", *args(tmp, *FLAT_LR, "trainer.max_epochs=3")]) == 0
    return last_checkpoint(tmp)


@pytest.fixture(scope="module")
def extended_by_epochs(tmp_path_factory):
    """Two epochs, then `ckpt=last trainer.max_epochs=3` with a max_steps that is not reached: Lightning's
    step-based restart (any max_steps) used to take the finished epoch's batch count for the new epoch's, train
    nothing and report `max_epochs=3 reached`."""
    tmp = tmp_path_factory.mktemp("extended_by_epochs")
    assert main(["fit", *args(tmp, *FLAT_LR, "trainer.max_epochs=2")]) == 0
    before = last_checkpoint(tmp)
    assert main(["fit", *args(tmp, *FLAT_LR, "ckpt=last", "trainer.max_epochs=3", "trainer.max_steps=100")]) == 0
    return tmp, before


def test_a_finished_run_extended_by_max_epochs_trains_on_as_if_uninterrupted(extended_by_epochs, uninterrupted):
    tmp, before = extended_by_epochs
    after = last_checkpoint(tmp)
    assert before["global_step"] == 2 * STEPS_PER_EPOCH
    assert after["global_step"] == logged_step(after) == 3 * STEPS_PER_EPOCH
    assert after["EasyVQADataModule"] == {"training_position": {"epoch": 3, "batches": 0}}
    assert_trained_since(before, after)
    assert_same_weights(uninterrupted, after)
    record = json.loads((tmp / "runs" / "version_0" / "resumes.json").read_text())
    assert {c["key"] for c in record[-1]["changes"]} == {"trainer.max_epochs", "trainer.max_steps"}


def test_a_run_stopped_by_max_steps_mid_epoch_resumes_inside_that_epoch(tmp_path, uninterrupted):
    """Stopped at step 6 (batch 2 of epoch 2): the position used to be lost (Lightning counts the cut epoch as
    completed), and the resumed run started a new epoch or restarted the cut one in a new order."""
    assert main(["fit", *args(tmp_path, *FLAT_LR, "trainer.max_epochs=3", "trainer.max_steps=6")]) == 0
    before = last_checkpoint(tmp_path)
    assert before["global_step"] == 6
    assert before["EasyVQADataModule"] == {"training_position": {"epoch": 1, "batches": 2}}
    assert main(["fit", *args(tmp_path, *FLAT_LR, "ckpt=last", "trainer.max_epochs=3", "trainer.max_steps=12")]) == 0
    after = last_checkpoint(tmp_path)
    assert after["global_step"] == logged_step(after) == 12
    assert_trained_since(before, after)
    assert_same_weights(uninterrupted, after)


@pytest.mark.parametrize("limits, named", [
    (["trainer.max_epochs=3", "trainer.max_steps=100"], "trainer.max_epochs=3 leaves nothing to train"),
    (["trainer.max_epochs=2", "trainer.max_steps=100"], "trainer.max_epochs=2 leaves nothing to train"),
    (["trainer.max_epochs=5", "trainer.max_steps=12"], "trainer.max_steps=12 leaves nothing to train"),
    (["trainer.max_epochs=3", "trainer.max_steps=9"], "trainer.max_steps=9 and trainer.max_epochs=3 leave nothing"),
])
def test_a_resume_whose_limit_the_checkpoint_has_reached_is_refused(extended_by_epochs, capsys, limits, named):
    tmp, _ = extended_by_epochs
    capsys.readouterr()
    kept = files_of(tmp)
    assert main(["fit", *args(tmp, *FLAT_LR, "ckpt=last", *limits)]) == 2
    one_error(capsys, "has trained 3 epoch(s), up to step 12", named, "nothing was run", "mope test ... ckpt=")
    assert files_of(tmp) == kept  # no run started, no record of a resume that did not happen
