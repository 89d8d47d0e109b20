"""Missing modalities: which samples lose what (seeded, per sample, exact rates), what every model does without a
modality (train and test steps on batches with every image or every text missing), the learned missing embedding,
missing-aware prompts, the robustness command, and the refusals."""

import json
import random
from types import SimpleNamespace

import pytest
import torch

from mope_lightning.cli import main
from mope_lightning.models.registry import FUSIONS
from mope_lightning.training.trainer_config import load_config
from mope_lightning.data import BatchCollate
from mope_lightning.data.missing import describe, missing_table
from mope_lightning.models import build_model
from mope_lightning.models.modality_set import missing_case
from mope_lightning.cli.fit import run
from mope_lightning.training.datamodule import datamodule

from helpers import DEFAULT_EXP, EXPERIMENTS, TINY, tiny_config

VIT = ["model.prompted=image", "model.image_encoder.library=timm", "model.image_encoder.name=vit_tiny_patch16_224"]
SWIN = [
    "model.prompted=image",
    "model.image_encoder.library=timm",
    "model.image_encoder.name=swin_tiny_patch4_window7_224",
]


def rates(image=0.0, text=0.0, both=0.0):
    return SimpleNamespace(image=image, text=text, both=both)


# --- which samples lose what --------------------------------------------------------------------------------------
def test_removal_is_exact_seeded_and_follows_the_both_protocol():
    ids = [f"q{i}" for i in range(1000)]
    table = missing_table(ids, rates(both=0.7), seed=3)
    assert table.count("text") == 350 and table.count("image") == 350 and table.count("") == 300
    assert missing_table(ids, rates(both=0.7), seed=3) == table  # the same seed: the same samples
    assert missing_table(ids, rates(both=0.7), seed=4) != table
    mixed = missing_table(ids, rates(image=0.25, text=0.1, both=0.2), seed=0)
    assert (mixed.count("image"), mixed.count("text")) == (250 + 100, 100 + 100)
    assert missing_table(ids, rates(), seed=0) is None  # nothing removed: a complete split
    assert describe(table) == "700 of 1,000 samples lose a modality: 350 their image, 350 their text"


def test_removal_depends_on_the_sample_not_on_order_epoch_or_process():
    ids = [f"img{i}/q{i % 7}" for i in range(500)]
    table = dict(zip(ids, missing_table(ids, rates(image=0.3), seed=1)))
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)  # another file order (or a rank building its own copy)
    assert dict(zip(shuffled, missing_table(shuffled, rates(image=0.3), seed=1))) == table


def test_a_higher_rate_keeps_the_samples_a_lower_one_removed():
    ids = [str(i) for i in range(300)]
    low, high = (missing_table(ids, rates(text=r), seed=2) for r in (0.3, 0.7))
    assert all(h == "text" for lo, h in zip(low, high) if lo == "text")
    low, high = (missing_table(ids, rates(both=r), seed=2) for r in (0.3, 0.7))
    assert all(h == lo for lo, h in zip(low, high) if lo)  # both: a removed sample keeps the modality it lost


def test_the_datamodule_removes_the_same_samples_in_every_epoch_and_process(tmp_path):
    cfg = tiny_config(tmp_path, "data.missing.train.both=0.5", "data.missing.test.image=1.0", "data.missing.seed=7")
    datamodules = []
    for _ in range(2):  # two processes build their DataModules independently
        dm = datamodule(cfg.data)
        net = build_model(cfg.model, len(dm.classes))
        dm.attach(net.input_spec())
        dm.setup("fit")
        datamodules.append(dm)
    first, second = datamodules
    train = first.datasets["train"]
    assert first.missing == second.missing
    assert first.missing["val"] is None and set(first.missing["test"]) == {"image"}
    lost = first.missing["train"]
    assert lost.count("text") + lost.count("image") == round(0.5 * len(lost))
    epoch_1 = [train[i] for i in range(len(train))]
    epoch_2 = [train[i] for i in range(len(train))]
    for i, (a, b) in enumerate(zip(epoch_1, epoch_2)):
        assert a["missing"] == b["missing"] == lost[i]
        if lost[i] == "image":
            assert not a["image_features"].any()  # cached feature: zeros, replaced by the model
    rows = [i for i, m in enumerate(lost) if m == "text"][:3] + [i for i, m in enumerate(lost) if m != "text"][:5]
    batch = BatchCollate(first.spec.tokenizer, 32)([epoch_1[i] for i in rows])
    assert batch["image_missing"].tolist() == [lost[i] == "image" for i in rows]
    assert batch["text_missing"].tolist() == [True] * 3 + [False] * 5
    assert (batch["attention_mask"][:3].sum(1) == 2).all()  # [CLS] [SEP]: special tokens only
    assert (batch["attention_mask"][3:].sum(1) > 2).all()


