"""Streaming shards (data/shards.py, `mope shards`, `data.shards`): what is written, that training and testing from
them read exactly the pixels of the decode-once cache, how the stream deals shards to processes and workers, and
every bad input as one message."""

import contextlib
import io
import json
import re
import tarfile

import numpy as np
import pytest
import torch

from mope_lightning.cli import main
from mope_lightning.data.shards import ShardStream, read_manifest, slot_shards
from mope_lightning.errors import ConfigError, DataError

from helpers import FAST
from helpers.cli import args, mope, one_error


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Shards of the tiny easy-VQA run, 8 images a shard, with the cache folder that holds their source pixels."""
    tmp = tmp_path_factory.mktemp("shards")
    out = tmp / "shards"
    code, stdout, _ = _mope(args(tmp, f"out={out}", "images_per_shard=8"), "shards")
    assert code == 0 and f"data.shards={out}" in stdout
    return tmp, out


def _mope(argv, command="fit"):
    """`mope COMMAND ARGV` in-process, for a module-scoped fixture (which cannot use capsys)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([command, *argv])
    assert "Traceback" not in stdout.getvalue() + stderr.getvalue()
    return code, stdout.getvalue(), stderr.getvalue()


def test_each_image_is_stored_once_with_the_rows_of_its_samples_and_the_cached_pixels(written):
    tmp, out = written
    manifest = read_manifest(str(out))
    (cache,) = (tmp / "cache" / "easy_vqa").glob("pixels-train-*.u8")
    height, width = manifest.size
    cached = np.fromfile(cache, dtype=np.uint8).reshape(-1, height, width, 3)
    seen, images = [], 0
    for shard in manifest.shards("train"):
        with tarfile.open(shard) as tar:
            names = tar.getnames()
            assert all(re.fullmatch(r"\d{9}\.(pixels\.u8|sample\.json)", n) for n in names), names
            for key in sorted({n.split(".")[0] for n in names}):
                rows = json.loads(tar.extractfile(f"{key}.sample.json").read())["rows"]
                pixels = np.frombuffer(tar.extractfile(f"{key}.pixels.u8").read(), np.uint8)
                # the key is the image's row in the train pool, whose cached pixels the shard holds unchanged
                assert np.array_equal(pixels.reshape(height, width, 3), cached[int(key)])
                seen += rows
                images += 1
    train = manifest.data["splits"]["train"]
    assert sorted(seen) == list(range(len(train["ids"])))  # every sample exactly once
    assert images == 40 and len(seen) > images  # 40 images, several questions each, each image stored once
    assert [e["images"] for e in train["shards"]] == [8] * 5


def test_testing_from_shards_equals_testing_from_the_files(written, tmp_path):
    tmp, out = written
    pixels = ("data.image_cache=true", "data.cache_features=false")  # the conditioning encoder reads pixels
    assert _mope(args(tmp_path, *FAST, *pixels))[0] == 0
    ckpt = tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    code, from_files, _ = _mope(args(tmp_path, *pixels, f"ckpt={ckpt}"), "test")
    assert code == 0
    code, from_shards, _ = _mope(args(tmp_path, f"data.shards={out}", f"ckpt={ckpt}"), "test")
    assert code == 0

    def metrics(text):
        return {k: float(v) for k, v in re.findall(r"(test/\w+)\s+([-\d.]+)", text)}

    assert metrics(from_files)["test/acc"] == metrics(from_shards)["test/acc"]
    assert metrics(from_shards)["test/loss"] == pytest.approx(metrics(from_files)["test/loss"], abs=1e-4)


def test_training_streams_from_shards(written, tmp_path):
    _, out = written
    code, stdout, _ = _mope(args(tmp_path, f"data.shards={out}", "trainer.max_epochs=2", "data.num_workers=2"))
    assert code == 0 and "test/acc" in stdout


def _stream(train, world=1, rank=0, shards=8, per_shard=5, batch_size=4, seed=0):
    """A stream over in-memory 'shards' (lists of rows) that yields the rows it reads."""
    stream = ShardStream(
        [f"s{k}" for k in range(shards)],
        [per_shard] * shards,
        None,
        lambda row, pixels: row,
        (1, 1),
        train,
        world,
        rank,
        seed,
        batch_size,
        buffer=3,
    )
    stream._samples = lambda names: (int(n[1:]) * per_shard + i for n in names for i in range(per_shard))
    return stream


def test_evaluation_reads_every_sample_once_over_processes_and_workers():
    from unittest import mock

    rows = []
    for rank in range(2):
        stream = _stream(train=False, world=2, rank=rank)
        for worker in range(2):
            with mock.patch(
                "mope_lightning.data.shards.get_worker_info", return_value=mock.Mock(num_workers=2, id=worker)
            ):
                rows += list(stream)
        assert len(stream) == 20  # this rank's shards: half of the 40 samples
    assert sorted(rows) == list(range(40))
    assert slot_shards(list("abcdefgh"), 2, 1, 2, 0) == ["b", "f"]  # the workers of rank 1 read b, d, f, h


