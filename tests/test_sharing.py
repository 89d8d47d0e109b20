"""Sharing trained models safely, on tiny random-init encoders through the real CLI: no checkpoint runs code, no
run loses its weights, broken files get one message, adapters round-trip, the Python API and the Hub path work,
and `mope predict` scores new (text, image) rows."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import mope_lightning
from mope_lightning.cli import main
from mope_lightning.data.datasets.easy_vqa import default_root
from mope_lightning.errors import CheckpointError, MopeError

from helpers import TINY
from helpers.cli import args, write_rows


def one_error(capsys, *needles) -> str:
    err = capsys.readouterr().err
    assert err.startswith("mope: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny fit that stops on max_steps before its first validation: last.ckpt must still hold its weights."""
    tmp = tmp_path_factory.mktemp("trained")
    assert main(["fit", *args(tmp, "trainer.max_steps=3")]) == 0
    last = tmp / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    return tmp, last


def test_max_steps_before_the_first_validation_leaves_last_ckpt(trained, capsys):
    tmp, last = trained
    ckpt = torch.load(last, map_location="cpu", weights_only=True)  # plain tensors and containers only
    assert ckpt["global_step"] == 3 and ckpt["optimizer_states"]
    assert not list(last.parent.glob("epoch*"))  # no validation ran, so no best checkpoint exists
    assert main(["test", *args(tmp, f"ckpt={last}")]) == 0
    assert "test/acc" in capsys.readouterr().out


@pytest.fixture
def evil_checkpoint(trained, tmp_path):
    """A real checkpoint plus one object whose unpickling would create `marker`."""
    _, last = trained
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["note"] = Payload()
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)
    return path, marker


def test_a_checkpoint_whose_pickle_runs_code_is_refused_everywhere(trained, evil_checkpoint, tmp_path, capsys):
    tmp, _ = trained
    path, marker = evil_checkpoint
    for command, extra in (
        ("test", []),
        ("validate", []),
        ("predict", []),
        ("fit", []),
        ("analyze", [f"out={tmp_path / 'report'}"]),
        ("export", [f"out={tmp_path / 'adapter'}"]),
    ):
        assert main([command, *args(tmp, f"ckpt={path}", *extra)]) == 2, command
        one_error(capsys, str(path), "refused", "builtins.exec")
    with pytest.raises(CheckpointError, match="refused"):
        mope_lightning.from_pretrained(path)
    assert not marker.exists()
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "report").exists()


@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "pickle", "tensor", "folder", "foreign dict"])
def test_broken_checkpoint_files_get_one_message(trained, tmp_path, capsys, kind):
    tmp, last = trained
    bad = tmp_path / "bad.ckpt"
    if kind == "empty":
        bad.write_bytes(b"")
    elif kind == "truncated":
        bad.write_bytes(last.read_bytes()[:20_000])
    elif kind == "text":
        bad.write_text("not a checkpoint\n")
    elif kind == "pickle":
        import pickle

        bad.write_bytes(pickle.dumps({"a": 1}))
    elif kind == "tensor":
        torch.save(torch.zeros(3), bad)
    elif kind == "folder":
        bad.mkdir()
    else:
        torch.save({"state_dict": {"x": torch.zeros(1)}}, bad)
    for command in ("test", "fit"):
        assert main([command, *args(tmp, f"ckpt={bad}")]) == 2
        one_error(capsys, str(bad))