# --- what the models do -----------------------------------------------------------------------------------------
def batch_without(net, modality, size=4):
    """A batch whose every sample lost `modality` (pixels of the blank image; the empty text)."""
    text = [""] * size if modality == "text" else [f"what shape is in image {i}?" for i in range(size)]
    tokens = net.text.tokenizer(text, padding=True, return_tensors="pt")
    side = net.image.data_config["input_size"][-1] if hasattr(net.image, "data_config") else 32
    images = torch.ones(size, 3, side, side) if modality == "image" else torch.randn(size, 3, side, side)
    return {
        "input_ids": tokens["input_ids"],
        "attention_mask": tokens["attention_mask"],
        "images": images,
        "labels": torch.arange(size) % 3,
        "text_missing": torch.full((size,), modality == "text"),
        "image_missing": torch.full((size,), modality == "image"),
    }


CASES = [(f"model.fusion={f}",) for f in FUSIONS if f not in ("pmoe", "audio_only", "video_only")] + [
    tuple(VIT),
    tuple(SWIN),
]


@pytest.mark.parametrize("modality", ["image", "text"])
@pytest.mark.parametrize("overrides", CASES, ids=lambda o: o[0].split("=")[1] if len(o) == 1 else o[-1].split("=")[1])
def test_every_model_trains_and_tests_on_a_batch_without_a_modality(overrides, modality):
    cfg = load_config([DEFAULT_EXP, TINY], list(overrides))
    if cfg.model.fusion == f"{modality}_only":
        pytest.skip("reads the missing modality alone: refused by the config (test_missing_refusals)")
    net = build_model(cfg.model, 3)
    batch = batch_without(net, modality)
    net.train()
    out = net(batch)
    loss = torch.nn.functional.cross_entropy(out.logits, batch["labels"]) + out.importance_loss
    loss.backward()
    assert torch.isfinite(loss)
    trained = [p for p in net.parameters() if p.requires_grad]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    net.eval()
    with torch.no_grad():
        assert torch.isfinite(net(batch).logits).all()


def test_pmoe_trains_and_tests_without_either_modality():
    cfg = load_config([EXPERIMENTS / "easy_vqa_pmoe.yaml", TINY])
    net = build_model(cfg.model, 3)
    for modality in ("image", "text"):
        batch = batch_without(net, modality)
        net.train()
        out = net(batch)
        torch.nn.functional.cross_entropy(out.logits, batch["labels"]).backward()
        net.eval()
        with torch.no_grad():
            assert torch.isfinite(net(batch).logits).all()
    assert net.missing_features["image"].grad.abs().sum() > 0


@pytest.mark.parametrize("fusion", ["mope", "late_concat"])
def test_the_missing_embedding_replaces_the_feature_and_gets_gradients(fusion):
    net = build_model(load_config([DEFAULT_EXP, TINY], [f"model.fusion={fusion}"]).model, 3)
    batch = batch_without(net, "text")
    batch["image_missing"] = torch.tensor([True, False, False, True])
    batch["text_missing"][:] = False
    net.train()
    torch.nn.functional.cross_entropy(net(batch).logits, batch["labels"]).backward()
    grad = net.missing_features["image"].grad
    assert grad is not None and grad.abs().sum() > 0
    assert "missing" in net.param_groups() and net.param_groups()["missing"]
    # the replaced rows no longer depend on the image: other pixels, the same output
    net.eval()
    with torch.no_grad():
        before = net(batch).logits
        batch["images"][batch["image_missing"]] = torch.randn(2, *batch["images"].shape[1:])
        after = net(batch).logits
    torch.testing.assert_close(before, after)


