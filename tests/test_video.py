"""Video as the media of a text-video pair: clips decoded with PyAV, frames sampled uniformly, the frame-wise video
encoder (a frozen image encoder per frame, mean over time) conditioning a prompted text encoder or feeding late
fusion, its clip feature cached, and MUStARD's released mp4 clips read for their video stream."""

import csv
import json

import av
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mope_lightning
from mope_lightning.cli import main
from mope_lightning.cli.check_data import check_data
from mope_lightning.cli.fit import run
from mope_lightning.data import DATAMODULES
from mope_lightning.data.video import frame_indices, read_frames
from mope_lightning.errors import DataError, MopeError
from mope_lightning.models import build_model
from mope_lightning.models.video_encoders import FramewiseVideoEncoder
from mope_lightning.training.trainer_config import load_config

from helpers import EXPERIMENTS, FAST, TINY, run_dirs
from helpers.cli import one_error
from helpers.datasets import write_mp4_audio
from helpers.video import make_mustard_video, write_clip, write_no_frames, write_rate_zero, write_varying_size

VIDEO_EXP = EXPERIMENTS / "mustard_video.yaml"
PAIR = [
    "data.media=video",
    "model.modalities=[text,video]",
]  # the text-video pair (tests/test_three_modalities.py: all)


def video_config(tmp_path, root, *overrides):
    return load_config([VIDEO_EXP, TINY], [f"data.root={root}", *run_dirs(tmp_path), *FAST, *PAIR, *overrides])


def cli_args(tmp_path, root, *extra) -> list[str]:
    return [str(VIDEO_EXP), str(TINY), f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}", *PAIR, *extra]


# --- the frame sampler and the decoder ---------------------------------------------------------------------------
@given(frames=st.integers(1, 5000), wanted=st.integers(1, 64))
def test_frame_indices_are_in_range_and_non_decreasing(frames, wanted):
    picked = frame_indices(frames, wanted)
    assert len(picked) == wanted
    assert all(0 <= i < frames for i in picked)
    assert all(a <= b for a, b in zip(picked, picked[1:]))
    if frames >= wanted:  # enough frames: none is repeated
        assert len(set(picked)) == wanted


@pytest.mark.parametrize("frames, wanted", [(0, 8), (10, 0)])
def test_frame_indices_refuse_nothing_to_sample(frames, wanted):
    with pytest.raises(ValueError, match="at least one frame and one sample"):
        frame_indices(frames, wanted)