def test_sigterm_saves_last_ckpt_exits_nonzero_and_resumes(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "mope_lightning",
        "fit",
        *args(
            tmp_path,
            "trainer.max_epochs=1000",
            "trainer.limit_train_batches=null",
            "trainer.check_val_every_n_epoch=1000",
        ),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        started = tmp_path / "runs" / "version_0" / "hparams.yaml"  # written when training starts
        deadline = time.time() + 240
        while not started.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(3)  # some training steps, no validation (check_val_every_n_epoch=1000)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()  # never leave a 1000-epoch run behind when an assertion above fails
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "fit interrupted by SIGTERM" in err and "Traceback" not in err
    last = tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert step > 0 and f"step {step}" in err
    assert not (tmp_path / "runs" / "version_0" / "fit_metrics.json").exists()  # nothing claims success
    # The saved state resumes: two more steps, then the usual test.
    assert (
        main(
            [
                "fit",
                *args(
                    tmp_path,
                    "ckpt=last",
                    f"trainer.max_steps={step + 2}",
                    "trainer.max_epochs=1000",
                    "trainer.limit_train_batches=null",
                    "trainer.check_val_every_n_epoch=1000",
                ),
            ]
        )
        == 0
    )
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == step + 2


def test_sigint_saves_last_ckpt_and_exits_130(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "mope_lightning",
        "fit",
        *args(
            tmp_path,
            "trainer.max_epochs=1000",
            "trainer.limit_train_batches=null",
            "trainer.check_val_every_n_epoch=1000",
        ),
    ]
    # A background job of a non-interactive shell (make test &) inherits SIGINT ignored, and so would the fit:
    # restore the default, as an interactive terminal has it.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        started = tmp_path / "runs" / "version_0" / "hparams.yaml"
        launched = time.time()
        deadline = launched + 240
        while not started.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        # Some training steps before the signal: the time they take grows with the machine's load, as the start did.
        time.sleep(max(3.0, 0.5 * (time.time() - launched)))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()  # never leave a 1000-epoch run behind when an assertion above fails
    assert proc.returncode == 130, err[-3000:]
    assert "fit interrupted by SIGINT" in err
    last = tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] > 0


# --- adapters and the Python API ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapter(trained):
    tmp, last = trained
    out = tmp / "adapter"
    assert main(["export", *args(tmp, f"ckpt={last}", f"out={out}")]) == 0
    return out


def test_export_writes_an_adapter_that_tests_like_its_checkpoint(trained, adapter, capsys):
    tmp, last = trained
    assert sorted(p.name for p in adapter.iterdir()) == ["README.md", "adapter.safetensors", "adapter_config.json"]
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["format"] == "mope_lightning.adapter" and len(config["classes"]) == 13
    assert config["config"]["experiment"] == "easy_vqa" and config["backbones"]["weights"]
    assert config["parameters"]["trainable"] > 0
    from safetensors.torch import load_file

    tensors = load_file(adapter / "adapter.safetensors")
    assert any(k.endswith("router.keys") for k in tensors)  # the frozen routing keys travel with the prompts
    assert not any(k.startswith(("text.model.", "image.model.")) for k in tensors)  # no frozen encoder weights
    assert "from_pretrained" in (adapter / "README.md").read_text()
    capsys.readouterr()
    results = []
    for source in (last, adapter):
        assert main(["test", *args(tmp, f"ckpt={source}")]) == 0
        results.append(capsys.readouterr().out.split("test/loss")[1].split()[0])
    assert results[0] == results[1]


def test_export_refuses_to_overwrite_and_an_interrupted_export_leaves_nothing(
    trained, adapter, tmp_path, capsys, monkeypatch
):
    tmp, last = trained
    assert main(["export", *args(tmp, f"ckpt={last}", f"out={adapter}")]) == 2
    one_error(capsys, str(adapter), "overwrite=true")
    assert main(["export", *args(tmp, f"ckpt={last}", f"out={adapter}", "overwrite=true")]) == 0
    mope_lightning.from_pretrained(adapter)  # the replaced adapter is complete

    import mope_lightning.weights.adapters as adapters

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(adapters, "model_card", crash)  # after the weights, before the folder is complete
    assert main(["export", *args(tmp, f"ckpt={last}", f"out={tmp_path / 'new'}")]) == 130  # Ctrl-C midway
    assert list(tmp_path.iterdir()) == []  # neither the adapter nor its staging folder


def test_export_refuses_a_config_with_other_model_settings(trained, tmp_path, capsys):
    tmp, last = trained
    assert (
        main(["export", *args(tmp, f"ckpt={last}", f"out={tmp_path / 'a'}", "model.mope.router.temperature=0.5")]) == 2
    )
    one_error(capsys, "model.mope.router.temperature: 0.1 -> 0.5")


