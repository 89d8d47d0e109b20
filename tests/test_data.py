"""The easy-VQA DataModule on the real files of the easy-vqa package, the feature cache, and bad input."""

import json
import shutil
from collections import Counter

import pytest
import torch
from PIL import Image

from mope_lightning.training.trainer_config import load_config
from mope_lightning.data import EasyVQADataModule as EasyVQAData
from mope_lightning.data.datasets.easy_vqa import default_root
from mope_lightning.data.features import load_image
from mope_lightning.errors import DataError
from mope_lightning.training.datamodule import lightning_class
from mope_lightning.models import InputSpec, build_image_encoder, build_text_encoder

from helpers import DEFAULT_EXP, TINY

EasyVQADataModule = lightning_class(EasyVQAData)  # with Lightning's hooks (training/datamodule.py)

PACKAGE_ROOT = default_root()


def data_config(tmp_path, *overrides):
    return load_config([DEFAULT_EXP, TINY], [f"data.cache_dir={tmp_path / 'cache'}", *overrides]).data


@pytest.fixture(scope="module")
def tiny_image_encoder():
    return build_image_encoder(load_config([DEFAULT_EXP, TINY]).model.image_encoder)


@pytest.fixture(scope="module")
def tokenizer():
    return build_text_encoder(load_config([DEFAULT_EXP, TINY]).model.text_encoder).tokenizer


def image_spec(encoder, tokenizer=None):
    """The model's view for the DataModule: the image feature is cached, the text is tokenized."""
    reads = ("text", "image") if tokenizer is not None else ("image",)
    return InputSpec(tokenizer, encoder.data_config, {"image": encoder}, {"image": "tiny-image-encoder"}, reads=reads)


class CountingEncoder(torch.nn.Module):
    """Wraps an image encoder and counts the images it encodes."""

    def __init__(self, encoder):
        super().__init__()
        self.inner, self.images_seen = encoder, 0
        self.data_config = encoder.data_config

    def forward(self, images):
        self.images_seen += len(images)
        return self.inner(images)


def copy_dataset(tmp_path, train_images=6, test_images=3):
    """A writable copy of the first images of each split of the real easy-VQA data, with their questions."""
    root = tmp_path / "easy_vqa"
    (root).mkdir()
    shutil.copy(PACKAGE_ROOT / "answers.txt", root / "answers.txt")
    for split, n in (("train", train_images), ("test", test_images)):
        (root / split / "images").mkdir(parents=True)
        entries = json.loads((PACKAGE_ROOT / split / "questions.json").read_text())
        keep = sorted({e[2] for e in entries})[:n]
        for image_id in keep:
            shutil.copy(PACKAGE_ROOT / split / "images" / f"{image_id}.png", root / split / "images")
        (root / split / "questions.json").write_text(json.dumps([e for e in entries if e[2] in keep]))
    return root


def test_real_splits_sizes_stratification_and_determinism(tmp_path):
    dm = EasyVQADataModule(data_config(tmp_path))
    assert dm.classes == (PACKAGE_ROOT / "answers.txt").read_text().split()
    assert len(dm.classes) == 13
    splits, pools = dm.read_splits()
    assert len(splits["train"]) + len(splits["val"]) == 38575 and len(splits["test"]) == 9673
    assert len(pools["train"]) == 4000 and len(pools["test"]) == 1000
    assert not set(splits["train"].ids) & set(splits["val"].ids)
    # Stratified: every answer is held out in proportion (10%, rounded per class).
    total = Counter(splits["train"].labels) + Counter(splits["val"].labels)
    held = Counter(splits["val"].labels)
    assert all(held[c] == round(0.1 * n) for c, n in total.items())
    again, _ = EasyVQADataModule(data_config(tmp_path)).read_splits()
    assert again["val"].ids == splits["val"].ids
    other, _ = EasyVQADataModule(data_config(tmp_path, "data.split_seed=1")).read_splits()
    assert other["val"].ids != splits["val"].ids


def test_subset_keeps_the_questions_of_the_first_images(tmp_path):
    dm = EasyVQADataModule(data_config(tmp_path, "data.train_images=40", "data.test_images=10"))
    splits, pools = dm.read_splits()
    assert len(pools["train"]) == 40 and len(pools["test"]) == 10
    assert max(splits["train"].media_index + splits["val"].media_index) == 39
    assert len(splits["test"]) == sum(
        1 for e in json.loads((PACKAGE_ROOT / "test/questions.json").read_text()) if e[2] < 10
    )


def test_batches_are_tokenized_with_cached_features(tmp_path, tiny_image_encoder, tokenizer):
    dm = EasyVQADataModule(data_config(tmp_path, "data.train_images=20", "data.test_images=5"))
    dm.attach(image_spec(tiny_image_encoder, tokenizer))
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[0] == 8
    assert batch["labels"].dtype == torch.long and batch["labels"].shape == (8,)
    assert batch["image_features"].shape == (8, tiny_image_encoder.num_features)
    assert len(batch["ids"]) == 8 and all(i.startswith("train/") for i in batch["ids"])
    assert "images" not in batch