def test_a_vit_leaves_out_the_patches_of_a_missing_image():
    net = build_model(load_config([DEFAULT_EXP, TINY], VIT + ["model.image_encoder.kwargs.global_pool=avg"]).model, 3)
    net.eval()
    batch = batch_without(net, "text")
    batch["text_missing"][:] = False
    batch["image_missing"] = torch.tensor([False, True, False, True])
    with torch.no_grad():
        before = net(batch).logits
        changed = dict(batch, images=batch["images"].clone())
        changed["images"][1] = torch.randn_like(changed["images"][1])  # a missing image's pixels: ignored
        torch.testing.assert_close(net(changed).logits, before)
        changed["images"][0] = torch.randn_like(changed["images"][0])  # a present image's pixels: used
        assert not torch.allclose(net(changed).logits[0], before[0])
        # a complete sample gives what it gives in a batch of a complete split
        complete = {k: v for k, v in batch.items() if not k.endswith("_missing")}
        torch.testing.assert_close(net(complete).logits[[0, 2]], before[[0, 2]], atol=1e-5, rtol=1e-5)


def test_missing_aware_prompts_are_chosen_by_the_sample_case():
    net = build_model(
        load_config([DEFAULT_EXP, TINY], ["model.missing_prompts=true", "model.missing_prompt_length=3"]).model, 3
    )
    batch = batch_without(net, "text")
    batch["text_missing"] = torch.tensor([False, True, False, False])
    batch["image_missing"] = torch.tensor([False, False, True, False])
    assert missing_case(batch, 4, torch.device("cpu"), net.modality_set).tolist() == [0, 1, 2, 0]
    batch["text_missing"] = torch.tensor([True, True, False, False])  # cases 1, 1, 0, 0: no image-less sample
    batch["image_missing"] = torch.zeros(4, dtype=torch.bool)
    net.train()
    torch.nn.functional.cross_entropy(net(batch).logits, batch["labels"]).backward()
    layer = net.fusion.layers["0"]
    assert layer.missing.shape == (3, 3, net.text.width)
    grads = layer.missing.grad.abs().sum(dim=(1, 2))
    assert grads[0] > 0 and grads[1] > 0 and grads[2] == 0  # the image-less case's prompts took no part
    assert net.fusion.num_prompts == 6 + 6 + 1 + 3


# --- the robustness report --------------------------------------------------------------------------------------
def test_robustness_tests_one_checkpoint_at_each_rate_and_resumes(tmp_path, capsys):
    # Long enough to answer some questions (the conditions then differ), with half the training samples missing.
    summary = run(
        "fit",
        tiny_config(
            tmp_path,
            "data.missing.train.both=0.5",
            "data.missing.val.both=0.5",
            "trainer.limit_train_batches=24",
            "trainer.max_epochs=2",
            "optim.lr=3e-3",
            "optim.warmup_steps=4",
            "trainer.limit_test_batches=1.0",
        ),
    )
    out = tmp_path / "robust"
    argv = [
        "robustness",
        str(DEFAULT_EXP),
        str(TINY),
        f"trainer.default_root_dir={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.train_images=40",
        "data.test_images=10",
        "trainer.limit_test_batches=1.0",
        f"ckpt={summary['best_checkpoint']}",
        f"out={out}",
        "rates=[0,0.5,1]",
        "kinds=[image,both]",
    ]
    assert main(argv) == 0
    # Five conditions from three passes over the test split: complete, every image missing, every text missing.
    assert capsys.readouterr().out.count("robustness: test split with") == 3
    results = json.loads((out / "robustness.json").read_text())
    names = sorted(results["metrics"])
    assert names == [
        "missing/both=0.5/acc",
        "missing/both=1/acc",
        "missing/image=0.5/acc",
        "missing/image=1/acc",
        "missing/none=0/acc",
    ]
    assert all(0 <= v <= 1 for v in results["metrics"].values())
    assert results["metrics"]["missing/none=0/acc"] == pytest.approx(summary["metrics"]["test/acc"])
    # Each condition, put together sample by sample from the passes, is what `mope test` gives with it set.
    for kind, rate in (("image", 0.5), ("both", 0.5), ("both", 1)):
        tested = run(
            "test",
            tiny_config(
                tmp_path,
                f"ckpt={summary['best_checkpoint']}",
                "trainer.limit_test_batches=1.0",
                f"data.missing.test.{kind}={rate}",
            ),
        )
        tested = tested["metrics"]["test/acc"]
        assert results["metrics"][f"missing/{kind}={rate:g}/acc"] == pytest.approx(tested, abs=1e-6), (kind, rate)
    assert len(set(results["metrics"].values())) > 2  # the conditions differ: a check that can fail
    table = (out / "robustness.md").read_text()
    assert "| image |" in table and "| both |" in table and (out / "robustness.png").stat().st_size > 0
    capsys.readouterr()
    assert main(argv) == 0  # finished: nothing is evaluated again
    assert "robustness: test split with" not in capsys.readouterr().out
    stopped = {**results, "metrics": {k: v for k, v in results["metrics"].items() if "both" not in k}}
    (out / "robustness.json").write_text(json.dumps(stopped))  # as if stopped before the text pass
    assert main(argv) == 0
    assert json.loads((out / "robustness.json").read_text()) == results  # resumed to the same results
    other = tmp_path / "other.ckpt"
    other.write_bytes(open(summary["best_checkpoint"], "rb").read())
    assert main([*argv[:-4], f"ckpt={other}", *argv[-3:]]) == 2  # another checkpoint's results are not mixed in
    assert "overwrite=true" in capsys.readouterr().err
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "robustness.json").write_text("{")
    assert main([*argv[:-3], f"out={damaged}", *argv[-2:]]) == 2
    assert "robustness.json: not a robustness report" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["text", "both"])