def test_from_pretrained_predicts_raw_inputs_like_mope_predict(trained, adapter, tmp_path, capsys):
    tmp, last = trained
    out_csv = tmp_path / "pred.csv"
    assert (
        main(["predict", *args(tmp, f"ckpt={last}", f"predict.out={out_csv}", "trainer.limit_predict_batches=1")]) == 0
    )
    rows = list(csv.DictReader(out_csv.open()))
    questions = json.loads((default_root() / "test" / "questions.json").read_text())
    picked = [questions[int(r["id"].split("/")[1])] for r in rows]
    texts = [q[0] for q in picked]
    images = [Image.open(default_root() / "test" / "images" / f"{q[2]}.png") for q in picked]
    for source in (adapter, last):
        model = mope_lightning.from_pretrained(source)
        preds = model.predict(texts=texts, images=images, batch_size=5)
        assert preds.labels == [r["prediction"] for r in rows]
        expected = torch.tensor([[float(r[f"prob_{c}"]) for c in preds.classes] for r in rows])
        torch.testing.assert_close(preds.probs, expected, atol=2e-6, rtol=0)  # the CSV keeps 6 decimals
        assert preds.routing.shape == (len(rows), 2, 4)  # (inputs, routed layers, experts) of the tiny model
        assert torch.allclose(preds.routing.sum(-1), torch.ones(len(rows), 2))


def test_from_pretrained_refuses_other_frozen_weights_and_bad_sources(adapter, tmp_path):
    with pytest.raises(CheckpointError, match="trained with backbones"):
        mope_lightning.from_pretrained(adapter, overrides=["model.text_encoder.kwargs.num_hidden_layers=3"])
    with pytest.raises(CheckpointError, match="other frozen weights"):
        mope_lightning.from_pretrained(adapter, overrides=["model.text_encoder.kwargs.initializer_range=0.5"])
    with pytest.raises(MopeError, match="no such adapter folder"):
        mope_lightning.from_pretrained(tmp_path / "nothing")
    (tmp_path / "adapter_config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match=r"adapter_config.json:1: not valid JSON"):
        mope_lightning.from_pretrained(tmp_path)
    model = mope_lightning.from_pretrained(adapter)
    with pytest.raises(MopeError, match="texts\\[1\\]: empty"):
        model.predict(texts=["a", " "], images=[Image.new("RGB", (8, 8))] * 2)
    with pytest.raises(MopeError, match="pass images"):
        model.predict(texts=["a"])


def test_from_pretrained_reads_a_hub_repo_from_the_cache_offline(adapter, tmp_path, monkeypatch):
    # The Hub cache layout huggingface_hub reads offline: refs/main -> snapshots/<commit>/<files>.
    commit = "0" * 40
    repo = tmp_path / "hub" / "models--lab--easy-vqa-mope"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in adapter.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    model = mope_lightning.from_pretrained("lab/easy-vqa-mope", cache_dir=str(tmp_path / "hub"))
    assert model.classes == mope_lightning.from_pretrained(adapter).classes
    with pytest.raises(MopeError, match="lab/absent: not in the Hugging Face cache"):
        mope_lightning.from_pretrained("lab/absent", cache_dir=str(tmp_path / "hub"))


def test_push_to_hub_uploads_the_adapter_files(adapter, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, allow_patterns, commit_message):
            calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir()), allow_patterns))
            return "https://hub/commit/1"

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert mope_lightning.push_to_hub(adapter, "lab/m", private=True) == "https://hub/commit/1"
    assert calls[1] == ("create", "lab/m", True, True)
    assert calls[2][2] == ["README.md", "adapter.safetensors", "adapter_config.json"]
    # A model loaded with from_pretrained publishes its own adapter the same way.
    calls.clear()
    mope_lightning.from_pretrained(adapter).push_to_hub("lab/m2")
    assert calls[2][:3] == ("upload", "lab/m2", ["README.md", "adapter.safetensors", "adapter_config.json"])


