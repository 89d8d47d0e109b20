"""Samples that carry several media (MUStARD's text, audio and video, `data.media: [audio, video]`): the index,
check-data, the DataModule loading and caching only the media the model reads, named problems, and the split
bookkeeping (`Split.other_media`) kept consistent by subsets and compaction."""

from pathlib import Path

import av
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mope_lightning.cli import main
from mope_lightning.cli.check_data import check_data
from mope_lightning.data import DATAMODULES
from mope_lightning.data import base as data_base
from mope_lightning.errors import DataError
from mope_lightning.models import build_model
from mope_lightning.models.classifier import InputSpec
from mope_lightning.data.samples import Scan, SplitBuilder, other_pool
from mope_lightning.training.trainer_config import load_config

from helpers import EXPERIMENTS, FAST, TINY, run_dirs
from helpers.cli import one_error
from helpers.datasets import write_wav
from helpers.video import make_mustard_video

VIDEO_EXP = EXPERIMENTS / "mustard_video.yaml"
BOTH = "data.media=[audio,video]"


def config(tmp_path, root, *overrides):
    return load_config([VIDEO_EXP, TINY], [f"data.root={root}", *run_dirs(tmp_path), *FAST, *overrides])


def cli_args(tmp_path, root, *extra) -> list[str]:
    return [str(VIDEO_EXP), str(TINY), f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}", *extra]


@pytest.fixture(scope="module")
def nets():
    """The tiny text-audio and text-video models (the model side builds no three-modality classifier yet)."""
    audio = build_model(load_config([EXPERIMENTS / "mustard.yaml", TINY]).model, 2)
    video = build_model(load_config([VIDEO_EXP, TINY]).model, 2)
    return audio, video


def spec_reading(nets, audio: bool, video: bool, cached: tuple = ()) -> InputSpec:
    """A model's view reading the text and the chosen media, with the features of `cached` cached."""
    audio_net, video_net = nets
    encoders = {"audio": audio_net.audio, "video": video_net.video}
    return InputSpec(
        audio_net.text.tokenizer,
        video_net.input_spec().image_config if video else None,
        {m: encoders[m] for m in cached},
        {m: f"tiny-{m}" for m in cached},
        audio_net.audio.preprocessor if audio else None,
        reads=("text", *(["audio"] if audio else []), *(["video"] if video else [])),
    )


def datamodule(tmp_path, root, spec, *overrides):
    dm = DATAMODULES["mustard"](config(tmp_path, root, BOTH, *overrides).data)
    dm.attach(spec)
    dm.build_datasets("fit")
    return dm


def first_batch(dm, split="train", size=4):
    dataset = dm.datasets[split]
    return dm.collate()([dataset[i] for i in range(size)])


@pytest.fixture(scope="module")
def mustard(tmp_path_factory):
    return make_mustard_video(tmp_path_factory.mktemp("media") / "mustard", count=20)


# --- check-data and the dataset's modalities ---------------------------------------------------------------------
def test_check_data_summarises_each_media(tmp_path, capsys, mustard):
    assert main(["check-data", *cli_args(tmp_path, mustard, BOTH)]) == 0
    report = capsys.readouterr().out
    assert "the dataset is clean" in report
    assert "audio clips: 20 decoded in full, 0 unreadable" in report
    assert "video clips: 20 decoded in full, 0 unreadable" in report
    assert "audio rates: 16,000 Hz: 20" in report and "video rates: 10 fps: 20" in report
    train = next(line for line in report.splitlines() if line.strip().startswith("train"))
    assert "audio clips" in train and "video clips" in train
    dm = DATAMODULES["mustard"](config(tmp_path, mustard, BOTH).data)
    assert dm.modalities == ("text", "audio", "video") and dm.media_modalities == ("audio", "video")
    assert DATAMODULES["mustard"].provided_modalities() == ("text", "audio", "video")
    splits, pools = dm.read_splits()
    assert set(pools) == {"clips", other_pool("clips", "video")}
    # the released clip is both media: the same file in each pool, read once per modality
    for split in splits.values():
        audio = [pools["clips"][j] for j in split.media_index]
        video = [pools["clips.video"][j] for j in split.other_media["video"]]
        assert audio == video and [f.stem for f in audio] == split.ids


def test_a_string_media_stays_one_media(tmp_path, mustard):
    dm = DATAMODULES["mustard"](config(tmp_path, mustard, "data.media=video").data)
    assert dm.modalities == ("text", "video")
    splits, pools = dm.read_splits()
    assert list(pools) == ["clips"] and all(not s.other_media for s in splits.values())


