"""Edge sizes through the real CLI on tiny models: runs extended by a resume (`max_epochs`, `max_steps`) train on to
the new limit exactly as an uninterrupted run would, or are refused when there is nothing left to train; splits and
batches of one sample, a class absent from a split and a split with one class train, validate, draw the routing
views and test."""

import json
import math
import shutil

import pytest
import torch

from mope_lightning.cli import main

from helpers import EXPERIMENTS, TINY
from helpers.datasets import make_mustard
from helpers.cli import args, one_error

# A learning rate that does not depend on the run's length (the default cosine schedule spans max_steps or
# max_epochs, which a resume changes), so a resumed run can be compared with an uninterrupted one.
FLAT_LR = ["optim.scheduler=constant", "optim.warmup_steps=0", "checkpoint.test_with=last"]
STEPS_PER_EPOCH = 4  # the tiny overlay's limit_train_batches


def last_checkpoint(tmp) -> dict:
    return torch.load(tmp / "runs" / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


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


def test_a_finished_run_resumed_with_its_own_limits_trains_nothing_and_says_so(extended_by_epochs, tmp_path, capsys):
    """The limits it was trained with: a sweep resumes a run killed after training, before its metrics were written.
    Nothing trains (the weights stay), the note says so, and the run's test follows."""
    shutil.copytree(extended_by_epochs[0] / "runs", tmp_path / "runs")  # the module's run stays as it was
    tmp = tmp_path
    before = last_checkpoint(tmp)
    capsys.readouterr()
    assert main(["fit", *args(tmp, *FLAT_LR, "ckpt=last", "trainer.max_epochs=3", "trainer.max_steps=100")]) == 0
    out = capsys.readouterr().out
    assert "finished its training (3 epoch(s), up to step 12) under these limits: nothing is trained" in out
    assert "test/acc" in out
    after = last_checkpoint(tmp)
    assert after["global_step"] == 12
    assert_same_weights(before, after)


@pytest.mark.parametrize(
    "limits, named",
    [
        (["trainer.max_epochs=2", "trainer.max_steps=100"], "trainer.max_epochs=2 leaves nothing to train"),
        (["trainer.max_epochs=5", "trainer.max_steps=12"], "trainer.max_steps=12 leaves nothing to train"),
        (["trainer.max_epochs=3", "trainer.max_steps=9"], "trainer.max_steps=9 and trainer.max_epochs=3 leave nothing"),
    ],
)
def test_a_resume_whose_limit_the_checkpoint_has_reached_is_refused(extended_by_epochs, capsys, limits, named):
    tmp, _ = extended_by_epochs
    capsys.readouterr()
    kept = files_of(tmp)
    assert main(["fit", *args(tmp, *FLAT_LR, "ckpt=last", *limits)]) == 2
    one_error(capsys, "has trained 3 epoch(s), up to step 12", named, "nothing was run", "mope test ... ckpt=")
    assert files_of(tmp) == kept  # no run started, no record of a resume that did not happen


# --- splits and batches of one sample, absent classes, a split of one class -------------------------------------
def mustard_args(tmp, root, *extra):
    """MUStARD's 30-utterance fixture, fold 0: 24 training utterances, of which data.val_fraction=0.04 holds out
    one (sarcastic) as the val split; batch 11 leaves a last training batch of one (23 = 2 x 11 + 1)."""
    return [
        str(EXPERIMENTS / "mustard.yaml"),
        str(TINY),
        f"data.root={root}",
        f"data.cache_dir={tmp / 'cache'}",
        f"trainer.default_root_dir={tmp / 'runs'}",
        "data.num_workers=0",
        "data.val_fraction=0.04",
        "data.batch_size=11",
        "data.eval_batch_size=5",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        *extra,
    ]


def finite_metrics(run) -> dict:
    metrics = json.loads((run / "fit_metrics.json").read_text())["metrics"]
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    return metrics


def test_a_val_split_of_one_utterance_and_a_last_batch_of_one_train_validate_and_test(tmp_path, capsys):
    """The one-utterance val split used to stop the first validation with `len() of a 0-d tensor` in the routing
    view (torchmetrics squeezes one-element results); it is also a split of one class, whose AUROC is undefined."""
    root = make_mustard(tmp_path / "mustard")
    assert main(["fit", *mustard_args(tmp_path, root)]) == 0
    captured = capsys.readouterr()
    assert "splits: train 23, val 1, test 6" in captured.err and "Traceback" not in captured.err
    # torchmetrics would log val/auroc = 0 with a warning; it is left out, with a note naming it and the class
    assert (
        captured.err.count(
            "[mope] note: val/auroc left out: it needs samples of both classes, and these are all 'sarcastic'"
        )
        == 1
    )
    run = tmp_path / "runs" / "version_0"
    assert last_checkpoint(tmp_path)["global_step"] == 2  # the last batch of one is dropped (BatchNorm), not a crash
    metrics = finite_metrics(run)
    assert {"test/acc", "test/auroc", "test/f1_weighted"} <= set(metrics)  # the test split holds both classes
    routing = json.loads((run / "routing_val.json").read_text())
    assert routing["class_count"] == [0.0, 1.0]
    assert "mi_class_relative" not in routing  # 0 whatever the routing with one class: not measured
    assert (
        main(["analyze", *mustard_args(tmp_path, root), "ckpt=last", "analyze.split=val", f"out={tmp_path / 'report'}"])
        == 0
    )
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "- samples: 1" in summary and "Not measured: the samples are all of one class (sarcastic)" in summary
    assert (tmp_path / "report" / "exemplars.png").stat().st_size > 0


def test_a_checkpoint_monitor_the_val_split_leaves_undefined_is_refused(tmp_path, capsys):
    root = make_mustard(tmp_path / "mustard")
    assert main(["fit", *mustard_args(tmp_path, root, "checkpoint.monitor=val/auroc")]) == 2
    one_error(
        capsys,
        "checkpoint.monitor: val/auroc needs samples of both classes in the val split, and its 1 "
        "sample(s) are all 'sarcastic'",
        "checkpoint.monitor=val/loss checkpoint.mode=min",
    )
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


def test_classes_absent_from_small_splits_and_last_eval_batches_of_one(tmp_path):
    """easy-VQA with 6 val questions (2 of the 13 answers) and the 11 questions of one test image: batches of 5,
    so each split ends on a batch of one sample."""
    extra = ["data.test_images=1", "data.val_fraction=0.02", "data.eval_batch_size=5", "checkpoint.test_with=last"]
    assert main(["fit", *args(tmp_path, *extra)]) == 0
    run = tmp_path / "runs" / "version_0"
    finite_metrics(run)
    routing = json.loads((run / "routing_val.json").read_text())
    assert sum(n > 0 for n in routing["class_count"]) == 2 and sum(routing["class_count"]) == 6
    assert all(math.isfinite(v) for v in routing["mi_class_relative"] + routing["mi_class_bits"])
    assert (
        main(["analyze", *args(tmp_path, *extra), "ckpt=last", "analyze.split=test", f"out={tmp_path / 'report'}"]) == 0
    )
    rows = (tmp_path / "report" / "routing.csv").read_text().splitlines()
    assert len(rows) == 1 + 11
    assert "nan" not in (tmp_path / "report" / "summary.md").read_text().lower()


def test_auroc_of_samples_of_one_class_is_left_out_with_a_note():
    from mope_lightning.training.lit_module import defined_metrics, make_metrics

    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    one_class = make_metrics("multiclass", 2)
    one_class.update(logits, torch.tensor([1, 1, 1]))
    values, notes = defined_metrics(one_class, ["literal", "sarcastic"])
    assert set(values) == {"acc", "f1_weighted"}
    assert notes == ["auroc left out: it needs samples of both classes, and these are all 'sarcastic'"]
    both = make_metrics("multiclass", 2)
    both.update(logits, torch.tensor([0, 1, 0]))
    values, notes = defined_metrics(both, ["literal", "sarcastic"])
    assert values["auroc"] == 1.0 and notes == []