# --- mope predict on new data ------------------------------------------------------------------------------------
def test_predict_new_rows_with_a_checkpoint_or_an_adapter(trained, adapter, tmp_path, capsys):
    tmp, last = trained
    rows = write_rows(
        tmp_path,
        [
            {"id": "q1", "text": "what shape is this?", "image": "img0.png"},
            {"text": "is it red?", "image": str(tmp_path / "img1.png")},
        ],
    )
    outs = []
    for source in (last, adapter):
        out = tmp_path / f"{Path(source).stem}.csv"
        assert main(["predict", *args(tmp, f"ckpt={source}", f"predict.input={rows}", f"predict.out={out}")]) == 0
        outs.append(list(csv.DictReader(out.open())))
    assert [r["id"] for r in outs[0]] == ["q1", "2"] and outs[0] == outs[1]
    model = mope_lightning.from_pretrained(adapter)
    direct = model.predict(
        texts=["what shape is this?", "is it red?"], images=[tmp_path / "img0.png", tmp_path / "img1.png"]
    )
    assert [r["prediction"] for r in outs[0]] == direct.labels
    # CSV rows work the same; the default output lands beside the input.
    (tmp_path / "rows.csv").write_text("id,text,image\nq1,what shape is this?,img0.png\n")
    assert main(["predict", *args(tmp, f"ckpt={adapter}", f"predict.input={tmp_path / 'rows.csv'}")]) == 0
    assert list(csv.DictReader((tmp_path / "rows.predictions.csv").open()))[0]["prediction"] == outs[0][0]["prediction"]


def test_predict_names_bad_rows_and_never_overwrites(trained, tmp_path, capsys):
    tmp, last = trained
    rows = write_rows(
        tmp_path,
        [
            {"text": "fine", "image": "img0.png"},
            {"text": "", "image": "img0.png"},
            {"text": "where?", "image": "missing.png"},
            "{broken",
        ],
    )
    out = tmp_path / "out.csv"
    assert main(["predict", *args(tmp, f"ckpt={last}", f"predict.input={rows}", f"predict.out={out}")]) == 2
    one_error(
        capsys, f"{rows}:2: empty or missing text", f"{rows}:3: image file not found", f"{rows}:4: not a JSON object"
    )
    assert not out.exists()
    good = write_rows(tmp_path, [{"text": "fine", "image": "img0.png"}])
    before = last.read_bytes()
    for target, extra in ((last, "predict.overwrite=true"), (good, "predict.overwrite=true")):
        assert (
            main(["predict", *args(tmp, f"ckpt={last}", f"predict.input={good}", f"predict.out={target}", extra)]) == 2
        )
        one_error(capsys, "is an input of this command")
    assert last.read_bytes() == before
    # A dataset split's predictions may not replace the checkpoint either, nor an existing file without asking.
    assert main(["predict", *args(tmp, f"ckpt={last}", f"predict.out={last}", "predict.overwrite=true")]) == 2
    one_error(capsys, "is an input of this command")
    out.write_text("keep me")
    assert main(["predict", *args(tmp, f"ckpt={last}", f"predict.out={out}")]) == 2
    one_error(capsys, "already exists", "predict.overwrite=true")
    assert out.read_text() == "keep me" and last.read_bytes() == before


def test_an_adapter_cannot_be_resumed(adapter, trained, capsys):
    tmp, _ = trained
    assert main(["fit", *args(tmp, f"ckpt={adapter}")]) == 2
    one_error(capsys, "holds no training state")


def test_max_time_between_validations_keeps_the_final_weights(tmp_path):
    assert (
        main(
            [
                "fit",
                *args(
                    tmp_path,
                    "trainer.max_epochs=1000",
                    "trainer.limit_train_batches=null",
                    "trainer.check_val_every_n_epoch=1000",
                    "trainer.max_time=00:00:00:03",
                ),
            ]
        )
        == 0
    )
    run_dir = tmp_path / "runs" / "version_0"
    assert json.loads((run_dir / "fit_metrics.json").read_text())["tested_weights"] == "final weights"
    step = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert step > 0


def test_a_dataset_whose_label_order_differs_from_the_checkpoint_is_refused(tmp_path, capsys):
    from helpers.datasets import make_mmbt

    from helpers import EXPERIMENTS

    root = make_mmbt(tmp_path / "mmbt")
    common = [
        str(EXPERIMENTS / "jsonl.yaml"),
        str(TINY),
        f"data.root={root}",
        "data.splits={train: train.jsonl, val: dev.jsonl, test: test.jsonl}",
        f"trainer.default_root_dir={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "trainer.enable_progress_bar=false",
    ]
    assert main(["fit", *common]) == 0
    capsys.readouterr()
    last = tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    (root / "labels.txt").write_text("dog\ncat\nfish\n")  # the same names, another order: every label swapped
    for command in ("test", "predict"):
        assert main([command, *common, f"ckpt={last}"]) == 2
        one_error(capsys, "trained on the classes [cat, dog, fish]", "has [dog, cat, fish]")