def test_training_gives_every_rank_the_same_batches_and_a_new_order_each_epoch():
    counts, orders = [], {}
    for rank in range(3):  # 8 shards over 3 ranks: 3, 3 and 2 shards, yet the same number of samples
        stream = _stream(train=True, world=3, rank=rank)
        counts.append(len(list(stream)))
        assert counts[-1] == len(stream) == 40 // (3 * 4) * 4
    assert len(set(counts)) == 1
    stream = _stream(train=True)
    for epoch in (0, 1, 0):
        stream.epoch = epoch
        orders.setdefault(epoch, []).append(list(stream))
    assert orders[0][0] == orders[0][1] and orders[0][0] != orders[1][0]  # seeded by epoch
    assert sorted(orders[1][0]) == list(range(40))


def test_a_worker_without_a_shard_is_one_message():
    from unittest import mock

    stream = _stream(train=True, shards=1)
    with mock.patch("mope_lightning.data.shards.get_worker_info", return_value=mock.Mock(num_workers=2, id=1)):
        with pytest.raises(DataError, match="images_per_shard"):
            list(stream)


def test_a_second_write_needs_overwrite_and_replaces_only_its_own_shards(written, tmp_path, capsys):
    tmp, _ = written
    out = tmp_path / "shards"
    base = args(tmp, f"out={out}")
    assert mope(capsys, ["shards", *base, "images_per_shard=4"])[0] == 0
    before = sorted(p.name for p in out.iterdir())
    assert main(["shards", *base]) == 2
    one_error(capsys, "shards.overwrite=true")
    assert sorted(p.name for p in out.iterdir()) == before
    assert mope(capsys, ["shards", *base, "overwrite=true"])[0] == 0  # 1,000 images a shard: one per split
    assert sorted(p.name for p in out.iterdir()) == [
        "shards.json",
        "test-000000.tar",
        "train-000000.tar",
        "val-000000.tar",
    ]
    (out / "notes.txt").write_text("mine")
    assert main(["shards", *base, "overwrite=true"]) == 2
    one_error(capsys, "notes.txt", "did not write")
    assert (out / "notes.txt").read_text() == "mine"


def test_bad_shards_are_one_message_each(written, tmp_path, capsys):
    tmp, out = written
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in out.iterdir():
        data = f.read_bytes()
        (damaged / f.name).write_bytes(data[: len(data) // 2] if f.name == "test-000000.tar" else data)
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    (interrupted / "train-000000.tar").write_bytes((out / "train-000000.tar").read_bytes())
    cases = [
        ([f"data.shards={interrupted}"], [str(interrupted), "interrupted"]),
        ([f"data.shards={out}", "data.image_size=48"], ["data.shards", "preprocessing"]),
        ([f"data.shards={out}", "data.train_fraction=0.5"], ["data.train_fraction"]),
        (["data.shards=http://example.org/it's"], ["data.shards", "plain http(s) URL"]),
        (["data.shards=s3://bucket/shards"], ["data.shards", "mount object storage"]),
    ]
    for extra, needles in cases:
        assert main(["fit", *args(tmp_path, *FAST, *extra)]) == 2
        one_error(capsys, *needles)
    assert main(["fit", *args(tmp_path, *FAST, f"data.shards={damaged}")]) == 2
    one_error(capsys, f"{damaged / 'test-000000.tar'}: cannot read the shard (ReadError: unexpected end of data)")


def test_manifest_of_another_dataset_is_refused(written, tmp_path):
    _, out = written
    copy = tmp_path / "copy"
    copy.mkdir()
    manifest = json.loads((out / "shards.json").read_text())
    (copy / "shards.json").write_text(json.dumps({**manifest, "dataset": "tuxpaint"}))
    from helpers import tiny_config
    from mope_lightning.data.registry import dataset_class

    cfg = tiny_config(tmp_path, f"data.shards={copy}")
    with pytest.raises(ConfigError, match="holds shards of tuxpaint"):
        dataset_class(cfg.data)(cfg.data)


def test_item_pixels_reach_the_batch_as_uint8(written, tmp_path):
    from helpers import tiny_config
    from mope_lightning.training.build import build

    _, out = written
    _, datamodule = build(tiny_config(tmp_path, f"data.shards={out}"))
    datamodule.prepare("fit")
    datamodule.build_datasets("fit")
    batch = next(iter(datamodule.val_dataloader()))
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape[1:] == (3, 32, 32)


@pytest.mark.parametrize("experiment", ["mustard.yaml", "easy_vqa_seg.yaml"])
def test_datasets_that_shards_cannot_hold_are_one_message(experiment, tmp_path, capsys):
    from helpers import EXPERIMENTS
    from helpers.cli import experiment_args

    out = tmp_path / "shards"
    assert main(["shards", *experiment_args(tmp_path, EXPERIMENTS / experiment, f"out={out}")]) == 2
    one_error(capsys, "data.name", "from its own files")
    assert not out.exists()
