"""Outputs that never destroy inputs (issue 35, items 1 and 7), through the real CLI on tiny models: export, predict,
analyze and robustness write only what they create or replace only their own earlier output
(`fileio.claim_output`), refuse before any model work, and a failed command leaves no empty run directory behind
(`fileio.NewFolders`). Every refusal is one message naming the key, exit status 2, and every file byte-identical."""

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mope_lightning
from mope_lightning.cli import main
from mope_lightning.errors import MopeError, ModelError

from helpers import DEFAULT_EXP, TINY
from helpers.cli import one_error
from helpers.cli import write_rows


def args(tmp, *extra):
    return [
        str(DEFAULT_EXP),
        str(TINY),
        f"trainer.default_root_dir={tmp / 'runs'}",
        f"data.cache_dir={tmp / 'cache'}",
        "data.train_images=40",
        "data.test_images=10",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        *extra,
    ]


def snapshot(folder: Path) -> dict:
    """Every file under `folder` (bytes) and every folder (None), by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny fit (3 steps) and its exported adapter, shared by the tests of this module (read only)."""
    tmp = tmp_path_factory.mktemp("outputs")
    assert main(["fit", *args(tmp, "trainer.max_steps=3")]) == 0
    last = tmp / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    assert main(["export", *args(tmp, f"ckpt={last}", f"out={tmp / 'adapter'}")]) == 0
    return tmp, last, tmp / "adapter"


@pytest.fixture
def no_model(monkeypatch):
    """Any model build fails the test: the refusals must come before any model work."""
    import mope_lightning.pretrained as pretrained
    import mope_lightning.cli.analyze as analyze_command
    import mope_lightning.cli.fit as runner
    import mope_lightning.training.build as building

    def built(*a, **k):
        raise AssertionError("a model was built before the output was checked")

    monkeypatch.setattr(runner, "build", built)
    monkeypatch.setattr(analyze_command, "build", built)  # the commands import it from training/build.py
    monkeypatch.setattr(building, "build", built)
    monkeypatch.setattr(pretrained, "build_pretrained", built)


# --- export ------------------------------------------------------------------------------------------------------
def test_export_over_a_folder_holding_the_checkpoint_and_other_files_changes_nothing(
    trained, tmp_path, capsys, no_model
):
    _, last, _ = trained
    folder = tmp_path / "work"
    (folder / "notes").mkdir(parents=True)
    shutil.copy(last, folder / "last.ckpt")
    (folder / "notes" / "todo.txt").write_text("keep me")
    (folder / "README.md").write_text("my own readme")
    before = snapshot(tmp_path)
    for extra in (["overwrite=true"], []):
        assert main(["export", *args(tmp_path, f"ckpt={folder / 'last.ckpt'}", f"out={folder}", *extra)]) == 2
        err = one_error(
            capsys,
            f"out: {folder} holds files that are not part of an adapter (last.ckpt, notes)",
            "write the adapter to a new or empty folder",
        )
        assert "overwrite=true" not in err  # the refusal never invites data loss
        assert snapshot(tmp_path) == before


def test_export_over_an_earlier_adapter_with_a_file_beside_it_is_refused(trained, tmp_path, capsys, no_model):
    _, last, adapter = trained
    folder = tmp_path / "adapter"
    shutil.copytree(adapter, folder)
    (folder / "eval.csv").write_text("id,score\n")
    before = snapshot(tmp_path)
    assert main(["export", *args(tmp_path, f"ckpt={last}", f"out={folder}", "overwrite=true")]) == 2
    one_error(capsys, f"out: {folder} holds files that are not part of an adapter (eval.csv)")
    assert snapshot(tmp_path) == before


def test_export_over_a_foreign_adapter_folder_or_its_own_input_is_refused(trained, tmp_path, capsys, no_model):
    tmp, last, adapter = trained
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (peft / "adapter.safetensors").write_bytes(b"weights of another library")
    before = snapshot(tmp_path)
    assert main(["export", *args(tmp_path, f"ckpt={last}", f"out={peft}", "overwrite=true")]) == 2
    one_error(
        capsys, f"out: {peft / 'adapter.safetensors'}, {peft / 'adapter_config.json'}: not an adapter written by mope"
    )
    assert snapshot(tmp_path) == before
    adapter_before = snapshot(adapter)
    assert main(["export", *args(tmp, f"ckpt={adapter}", f"out={adapter}", "overwrite=true")]) == 2
    one_error(capsys, f"out: {adapter} is an input of this command")
    assert snapshot(adapter) == adapter_before


