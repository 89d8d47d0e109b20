"""The decoded-image cache (data/image_cache.py) and the normalisation on the device (data/image_transforms.py):
the cached path's evaluation tensors equal the PIL path's bit for bit; a changed file or preprocessing setting
rebuilds the cache; an interrupted build is never read; a folder that cannot be written is one message."""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from PIL import Image

from mope_lightning.cli import main
from mope_lightning.data.datasets.easy_vqa import default_root
from mope_lightning.data.features import LoadImage, eval_transform
from mope_lightning.data.image_cache import DecodeForCache, PixelCache
from mope_lightning.data.image_transforms import DevicePixels, pixel_steps
from mope_lightning.errors import DataError

from helpers import tiny_config
from helpers.cli import args

# The image encoders' own data configs (MobileNetV2's for easy-VQA; Swin-B's for the paper recipes) and the
# experiments' `data` settings over them.
MOBILENET = {
    "input_size": (3, 224, 224),
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "interpolation": "bilinear",
    "crop_pct": 0.875,
    "crop_mode": "center",
}
SWIN = {**MOBILENET, "interpolation": "bicubic", "crop_pct": 0.9}
RECIPES = {
    "easy_vqa": (MOBILENET, {"image_size": 128, "crop_pct": 1.0}),
    "snli_ve": (SWIN, {"image_mean": [0.4678, 0.4453, 0.4066], "image_std": [0.1222, 0.1215, 0.1438]}),
    "squash": (SWIN, {"image_size": 96, "crop_mode": "squash"}),
}


def data_cfg(**settings) -> OmegaConf:
    return OmegaConf.create(
        {
            "image_size": None,
            "crop_pct": None,
            "crop_mode": None,
            "image_mean": None,
            "image_std": None,
            "randaugment": None,
            "num_workers": 0,
            **settings,
        }
    )


def transform_of(recipe: str, **changes):
    image_config, settings = RECIPES[recipe]
    return eval_transform(image_config, data_cfg(**{**settings, **changes}))


def write_image(path: Path, size: tuple[int, int], mode: str = "RGB", seed: int = 0, **save) -> Path:
    """A photograph-like image: smooth gradients plus noise, so that resampling has detail to get wrong."""
    rng = np.random.default_rng(seed)
    w, h = size
    ramp = np.add.outer(np.linspace(0, 200, h), np.linspace(0, 55, w))[..., None] * np.array([1.0, 0.6, 0.3])
    pixels = np.clip(ramp + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, **save)
    return path


def odd_images(folder: Path) -> list[Path]:
    """JPEGs of odd and typical sizes, grey and CMYK JPEGs, a transparent PNG and a palette PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    jpegs = [
        write_image(folder / f"{w}x{h}.jpg", (w, h), seed=i, quality=80 + i)
        for i, (w, h) in enumerate([(500, 375), (37, 61), (1000, 129), (3, 3), (224, 224), (225, 223)])
    ]
    return [
        *jpegs,
        write_image(folder / "grey.jpg", (77, 50), "L"),
        write_image(folder / "cmyk.jpg", (64, 90), "CMYK"),
        write_image(folder / "rgba.png", (120, 80), "RGBA"),
        write_image(folder / "palette.png", (33, 200), "P"),
    ]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    easy_vqa = sorted((default_root() / "train" / "images").glob("*.png"))[:12]
    return [*easy_vqa, *odd_images(tmp_path_factory.mktemp("odd"))]


def pil_path(transform, files) -> torch.Tensor:
    """Today's path: each image decoded with PIL and through the whole transform, then stacked."""
    return torch.stack([LoadImage(transform)(f) for f in files])


def cached_path(folder: Path, transform, files) -> torch.Tensor:
    """The cached uint8 images, batched as the loader does, normalised as on the device."""
    steps, why = pixel_steps(transform)
    assert steps is not None, why
    cached = PixelCache(folder).get("images", files, steps)
    batch = {"images": torch.stack([cached(f) for f in files])}
    assert batch["images"].dtype == torch.uint8
    return DevicePixels(steps.normalize)(batch)["images"]


def shards(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(("pixels-", ".pixels-")))


# --- exactness ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_cached_eval_tensors_equal_the_pil_path(tmp_path, images, recipe):
    transform = transform_of(recipe)
    expected = pil_path(transform, images)
    assert torch.equal(cached_path(tmp_path, transform, images), expected)
    assert torch.equal(cached_path(tmp_path, transform, images), expected)  # read back from the shard