def test_feature_cache_encodes_each_image_once_and_notices_changes(tmp_path, tiny_image_encoder):
    root = copy_dataset(tmp_path)
    cfg = data_config(tmp_path, f"data.root={root}")
    counting = CountingEncoder(tiny_image_encoder)
    for _ in range(2):  # two runs: the second one reuses the cache
        dm = EasyVQADataModule(cfg)
        dm.attach(image_spec(counting))
        dm.prepare_data()
        dm.setup("fit")
    assert counting.images_seen == 6 + 3
    # A cached feature is the encoder's output for that image.
    val = dm.datasets["val"]
    image = load_image(val.files[val.split.media_index[0]])
    expected = tiny_image_encoder(dm._transform()(image).unsqueeze(0))[0]
    torch.testing.assert_close(val[0]["image_features"], expected, atol=1e-5, rtol=1e-4)
    # Replacing a training image invalidates the train cache only. (A copy of a test image would be refused: its
    # questions would put test samples into train.)
    image = next((root / "train" / "images").iterdir())
    with Image.open(image) as original:
        original.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(image)
    dm = EasyVQADataModule(cfg)
    dm.attach(image_spec(counting))
    dm.prepare_data()
    assert counting.images_seen == 6 + 3 + 6
    assert len(list((tmp_path / "cache" / "easy_vqa").glob("image-train-*.pt"))) == 1  # the stale file is gone


def test_building_the_cache_leaves_the_global_rng_alone(tmp_path, tiny_image_encoder):
    dm = EasyVQADataModule(data_config(tmp_path, f"data.root={copy_dataset(tmp_path)}"))
    dm.attach(image_spec(tiny_image_encoder))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    dm.prepare_data()
    assert list((tmp_path / "cache").rglob("*.pt"))
    assert torch.equal(torch.rand(3), expected)


def test_missing_dataset_directory(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: no easy-VQA dataset here.*data/README.md"):
        EasyVQADataModule(data_config(tmp_path, f"data.root={tmp_path / 'nowhere'}"))


def _edit_questions(root, split, edit):
    path = root / split / "questions.json"
    entries = json.loads(path.read_text())
    edit(entries)
    path.write_text(json.dumps(entries))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda e: e[2].__setitem__(1, "purple"), r"questions.json:entry 2: answer 'purple' is not in answers.txt"),
        (lambda e: e[1].__setitem__(0, "  "), r"questions.json:entry 1: empty question"),
        (lambda e: e.append(["a question", "yes"]), r"questions.json:entry \d+: \['a question', 'yes'\] is not \["),
    ],
)
def test_bad_questions_name_file_and_entry(tmp_path, edit, message):
    root = copy_dataset(tmp_path)
    path = _edit_questions(root, "train", edit)
    with pytest.raises(DataError, match=message) as err:
        EasyVQADataModule(data_config(tmp_path, f"data.root={root}")).read_splits()
    assert str(path) in str(err.value) and "data.on_bad_sample=skip" in str(err.value)
    # The explicit alternative: leave the sample out, with a logged count; the rest is intact.
    splits, _ = EasyVQADataModule(data_config(tmp_path, f"data.root={root}", "data.on_bad_sample=skip")).read_splits()
    entries = json.loads(path.read_text())
    assert sum(len(s) for name, s in splits.items() if name != "test") == len(entries) - 1


def test_json_that_does_not_parse_names_line_and_column(tmp_path):
    root = copy_dataset(tmp_path)
    (root / "test" / "questions.json").write_text('[["what shape is it?", "circle", 0],\n ["x", "yes" 1]]')
    with pytest.raises(DataError, match=r"test/questions.json:2:\d+: not valid JSON"):
        EasyVQADataModule(data_config(tmp_path, f"data.root={root}")).read_splits()


def test_unreadable_image_is_named_and_nothing_is_cached(tmp_path, tiny_image_encoder):
    root = copy_dataset(tmp_path)
    bad = sorted((root / "train" / "images").iterdir())[2]
    bad.write_bytes(b"not a png")
    missing = sorted((root / "test" / "images").iterdir())[0]
    dm = EasyVQADataModule(data_config(tmp_path, f"data.root={root}"))
    dm.attach(image_spec(tiny_image_encoder))
    with pytest.raises(DataError, match=rf"{bad}: cannot read image"):
        dm.prepare_data()
    assert not list((tmp_path / "cache").rglob("*.pt"))
    missing.unlink()
    with pytest.raises(DataError, match=rf"{missing}: image file not found; \d+ sample\(s\) use it"):
        dm.read_splits()