def test_robustness_of_multi_label_f1s_equals_mope_test(tmp_path, kind):
    """MM-IMDB's multi-label F1s (whose torchmetrics reads logits or probabilities by what each update holds),
    condition by condition, against `mope test` with `data.missing.test` set."""
    from helpers.datasets import make_mmimdb

    root = make_mmimdb(tmp_path / "data", {"train": 8, "dev": 3, "test": 12})
    args = [
        f"data.root={root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"trainer.default_root_dir={tmp_path / 'runs'}",
        "data.num_workers=0",
        "trainer.limit_test_batches=1.0",
        "data.batch_size=4",
    ]
    exp = [EXPERIMENTS / "mmimdb.yaml", TINY]
    summary = run("fit", load_config(exp, [*args, "trainer.max_steps=3"]))
    ckpt = f"ckpt={summary['best_checkpoint']}"
    assert (
        main(["robustness", *map(str, exp), *args, ckpt, f"out={tmp_path / 'r'}", "rates=[0,0.5,1]", f"kinds=[{kind}]"])
        == 0
    )
    results = json.loads((tmp_path / "r" / "robustness.json").read_text())["metrics"]
    for rate in (0, 0.5, 1):
        condition = [f"data.missing.test.{kind}={rate}"]
        tested = run("test", load_config(exp, [*args, ckpt, *condition]))["metrics"]
        wanted = {k.removeprefix("test/"): v for k, v in tested.items() if "loss" not in k}
        assert len(wanted) >= 3
        for metric, value in wanted.items():
            name = f"missing/{'none' if rate == 0 else kind}={rate:g}/{metric}"
            assert results[name] == pytest.approx(value, abs=1e-6), (name, value)
    assert len({round(v, 6) for v in results.values()}) > len(wanted)  # the conditions differ: it can fail


# --- refusals ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.missing.test.image=1.5"], "data.missing.test.image: must be in [0, 1], got 1.5"),
        (["data.missing.dev.text=0.5"], "unknown key 'data.missing.dev' (did you mean 'data.missing.val'?)"),
        (
            ["data.missing.train.audio=0.5"],
            "data.missing.train.audio: removes the audio of samples, but model.modalities",
        ),
        (
            ["data.missing.train.both=0.8", "data.missing.train.text=0.5"],
            "data.missing.train: image 0 + text 0.5 + both 0.8 is more than 1",
        ),
        (
            ["model.fusion=text_only", "data.missing.test.both=0.3"],
            "data.missing.test.both: model.fusion=text_only reads the text alone",
        ),
        (["model.fusion=late_concat", "model.missing_prompts=true"], "model.missing_prompts: added to the prompts of"),
        (
            [*VIT, "model.image_encoder.kwargs.global_pool=max", "data.missing.train.image=0.5"],
            "data.missing.train.image: timm 'vit_tiny_patch16_224' pools with global_pool='max'",
        ),
    ],
)
def test_missing_refusals(tmp_path, capsys, overrides, message):
    assert main(["fit", str(DEFAULT_EXP), str(TINY), f"trainer.default_root_dir={tmp_path / 'runs'}", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("mope: error: ") == 1 and message in err, err
    assert not list(tmp_path.rglob("*.ckpt"))