def test_a_missing_image_gets_the_pil_paths_blank(tmp_path, images):
    transform = transform_of("easy_vqa")
    steps, _ = pixel_steps(transform)
    batch = {
        "images": torch.zeros(3, 3, *steps.size, dtype=torch.uint8),
        "image_missing": torch.tensor([False, True, False]),
    }
    out = DevicePixels(steps.normalize)(batch)["images"]
    blank = torch.ones_like(transform(Image.new("RGB", (8, 8))))  # the PIL path's (MultimodalDataModule)
    assert torch.equal(out[1], blank) and not torch.equal(out[0], blank)


def test_the_shard_is_mapped_by_each_process_not_pickled(tmp_path, images):
    steps, _ = pixel_steps(transform_of("easy_vqa"))
    cached = PixelCache(tmp_path).get("images", images, steps)
    first = cached(images[3])
    assert cached._array is not None
    copy = pickle.loads(pickle.dumps(cached))
    assert copy._array is None and len(pickle.dumps(cached)) < 10_000
    assert torch.equal(copy(images[3]), first)


def test_a_preprocessing_the_cache_cannot_split_is_named():
    from torchvision.transforms import Compose, Normalize, RandomResizedCrop, ToTensor

    steps, why = pixel_steps(Compose([RandomResizedCrop(32), ToTensor(), Normalize([0.5] * 3, [0.2] * 3)]))
    assert steps is None and "RandomResizedCrop, ToTensor, Normalize" in why


# --- rebuilding --------------------------------------------------------------------------------------------------


def test_a_changed_image_file_rebuilds(tmp_path):
    files = odd_images(tmp_path / "img")
    transform = transform_of("snli_ve")
    cached_path(tmp_path / "cache", transform, files)
    before = shards(tmp_path / "cache")
    write_image(files[1], (61, 37), seed=99, quality=70)  # new content under the same name
    assert torch.equal(cached_path(tmp_path / "cache", transform, files), pil_path(transform, files))
    after = shards(tmp_path / "cache")
    assert len(after) == 2 and not set(before) & set(after)  # the old key's shard and marker are gone


@pytest.mark.parametrize("change", [{"image_size": 112}, {"crop_pct": 0.75}, {"crop_mode": "squash"}])
def test_a_changed_preprocessing_setting_rebuilds(tmp_path, images, change):
    cached_path(tmp_path, transform_of("snli_ve"), images)
    before = shards(tmp_path)
    transform = transform_of("snli_ve", **change)
    assert torch.equal(cached_path(tmp_path, transform, images), pil_path(transform, images))
    assert len(shards(tmp_path)) == 2 and not set(before) & set(shards(tmp_path))


def test_the_normalisation_is_applied_after_the_cache_and_does_not_rebuild_it(tmp_path, images, caplog):
    cached_path(tmp_path, transform_of("snli_ve"), images)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    transform = transform_of("snli_ve", image_mean=[0.3, 0.2, 0.1], image_std=[0.5, 0.6, 0.7])
    assert torch.equal(cached_path(tmp_path, transform, images), pil_path(transform, images))
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


# --- interrupted builds, unreadable images -----------------------------------------------------------------------


def damage(shard: Path, marker: Path, how: str, cut: int, text: bytes) -> None:
    if how == "no marker":  # killed between the shard's rename and the marker's
        marker.unlink()
    elif how == "shard cut":
        shard.write_bytes(shard.read_bytes()[: cut % shard.stat().st_size])
    elif how == "marker damaged":
        marker.write_bytes(text)
    elif how == "marker of other images":
        recorded = json.loads(marker.read_text())
        marker.write_text(json.dumps({**recorded, "shape": [recorded["shape"][0] + 1, *recorded["shape"][1:]]}))


@settings(max_examples=12)
@given(
    how=st.sampled_from(["no marker", "shard cut", "marker damaged", "marker of other images"]),
    cut=st.integers(0, 10**6),
    text=st.binary(max_size=64),
)
def test_a_half_written_or_damaged_cache_is_never_read(tmp_path_factory, how, cut, text):
    folder = tmp_path_factory.mktemp("cache")
    files = sorted((default_root() / "train" / "images").glob("*.png"))[:5]
    transform = transform_of("easy_vqa")
    expected = cached_path(folder, transform, files)
    shard = next(folder.glob("pixels-*.u8"))
    damage(shard, shard.with_suffix(".json"), how, cut, text)
    logger = logging.getLogger("mope_lightning.data.image_cache")
    with _captured(logger) as records:
        assert torch.equal(cached_path(folder, transform, files), expected)
    assert shards(folder) == sorted([shard.name, shard.with_suffix(".json").name])
    assert any(f"{shard}: the cached images are incomplete" in r.getMessage() for r in records)