def test_export_replaces_only_its_own_earlier_adapter(trained, tmp_path, capsys):
    _, last, adapter = trained
    folder = tmp_path / "adapter"
    shutil.copytree(adapter, folder)
    (folder / "README.md").write_text("the card of an earlier export")
    assert main(["export", *args(tmp_path, f"ckpt={last}", f"out={folder}")]) == 2
    one_error(
        capsys,
        f"out: {folder} already holds an adapter (adapter.safetensors, adapter_config.json, README.md)",
        "pass overwrite=true to replace these files",
    )
    assert main(["export", *args(tmp_path, f"ckpt={last}", f"out={folder}", "overwrite=true")]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no staging or retired folder left
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapter.safetensors", "adapter_config.json"]
    for name in ("README.md", "adapter_config.json"):  # the same checkpoint's export, in place of the earlier one
        assert (folder / name).read_bytes() == (adapter / name).read_bytes(), name
    new, old = (load_file(f / "adapter.safetensors") for f in (folder, adapter))
    assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in new)
    mope_lightning.from_pretrained(folder)


def test_save_pretrained_follows_the_same_rule(trained, tmp_path):
    _, last, adapter = trained
    model = mope_lightning.from_pretrained(adapter)
    (tmp_path / "mine.txt").write_text("keep me")
    before = snapshot(tmp_path)
    with pytest.raises(MopeError, match="holds files that are not part of an adapter \\(mine.txt\\)"):
        model.save_pretrained(tmp_path, overwrite=True)
    with pytest.raises(MopeError, match="is an input of this command"):
        model.save_pretrained(adapter, overwrite=True)
    assert snapshot(tmp_path) == before


# --- predict -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["adapter.safetensors", "adapter_config.json", "predictions.csv"])
def test_predict_out_inside_the_adapter_being_read_is_refused(trained, tmp_path, capsys, no_model, name):
    tmp, _, adapter = trained
    rows = write_rows(tmp_path, [{"text": "what shape is this?", "image": "img0.png"}])
    before, rows_before = snapshot(adapter), snapshot(tmp_path)
    for extra in ([f"predict.input={rows}"], []):  # new rows, and a dataset split
        assert (
            main(
                [
                    "predict",
                    *args(tmp, f"ckpt={adapter}", f"predict.out={adapter / name}", "predict.overwrite=true", *extra),
                ]
            )
            == 2
        )
        one_error(capsys, f"predict.out: {adapter / name} is inside {adapter}, an input of this command")
    assert snapshot(adapter) == before and snapshot(tmp_path) == rows_before


@pytest.mark.parametrize("exists", [False, True])
def test_predict_out_ending_in_a_slash_is_refused(trained, tmp_path, capsys, no_model, exists):
    tmp, last, _ = trained
    rows = write_rows(tmp_path, [{"text": "what shape is this?", "image": "img0.png"}])
    folder = tmp_path / "preds"
    if exists:
        folder.mkdir()
    before = snapshot(tmp_path)
    assert main(["predict", *args(tmp, f"ckpt={last}", f"predict.input={rows}", f"predict.out={folder}/")]) == 2
    one_error(
        capsys,
        "predict.out: ",
        "so it names a folder" if not exists else f"{folder} is a folder",
        f"give a file path, e.g. predict.out={folder / 'NAME'}",
    )
    assert snapshot(tmp_path) == before


def test_predict_overwrite_replaces_only_its_own_predictions(trained, tmp_path, capsys):
    tmp, last, _ = trained
    rows = write_rows(tmp_path, [{"text": "what shape is this?", "image": "img0.png"}])
    out = tmp_path / "preds.csv"
    out.write_text("id,score\nq1,0.5\n")  # someone else's CSV
    before = snapshot(tmp_path)
    assert (
        main(
            [
                "predict",
                *args(tmp, f"ckpt={last}", f"predict.input={rows}", f"predict.out={out}", "predict.overwrite=true"),
            ]
        )
        == 2
    )
    one_error(capsys, f"predict.out: {out} already exists and is not a predictions CSV written by mope")
    assert snapshot(tmp_path) == before
    out.unlink()
    assert main(["predict", *args(tmp, f"ckpt={last}", f"predict.input={rows}", f"predict.out={out}")]) == 0
    first = out.read_bytes()
    out.write_bytes(first.replace(b"\n", b"\r\n", 1))  # mope's own predictions, edited: still recognised
    assert (
        main(
            [
                "predict",
                *args(tmp, f"ckpt={last}", f"predict.input={rows}", f"predict.out={out}", "predict.overwrite=true"),
            ]
        )
        == 0
    )
    assert out.read_bytes() == first


# --- analyze and robustness --------------------------------------------------------------------------------------
@pytest.mark.parametrize("command, key", [("analyze", "out"), ("robustness", "robustness.out")])
def test_out_naming_an_existing_file_is_refused_before_any_model_work(
    trained, tmp_path, capsys, no_model, command, key
):
    tmp, last, _ = trained
    target = tmp_path / "results.md"
    target.write_text("my notes")
    before = snapshot(tmp_path)
    for extra in ([], ["overwrite=true"]):
        assert main([command, *args(tmp, f"ckpt={last}", f"out={target}", *extra)]) == 2
        one_error(capsys, f"{key}: {target} is a file; give a folder for the")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "command, key, name, what",
    [
        ("analyze", "out", "summary.md", "routing report"),
        ("robustness", "robustness.out", "robustness.md", "robustness report"),
    ],
)
def test_out_holding_files_mope_did_not_write_is_refused_even_with_overwrite(
    trained, tmp_path, capsys, no_model, command, key, name, what
):
    tmp, last, adapter = trained
    (tmp_path / name).write_text("my own summary")
    before = snapshot(tmp_path)
    assert main([command, *args(tmp, f"ckpt={last}", f"out={tmp_path}", "overwrite=true")]) == 2
    one_error(capsys, f"{key}: {tmp_path / name}: not a {what} written by mope")
    assert snapshot(tmp_path) == before
    adapter_before = snapshot(adapter)  # nor a report written into the adapter folder being read
    assert main([command, *args(tmp, f"ckpt={adapter}", f"out={adapter}")]) == 2
    one_error(capsys, f"{key}: {adapter} is an input of this command")
    assert snapshot(adapter) == adapter_before