@pytest.mark.parametrize(
    "media, says",
    [
        ("[audio,images]", "data.media: 'images' is not one of audio, video"),
        ("[video,video]", "data.media: ['video', 'video'] must name one or more of audio, video, each once"),
        ("[]", "data.media: [] must name one or more"),
    ],
)
def test_unknown_or_repeated_media_is_one_error(tmp_path, capsys, mustard, media, says):
    assert main(["check-data", *cli_args(tmp_path, mustard, f"data.media={media}")]) == 2
    one_error(capsys, says)
    with pytest.raises(DataError, match="data.media"):
        DATAMODULES["mustard"](config(tmp_path, mustard, f"data.media={media}").data)
    assert not (tmp_path / "cache").exists()


def test_a_model_reading_a_media_not_loaded_names_data_media(tmp_path, capsys, mustard):
    assert main(["fit", *cli_args(tmp_path, mustard, "data.media=audio", "model.modalities=[text,video]")]) == 2
    one_error(
        capsys,
        "model.modalities: ['text', 'video'], but mustard has text and audio, no video",
        "data.media is [audio]; set data.media=[audio,video] to load the video too",
    )


def test_a_missing_audio_file_is_one_named_problem(tmp_path, mustard):
    audio = tmp_path / "copy"
    import shutil

    shutil.copytree(mustard, audio)
    for n, clip in enumerate(sorted((audio / "utterances_final").glob("*.mp4"))):
        if clip.stem != "1_5":
            write_wav(audio / "wavs" / f"{clip.stem}.wav", n)
    report, problems = check_data(config(tmp_path, audio, BOTH, "data.audio_folder=wavs"))
    assert problems == 1, report
    assert "entry 1_5: no audio for utterance '1_5': none of wavs/1_5{.wav," in report
    assert "problems: 1 (1 in the records)" in report
    assert "audio clips: 19 decoded in full" in report and "video clips: 19 decoded in full" in report


def test_an_unreadable_video_of_one_sample_leaves_out_that_sample_only(tmp_path, mustard):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(mustard, copy)
    for n, clip in enumerate(sorted((copy / "utterances_final").glob("*.mp4"))):
        write_wav(copy / "wavs" / f"{clip.stem}.wav", n)
    (copy / "utterances_final" / "1_5.mp4").write_bytes(b"garbage")
    report, problems = check_data(config(tmp_path, copy, BOTH, "data.audio_folder=wavs"))
    assert problems == 1 and "1_5.mp4: cannot read video" in report and "1 unreadable video clips" in report
    dm = DATAMODULES["mustard"](config(tmp_path, copy, BOTH, "data.audio_folder=wavs", "data.on_bad_sample=skip").data)
    splits, pools = dm.read_splits()
    assert sum(map(len, splits.values())) == 19 and "1_5" not in {i for s in splits.values() for i in s.ids}
    assert len(pools["clips"]) == len(pools["clips.video"]) == 19


# --- the DataModule: only what the model reads ------------------------------------------------------------------
def test_batches_carry_text_audio_and_video(tmp_path, mustard, nets):
    dm = datamodule(tmp_path, mustard, spec_reading(nets, audio=True, video=True), "data.video_frames=3")
    batch = first_batch(dm)
    assert batch["input_ids"].shape[0] == 4 and batch["attention_mask"].shape == batch["input_ids"].shape
    assert batch["audio"].shape[0] == 4 and batch["audio_mask"].shape == batch["audio"].shape
    _, height, width = nets[1].video.data_config["input_size"]
    assert batch["video"].shape == (4, 3, 3, height, width)
    ids = batch["ids"]
    # each sample's own clip: its audio length follows its clip's duration (4 + 3 (n % 5) frames at 10 fps)
    lengths = batch["audio_mask"].sum(1).tolist()
    frames = [4 + 3 * (int(i.split("_")[1]) % 5) for i in ids]
    assert [a < b for a, b in zip(lengths, lengths[1:])] == [a < b for a, b in zip(frames, frames[1:])]


def test_cached_video_features_with_loaded_audio(tmp_path, mustard, nets):
    spec = spec_reading(nets, audio=True, video=True, cached=("video",))
    dm = datamodule(tmp_path, mustard, spec, "data.video_frames=2")
    batch = first_batch(dm)
    assert batch["audio"].shape[0] == 4 and "audio_features" not in batch and "video" not in batch
    (cache,) = (tmp_path / "cache" / "mustard").glob("*.pt")  # the video features alone
    features = torch.load(cache, weights_only=True)
    assert cache.name.startswith("video-") and features.shape[0] == 20
    rows = dm.datasets["train"].split.other_media["video"][:4]  # each sample's own clip's row
    assert torch.equal(batch["video_features"], features[rows])