def test_frames_are_sampled_uniformly_and_repeated_in_short_clips(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", 0, frames=5, size=(32, 24))
    images = read_frames(clip, 8)
    assert len(images) == 8 and all(im.mode == "RGB" and im.size == (32, 24) for im in images)
    # 5 frames for 8 samples: frames 0 0 1 1 2 3 3 4, each repeat the same decoded picture
    assert images[0].tobytes() == images[1].tobytes() and images[1].tobytes() != images[2].tobytes()
    assert len({im.tobytes() for im in images}) == 5


# --- the encoder and the fusions over a text-video pair ----------------------------------------------------------
def video_batch(net, clips=2, frames=3):
    _, height, width = net.video.data_config["input_size"]
    torch.manual_seed(0)
    return {
        "input_ids": torch.randint(1000, 2000, (clips, 6)),
        "attention_mask": torch.ones(clips, 6, dtype=torch.long),
        "video": torch.randn(clips, frames, 3, height, width),
    }


@pytest.mark.parametrize(
    "fusion, reads", [("mope", ("text", "video")), ("late_concat", ("text", "video")), ("video_only", ("video",))]
)
def test_fusions_over_text_and_video(fusion, reads):
    cfg = load_config([VIDEO_EXP, TINY], [f"model.fusion={fusion}", *PAIR])
    net = build_model(cfg.model, 2)
    assert isinstance(net.video, FramewiseVideoEncoder) and net.modalities() == reads
    batch = video_batch(net)
    out = net(batch)
    assert out.logits.shape == (2, 2) and torch.isfinite(out.logits).all()
    assert not any(p.requires_grad for p in net.video.parameters())  # the frame encoder stays frozen
    # The clip's feature is the mean over its frames of the frame encoder's features.
    frames = batch["video"][0]
    with torch.no_grad():
        assert torch.allclose(net.video(frames[None]), net.video.model(frames).mean(0, keepdim=True), atol=1e-6)
    spec = net.input_spec()
    assert spec.image_config == net.video.data_config and "video" in spec.cacheable


def test_a_video_encoder_cannot_be_prompted(tmp_path, capsys):
    root = make_mustard_video(tmp_path / "mustard", count=10)
    assert main(["fit", *cli_args(tmp_path, root, "model.prompted=video")]) == 2
    one_error(capsys, "model.video_encoder", "cannot be prompted")


def test_media_and_modalities_that_do_not_match_are_refused(tmp_path, capsys):
    root = make_mustard_video(tmp_path / "mustard", count=10)
    # the audio experiment reads the audio of the same clips: a video model on it lacks its modality
    audio = [str(EXPERIMENTS / "mustard.yaml"), str(TINY), f"data.root={root}", f"data.cache_dir={tmp_path / 'c'}"]
    assert main(["fit", *audio, "model.modalities=[text,video]", "model.video_encoder.name=mobilenet_v2"]) == 2
    one_error(capsys, "model.modalities", "mustard has text and audio, no video", "model.modalities=[text,audio]")
    assert main(["check-data", *cli_args(tmp_path, root, "data.media=images")]) == 2
    one_error(capsys, "data.media: 'images' is not one of audio, video")
    assert main(["check-data", *cli_args(tmp_path, root, "data.video_frames=0")]) == 2
    one_error(capsys, "data.video_frames")


# --- MUStARD's clips: check-data, a tiny fit and test, the cached clip feature, bad clips -------------------------
def test_mustard_video_check_data(tmp_path, capsys):
    root = make_mustard_video(tmp_path / "mustard")
    assert main(["check-data", *cli_args(tmp_path, root)]) == 0
    report = capsys.readouterr().out
    assert "check-data mustard: 2 classes" in report and "the dataset is clean" in report
    assert "clips: 30 decoded in full, 0 unreadable" in report
    assert "video frames: 4 to 16 per clip" in report and "video rates: 10 fps: 30" in report
    # clips of 4 and 7 frames (n % 5 in 0, 1): 12 of the 30 are sampled with repeats, a note and not a problem
    assert "12 clip(s) have fewer than data.video_frames=8 frames: their frames are sampled with repeats" in report
    datamodule = DATAMODULES["mustard"](video_config(tmp_path, root).data)
    assert datamodule.modalities == ("text", "video")
    splits, pools = datamodule.read_splits()
    assert all(f.suffix == ".mp4" for f in pools["clips"]) and sum(map(len, splits.values())) == 30


def test_mustard_video_tiny_fit_test_and_cached_clip_features(tmp_path, capsys, monkeypatch):
    root = make_mustard_video(tmp_path / "mustard")
    summary = run("fit", video_config(tmp_path, root))
    metrics = summary["metrics"]
    assert {"test/acc", "test/f1_weighted", "test/auroc"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("test/acc", "test/f1_weighted"))
    cached = sorted((tmp_path / "cache" / "mustard").glob("video-*.pt"))
    assert len(cached) == 1 and torch.load(cached[0], weights_only=True).shape[0] == 30
    stamp = cached[0].stat().st_mtime_ns
    ckpt = summary["best_checkpoint"]
    assert main(["test", *cli_args(tmp_path, root, f"ckpt={ckpt}")]) == 0
    assert "test/f1_weighted" in capsys.readouterr().out
    # The Python API samples and preprocesses the clips as training did; a clip given twice predicts the same.
    model = mope_lightning.from_pretrained(ckpt)
    clips = sorted((root / "utterances_final").iterdir())[:2]
    out = model.predict(texts=["SHELDON: oh great", "SHELDON: oh great"], video=[clips[0], clips[0]])
    assert out.routing.shape[0] == 2 and torch.equal(out.probs[0], out.probs[1])
    with pytest.raises(MopeError, match="pass video="):
        model.predict(texts=["a"])
    (tmp_path / "garbage.mp4").write_bytes(b"garbage")
    with pytest.raises(MopeError, match=r"video\[1\]: .*garbage.mp4: cannot read video"):
        model.predict(texts=["a", "b"], video=[clips[1], tmp_path / "garbage.mp4"])

    # `mope predict` on new rows: a video column beside the text, paths relative to the rows file; a bad clip is
    # named by its line before any model is built.
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"id": f"r{i}", "text": "SHELDON: oh great", "video": str(c)}) + "\n"
            for i, c in enumerate(clips)
        )
    )
    assert main(["predict", *cli_args(tmp_path, root, f"ckpt={ckpt}", f"predict.input={rows}")]) == 0
    written = list(csv.DictReader((tmp_path / "rows.predictions.csv").open()))
    assert [r["id"] for r in written] == ["r0", "r1"] and all(
        r["prediction"] in ("not_sarcastic", "sarcastic") for r in written
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "a", "video": "garbage.mp4"}) + "\n" + json.dumps({"text": "b"}) + "\n")
    assert main(["predict", *cli_args(tmp_path, root, f"ckpt={ckpt}", f"predict.input={bad}")]) == 2
    one_error(capsys, "2 bad row(s)", "bad.jsonl:1: ", "garbage.mp4", "bad.jsonl:2: missing video path")

    def no_decoding(*args, **kwargs):
        raise AssertionError("a clip was decoded again")

    # A second fit finds the index and the clip features cached: no clip is opened (a CSV logger: no exemplar strips).
    monkeypatch.setattr(av, "open", no_decoding)
    again = run("fit", video_config(tmp_path, root, "loggers=[csv]"))
    assert "test/acc" in again["metrics"]
    assert sorted((tmp_path / "cache" / "mustard").glob("video-*.pt")) == cached
    assert cached[0].stat().st_mtime_ns == stamp