class _captured:
    """The records of one logger (the CLI turns propagation off, so caplog may not see them)."""

    def __init__(self, logger: logging.Logger):
        self.logger, self.records = logger, []

    def __enter__(self) -> list:
        self.handler = logging.Handler()
        self.handler.emit = self.records.append
        self.logger.addHandler(self.handler)
        return self.records

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self.handler)


def test_a_build_interrupted_midway_leaves_nothing_that_is_read(tmp_path, images, monkeypatch):
    import mope_lightning.data.image_cache as image_cache

    def interrupted(fh, rows):
        fh.write(rows.numpy().tobytes()[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(image_cache, "write_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cached_path(tmp_path, transform_of("easy_vqa"), images)
    assert shards(tmp_path) == []  # no shard, no marker, no temporary file
    monkeypatch.undo()
    assert torch.equal(
        cached_path(tmp_path, transform_of("easy_vqa"), images), pil_path(transform_of("easy_vqa"), images)
    )


def test_unreadable_images_are_named_and_nothing_is_cached(tmp_path):
    files = odd_images(tmp_path / "img")
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 3])  # a truncated JPEG
    files[2].write_bytes(b"not an image")
    steps, _ = pixel_steps(transform_of("snli_ve"))
    with pytest.raises(DataError) as exc:
        PixelCache(tmp_path / "cache").get("images", files, steps)
    message = str(exc.value)
    assert message.startswith("2 unreadable image(s); nothing was cached")
    assert f"{files[0]}: cannot read image" in message and f"{files[2]}: cannot read image" in message
    assert shards(tmp_path / "cache") == []


def test_an_image_whose_file_changed_since_the_index_is_named(tmp_path):
    path = write_image(tmp_path / "a.jpg", (50, 40))
    steps, _ = pixel_steps(transform_of("easy_vqa"))
    decode = DecodeForCache(steps, {str(path): path.stat().st_size + 7})
    with pytest.raises(
        DataError,
        match=f"{path}: the file has {path.stat().st_size} bytes, the dataset index recorded {path.stat().st_size + 7}",
    ):
        decode(path)
    assert DecodeForCache(steps, {str(path): path.stat().st_size})(path).shape == (128, 128, 3)


# --- the DataModule and the CLI ----------------------------------------------------------------------------------


def batches(tmp_path, stage: str, *overrides):
    from mope_lightning.training.build import build

    _, dm = build(tiny_config(tmp_path, "data.cache_features=false", "data.missing.test.image=0.5", *overrides))
    dm.prepare_data()
    dm.setup(stage)
    loader = dm.test_dataloader()
    return dm, [(batch, dm.on_after_batch_transfer(dict(batch), 0)) for batch in loader]


def test_the_datamodules_cached_test_batches_equal_the_pil_paths(tmp_path):
    dm, cached = batches(tmp_path, "test", "data.image_cache=true")
    _, pil = batches(tmp_path, "test", "data.image_cache=false")
    assert dm.pixels is not None and list((tmp_path / "cache" / "easy_vqa").glob("pixels-*.u8"))
    assert len(cached) == len(pil) > 1
    for (raw, on_device), (_, expected) in zip(cached, pil):
        assert raw["images"].dtype == torch.uint8
        assert torch.equal(on_device["images"], expected["images"])
    assert any(raw["image_missing"].any() for raw, _ in cached)  # the blank of a lost image too


def test_by_default_only_training_reads_the_cache(tmp_path):
    dm, _ = batches(tmp_path, "test")  # data.image_cache=null
    assert dm.pixels is None and not list((tmp_path / "cache" / "easy_vqa").glob("pixels-*"))
    fit, _ = batches(tmp_path, "fit", "data.randaugment=[2,5]")
    assert fit.pixels is not None and fit.pixels.augment is not None
    item = fit.datasets["train"][0]["images"]
    assert item.dtype == torch.uint8 and item.shape == (3, *fit.pixels.blank.shape[1:])


def test_training_images_are_augmented_after_the_cache_drawn_from_the_torch_seed(tmp_path):
    fit, _ = batches(tmp_path, "fit", "data.randaugment=[2,9]")
    train, plain = fit.datasets["train"], fit.pixels.images[fit.splits["train"].pool]

    def draw(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)  # a DataLoader worker's seed, as the loaders give it
        return [train[i]["images"] for i in range(6)]

    first = draw(1)
    assert all(torch.equal(a, b) for a, b in zip(first, draw(1)))
    assert not all(torch.equal(a, b) for a, b in zip(first, draw(2)))
    rows = [torch.from_numpy(plain.row(train.files[train.split.media_index[i]])).permute(2, 0, 1) for i in range(6)]
    assert not all(torch.equal(a, b) for a, b in zip(first, rows))
    assert all(a.dtype == torch.uint8 and a.shape == b.shape for a, b in zip(first, rows))


def cli_args(tmp_path, *extra) -> list[str]:
    return args(tmp_path, "data.randaugment=[2,5]", *extra)


def one_error(capsys, *needles) -> str:
    err = capsys.readouterr().err
    assert err.count("mope: error: ") == 1 and "Traceback" not in err, err
    message = err[err.index("mope: error: ") :]
    for needle in needles:
        assert needle in message, message
    return message


def test_a_short_fit_with_the_cache_trains_and_tests(tmp_path, capsys):
    assert main(["fit", *cli_args(tmp_path, "data.image_cache=true")]) == 0
    out = capsys.readouterr()
    assert "test/acc" in out.out + out.err
    folder = tmp_path / "cache" / "easy_vqa"
    written = sorted(folder.glob("pixels-*.u8"))
    assert [p.name.split("-")[1] for p in written] == ["test", "train"]  # easy-VQA's two image pools
    for shard in written:
        recorded = json.loads(shard.with_suffix(".json").read_text())
        assert shard.stat().st_size == int(np.prod(recorded["shape"])) and recorded["shape"][-1] == 3


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "data.image_cache=sometimes",
            "command line: data.image_cache: Value 'sometimes' is not a valid bool (type str)",
        ),
        ("data.prefetch_factor=0", "command line: data.prefetch_factor: must be at least 1, got 0"),
    ],
)
def test_a_bad_setting_is_one_message(tmp_path, capsys, override, message):
    assert main(["fit", *cli_args(tmp_path, override)]) == 2
    one_error(capsys, message)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()