def test_a_text_video_model_decodes_no_audio(tmp_path, mustard, nets, monkeypatch):
    DATAMODULES["mustard"](config(tmp_path, mustard, BOTH).data).index()  # the index decodes every clip once

    def no_audio(*args, **kwargs):
        raise AssertionError("an audio clip was read")

    monkeypatch.setattr(data_base, "load_clip", no_audio)
    monkeypatch.setattr(data_base, "describe_clips", no_audio)
    monkeypatch.setattr("mope_lightning.data.audio.read_audio", no_audio)
    dm = datamodule(tmp_path, mustard, spec_reading(nets, audio=False, video=True), "data.video_frames=2")
    batch = first_batch(dm, "test", 2)
    assert batch["video"].shape[:2] == (2, 2) and not {"audio", "audio_mask", "audio_features"} & set(batch)


def test_the_video_feature_cache_is_reused(tmp_path, mustard, nets, monkeypatch):
    spec = spec_reading(nets, audio=False, video=True, cached=("video",))
    datamodule(tmp_path, mustard, spec, "data.video_frames=2")
    cached = sorted((tmp_path / "cache" / "mustard").glob("video-*.pt"))
    assert len(cached) == 1 and torch.load(cached[0], weights_only=True).shape[0] == 20
    stamp = cached[0].stat().st_mtime_ns

    def no_decoding(*args, **kwargs):
        raise AssertionError("a clip was decoded again")

    monkeypatch.setattr(av, "open", no_decoding)
    batch = first_batch(datamodule(tmp_path, mustard, spec, "data.video_frames=2"))
    assert batch["video_features"].shape[0] == 4
    assert sorted((tmp_path / "cache" / "mustard").glob("video-*.pt")) == cached
    assert cached[0].stat().st_mtime_ns == stamp


# --- Split bookkeeping with several media ------------------------------------------------------------------------
@settings(max_examples=30)
@given(
    samples=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=12),
    picks=st.lists(st.integers(0, 11), max_size=12),
)
def test_subset_and_compact_keep_each_media_aligned(samples, picks):
    builder = SplitBuilder("clips")
    for n, (audio, video) in enumerate(samples):
        builder.add(f"s{n}", "t", n % 2, Path(f"a{audio}.wav"), f"f:{n}", other_media={"video": Path(f"v{video}.mp4")})
    split = builder.build()
    rows = [r for r in picks if r < len(samples)]
    scan = Scan({"train": split.subset(rows), "test": split.subset([0])}, builder.pools()).compact()
    for name, expected in (("train", rows), ("test", [0])):
        kept = scan.splits[name]
        assert kept.ids == [f"s{r}" for r in expected]
        assert [scan.pools["clips"][j] for j in kept.media_index] == [Path(f"a{samples[r][0]}.wav") for r in expected]
        videos = [scan.pools["clips.video"][j] for j in kept.other_media["video"]]
        assert videos == [Path(f"v{samples[r][1]}.mp4") for r in expected]
    # only the files some kept sample uses, each once
    for pool, files in scan.pools.items():
        used = {j for s in scan.splits.values() for p, js in s.pool_indices() if p == pool for j in js}
        assert used == set(range(len(files))) and len(set(files)) == len(files)


def test_a_reader_giving_different_media_per_sample_is_refused():
    builder = SplitBuilder("clips")
    builder.add("a", "t", 0, Path("a.wav"), "f:1", other_media={"video": Path("a.mp4")})
    with pytest.raises(ValueError, match="other media"):
        builder.add("b", "t", 0, Path("b.wav"), "f:2")


@pytest.mark.parametrize("experiment", ["mustard.yaml", "mustard_video.yaml"])
def test_text_audio_and_text_video_fits_on_samples_with_both(tmp_path, capsys, mustard, experiment):
    """A two-modality model fits on samples that carry audio and video: it reads its own media alone."""
    pair = [] if experiment == "mustard.yaml" else ["model.modalities=[text,video]"]  # mustard_video.yaml: all three
    args = [str(EXPERIMENTS / experiment), str(TINY), f"data.root={mustard}", *run_dirs(tmp_path), *FAST, BOTH, *pair]
    assert main(["fit", *args]) == 0
    assert "test/f1_weighted" in capsys.readouterr().out
    read = "audio" if experiment == "mustard.yaml" else "video"
    cached = {p.name.split("-")[0] for p in (tmp_path / "cache" / "mustard").glob("*.pt")}
    assert cached == {read}  # the frozen conditioning encoder's features, of the media the model reads