def test_mustard_bad_clips_are_one_named_problem_each(tmp_path):
    root = make_mustard_video(tmp_path / "mustard", count=10)
    clips = root / "utterances_final"
    (clips / "1_1.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a clip")  # unreadable
    write_mp4_audio(clips / "1_2.mp4", 2)  # sound only
    write_no_frames(clips / "1_3.mp4")
    write_rate_zero(clips / "1_4.mp4")
    write_varying_size(clips / "1_5.mp4")
    (clips / "1_6.mp4").unlink()
    report, problems = check_data(video_config(tmp_path, root))
    assert problems == 6, report
    for expected in (
        "1_1.mp4: cannot read video",
        "1_2.mp4: no video stream in the file",
        "1_3.mp4: empty clip: no video frames",
        "1_4.mp4: the frame rate is 0",
        "1_5.mp4: the frame size varies (32x24 at frame 0, 48x40 at frame 3)",
        "entry 1_6: no video for utterance '1_6': none of utterances_final/1_6{.mp4,",
        "5 unreadable video clips",
        "clips: 4 decoded in full, 5 unreadable",
    ):
        assert expected in report, expected
    assert sum(line.count("1_4.mp4") for line in report.splitlines()) == 1  # one problem per file
    with pytest.raises(DataError, match="6 sample problem"):
        run("fit", video_config(tmp_path, root))


def test_unreadable_clips_while_caching_name_each_file(tmp_path):
    root = make_mustard_video(tmp_path / "mustard", count=20)
    config = video_config(tmp_path, root, "data.check_images=false")
    (root / "utterances_final" / "1_2.mp4").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"1 unreadable video clip\(s\); nothing was cached:\n  .*1_2.mp4: cannot read"):
        run("fit", config)
    assert not list((tmp_path / "cache" / "mustard").glob("video-*.pt"))


def test_mope_prompts_a_video_transformer_whose_frame_count_the_clips_must_match(tmp_path, capsys):
    """library: transformers builds the prompted VideoMAE (models/video_encoders.py): MoPE prompts it, conditioned
    on the text, and a clip length other than its position table's is refused by key before training."""
    root = make_mustard_video(tmp_path / "mustard", count=30)
    video = ("model.prompted=video", "model.video_encoder.library=transformers", "data.num_workers=0")
    runs = (f"trainer.default_root_dir={tmp_path / 'runs'}", "trainer.max_steps=2", "trainer.enable_progress_bar=false")
    assert main(["fit", *cli_args(tmp_path, root, *video, *runs, "data.video_frames=4")]) == 0
    assert "test/acc" in capsys.readouterr().out
    assert main(["fit", *cli_args(tmp_path, root, *video, *runs, "data.video_frames=8")]) == 2
    one_error(capsys, "data.video_frames=8", "exactly 4 frames", "set data.video_frames=4")