# --- no empty run directory after a failure ----------------------------------------------------------------------
def test_a_fit_refused_by_lightning_leaves_no_run_directory(tmp_path, capsys):
    root = tmp_path / "new" / "runs"
    assert main(["fit", *args(tmp_path, f"trainer.default_root_dir={root}", "trainer.strategy=nonsense")]) == 2
    one_error(capsys, "trainer: lightning.Trainer refused these settings")
    assert not (tmp_path / "new").exists()  # the folders it created, and only those, are gone
    root.mkdir(parents=True)  # a folder that was there before is kept, even empty
    assert main(["fit", *args(tmp_path, f"trainer.default_root_dir={root}", "trainer.strategy=nonsense")]) == 2
    capsys.readouterr()
    assert root.is_dir() and list(root.iterdir()) == []


def test_a_fit_failing_at_setup_leaves_no_run_directory_and_keeps_a_resumed_one(trained, tmp_path, capsys, monkeypatch):
    import mope_lightning.training.lit_module as lit_module

    def broken(self, stage):
        raise ModelError("model.fusion: cannot set up (as a test)")

    monkeypatch.setattr(lit_module.MoPELitModule, "setup", broken)
    assert main(["fit", *args(tmp_path)]) == 2  # after config.yaml and the TensorBoard file were written
    one_error(capsys, "model.fusion: cannot set up")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    tmp, _, _ = trained  # a run resumed in place that fails keeps everything it had
    run = tmp_path / "resumed"
    shutil.copytree(tmp / "runs", run)
    before = snapshot(run)
    assert main(["fit", *args(tmp_path, f"trainer.default_root_dir={run}", "ckpt=last")]) == 2
    one_error(capsys, "model.fusion: cannot set up")
    after = snapshot(run)  # nothing it had was removed or changed (its config.yaml records the resume's settings)
    assert all(after[k] == v for k, v in before.items() if k != "version_0/config.yaml")


# --- the shared rule itself --------------------------------------------------------------------------------------
def test_an_input_reached_through_a_symlink_or_a_hard_link_is_still_an_input(tmp_path):
    from mope_lightning.errors import ConfigError
    from mope_lightning.fileio import claim_output

    ckpt, adapter = tmp_path / "w.ckpt", tmp_path / "adapter"
    ckpt.write_bytes(b"weights")
    adapter.mkdir()
    (tmp_path / "link.ckpt").symlink_to(ckpt)
    os.link(ckpt, tmp_path / "hard.ckpt")
    (tmp_path / "alias").symlink_to(adapter)
    mine = lambda path: True  # noqa: E731 (even what the command would call its own)
    for out in ("link.ckpt", "hard.ckpt", "alias/preds.csv"):
        with pytest.raises(ConfigError, match="an input of this command"):
            claim_output(tmp_path / out, "predict.out", inputs=[ckpt, adapter], overwrite=True, earlier=mine)
    with pytest.raises(ConfigError, match=f"predict.out: {ckpt} is a file, so"):
        claim_output(ckpt / "preds.csv", "predict.out")
    assert ckpt.read_bytes() == b"weights"


def test_new_folders_removes_only_the_unused_folders_a_failed_command_created(tmp_path):
    from mope_lightning.fileio import NewFolders

    (tmp_path / "runs").mkdir()
    with pytest.raises(RuntimeError), NewFolders() as created:
        created.expect(tmp_path / "runs" / "a" / "b")
        created.expect(tmp_path / "runs" / "c", records_nothing=lambda p: p.name == "config.yaml")
        (tmp_path / "runs" / "a" / "b" / "empty").mkdir(parents=True)
        (tmp_path / "runs" / "a" / "notes.txt").write_text("written meanwhile")
        (tmp_path / "runs" / "c").mkdir()
        (tmp_path / "runs" / "c" / "config.yaml").write_text("seed: 1")
        raise RuntimeError
    assert snapshot(tmp_path) == {"runs": None, "runs/a": None, "runs/a/notes.txt": b"written meanwhile"}
    with NewFolders() as created:  # a command that succeeds keeps even its empty folders
        created.expect(tmp_path / "d")
        (tmp_path / "d").mkdir()
    assert (tmp_path / "d").is_dir()
