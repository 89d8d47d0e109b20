"""RGB-D segmentation with missing depth maps (issue 39, item 2): `data.missing.<split>.depth` on the generated
NYUDv2 removes the depth of a seeded, exact share of samples (zeros before the encoding, the `depth_missing` flag),
MoPE's depth feature is replaced by its learned missing embedding, which trains; losing the image is refused."""

import json

import pytest
import torch

from mope_lightning.cli import main
from mope_lightning.data.missing import missing_table
from mope_lightning.training.build import build
from mope_lightning.training.trainer_config import load_config

from helpers import EXPERIMENTS, TINY
from helpers.cli import experiment_args, one_error
from helpers.nyudv2 import make_nyudv2

DEPTH_ENCODER = "model.depth_encoder.name=resnet18"


@pytest.fixture(scope="module")
def nyu(tmp_path_factory):
    return make_nyudv2(tmp_path_factory.mktemp("nyu") / "nyu")


def rgbd(root, *extra):
    return load_config(
        [EXPERIMENTS / "nyudv2.yaml", TINY], [f"data.root={root}", "data.num_workers=0", DEPTH_ENCODER, *extra]
    )


def test_seeded_exact_share_of_samples_lose_their_depth(nyu):
    module, datamodule = build(rgbd(nyu, "data.missing.train.depth=0.5", "data.missing.test.depth=0.25"))
    datamodule.setup("fit")
    datamodule.setup("test")
    train, test = datamodule.missing["train"], datamodule.missing["test"]
    assert len(train) == 11 and train.count("depth") == 6 and set(train) == {"", "depth"}  # round(0.5 * 11)
    assert test.count("depth") == 1 and datamodule.missing["val"] is None
    ids = datamodule.splits["train"].ids
    assert train == missing_table(ids, _rates(0.5), 0)
    assert train != missing_table(ids, _rates(0.5), 1)  # another data.missing.seed, other samples
    dataset = datamodule.datasets["test"]
    blank = dataset.transform.depth.encode(torch.zeros(1, 1, dtype=torch.long))[:, 0, 0]
    items = [dataset[i] for i in range(len(dataset))]
    for item, lost in zip(items, test):
        assert item["missing"] == lost
        is_blank = torch.allclose(item["depth"], blank[:, None, None].expand_as(item["depth"]))
        assert is_blank == (lost == "depth")  # the generated depth maps are ramps, never blank
    batch = datamodule.collate()(items)
    assert batch["depth_missing"].tolist() == [lost == "depth" for lost in test]
    assert not batch["image_missing"].any()


def _rates(depth):
    from types import SimpleNamespace

    return SimpleNamespace(image=0.0, text=0.0, both=0.0, depth=depth)


def test_missing_depth_uses_the_learned_embedding_which_gets_gradients(nyu):
    module, datamodule = build(rgbd(nyu, "data.missing.train.depth=0.5"))
    datamodule.setup("fit")
    net = module.net
    batch = datamodule.collate()([datamodule.datasets["train"][i] for i in range(8)])
    assert batch["depth_missing"].any() and not batch["depth_missing"].all()
    with torch.no_grad():
        net.missing_features["depth"].fill_(3.0)
    cond = net.condition_features(batch)
    lost = batch["depth_missing"]
    assert torch.all(cond[lost] == 3.0) and not torch.any(cond[~lost] == 3.0)
    net.missing_features["depth"].grad = None
    out = net(batch)
    torch.nn.functional.cross_entropy(out.logits, torch.zeros_like(out.logits[:, 0]).long()).backward()
    assert net.missing_features["depth"].grad is not None and net.missing_features["depth"].grad.abs().sum() > 0


def test_fit_with_missing_depth_logs_test_miou_and_trains_the_missing_embedding(nyu, tmp_path, capsys):
    """...and `mope robustness` refuses a segmentation checkpoint with one message pointing at `mope test`."""
    argv = experiment_args(
        tmp_path,
        EXPERIMENTS / "nyudv2.yaml",
        f"data.root={nyu}",
        "data.num_workers=0",
        DEPTH_ENCODER,
        "data.missing.train.depth=0.5",
        "data.missing.test.depth=1.0",
    )
    assert main(["fit", *argv, "optim.warmup_steps=0"]) == 0  # a warmup from lr 0 would leave one step idle
    record = json.loads((tmp_path / "runs" / "version_0" / "fit_metrics.json").read_text())
    assert 0 <= record["metrics"]["test/miou"] <= 1
    state = torch.load(record["tested_weights"], map_location="cpu", weights_only=False)["state_dict"]
    embedding = next(v for k, v in state.items() if k.endswith("missing_features.depth"))
    assert embedding.abs().sum() > 0  # zeros at start: trained on the samples without depth
    out = tmp_path / "robustness"
    assert main(["robustness", *argv, f"ckpt={record['tested_weights']}", f"robustness.out={out}"]) == 2
    one_error(capsys, "robustness", "data.missing.test.depth=RATE")
    assert not out.exists()


@pytest.mark.parametrize(
    "kind, needle", [("image", "mask belongs to it"), ("both", "removes the text or image of samples")]
)
def test_losing_the_image_of_a_segmentation_sample_is_one_error(nyu, tmp_path, capsys, kind, needle):
    argv = experiment_args(
        tmp_path, EXPERIMENTS / "nyudv2.yaml", f"data.root={nyu}", DEPTH_ENCODER, f"data.missing.test.{kind}=0.5"
    )
    assert main(["fit", *argv, "trainer.max_steps=1"]) == 2
    one_error(capsys, f"data.missing.test.{kind}", needle)
    assert not (tmp_path / "runs").exists()


def test_depth_rates_count_with_the_others_and_need_a_depth_modality(nyu):
    from mope_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.missing.train: .* \+ depth 0.7 is more than 1"):
        rgbd(nyu, "data.missing.train.depth=0.7", "data.missing.train.image=0.5")
    with pytest.raises(ConfigError, match=r"data.missing.test.depth: removes the depth .* model.modalities"):
        rgbd(nyu, "data.missing.test.depth=0.5", "model.modalities=[image]", "model.fusion=linear_probe")