def test_a_full_cache_folder_is_one_message_naming_it(tmp_path, capsys, monkeypatch):
    import mope_lightning.data.image_cache as image_cache

    def full(fh, rows):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(image_cache, "write_rows", full)
    assert main(["fit", *cli_args(tmp_path, "data.image_cache=true")]) == 2
    folder = tmp_path / "cache" / "easy_vqa"
    one_error(capsys, "data.cache_dir: ", f"{folder}{os.sep}pixels-", "No space left on device")
    assert shards(folder) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_cache_folder_is_one_message_naming_it(tmp_path, capsys):
    assert main(["check-data", *cli_args(tmp_path)]) == 0  # the index is there; the images are not cached yet
    capsys.readouterr()
    folder = tmp_path / "cache" / "easy_vqa"
    folder.chmod(0o555)
    try:
        assert main(["fit", *cli_args(tmp_path, "data.image_cache=true")]) == 2
    finally:
        folder.chmod(0o755)
    one_error(capsys, f"data.cache_dir: cannot write in {folder}")
    assert shards(folder) == []


# --- benchmarks/loader.py ----------------------------------------------------------------------------------------


def test_the_loader_benchmark_measures_the_cached_path_beside_the_pil_path(tmp_path, monkeypatch):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import loader as loader_bench

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    out = tmp_path / "results-loader.json"
    loader_bench.main(["--samples", "tiny", "--workers", "0", "--recipes", "snli_ve", "--out", str(out)])
    results = json.loads(out.read_text())
    snli = results["loader"]["recipes"]["snli_ve"]
    assert set(snli["paths"]) == {"pil", "cached"} and snli["cache"]["shape"] == [224, 224, 3]
    train = snli["paths"]["cached"]["train"]
    assert train["stages_on_device"] == ["to_float_normalise"] and train["stages_us_per_sample"]["resize_crop"] is None
    assert train["stages_us_per_sample"]["augment"] > 0 and train["device_us_per_sample"] > 0
    assert train["host_us_per_sample"] == round(train["stages_sum_us_per_sample"] - train["device_us_per_sample"], 1)
    rates = {path: snli["paths"][path]["train"]["workers"]["0"]["per_worker_samples_per_s"] for path in snli["paths"]}
    ratios = results["ratios"]
    assert ratios["cached_over_pil_train_per_worker"] == round(rates["cached"] / rates["pil"], 2)
    assert {"loader_cores_h100_40pct_pil_train_snli_ve", "loader_cores_h100_40pct_cached_train_snli_ve"} <= set(ratios)
    assert "| snli_ve | train | cached |" in out.with_suffix(".md").read_text()
    assert not list(scratch.iterdir())  # the JPEGs and the cache are gone
