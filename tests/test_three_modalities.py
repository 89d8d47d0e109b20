"""MUStARD with text, audio and video through the real commands (issue 40): on a generated copy whose utterances are
real MP4 clips (H.264 video and AAC audio written with PyAV), the three-modality model and each pair run check-data,
a tiny fit, test, robustness (every single loss and, for three, every pair of losses), analyze (routing per speaker
and show) and `from_pretrained(...).predict` with the inputs of its modalities."""

import json
import re

import pytest
import torch

import mope_lightning
from mope_lightning.cli import main
from mope_lightning.errors import MopeError

from helpers import EXPERIMENTS, FAST, TINY, run_dirs
from helpers.video import make_mustard_video

EXP = EXPERIMENTS / "mustard_video.yaml"
TEXTS = ["SHELDON: oh great", "CHANDLER: could this BE any better"]
# model.modalities -> (model.prompted, the robustness kinds it gets by default)
SETS = {
    "text,audio,video": ("text", ["text", "audio", "video", "text+audio", "text+video", "audio+video"]),
    "text,audio": ("text", ["text", "audio"]),
    "text,video": ("text", ["text", "video"]),
    "audio,video": ("audio", ["audio", "video"]),
}


@pytest.fixture(scope="module")
def mustard(tmp_path_factory):
    return make_mustard_video(tmp_path_factory.mktemp("data") / "mustard", count=24)


def args(tmp_path, root, modalities: str, *extra) -> list[str]:
    prompted = SETS[modalities][0]
    return [
        str(EXP),
        str(TINY),
        f"data.root={root}",
        *run_dirs(tmp_path),
        *FAST,
        f"model.modalities=[{modalities}]",
        f"model.prompted={prompted}",
        *extra,
    ]


def test_check_data_reads_both_streams_of_every_clip(tmp_path, mustard, capsys):
    assert main(["check-data", *args(tmp_path, mustard, "text,audio,video")]) == 0
    report = capsys.readouterr().out
    assert "the dataset is clean" in report
    assert "audio clips: 24 decoded in full" in report and "video clips: 24 decoded in full" in report
    assert "attribute speaker: CHANDLER, SHELDON" in report and "attribute show: BBT, FRIENDS, GOLDENGIRLS" in report


@pytest.mark.parametrize("modalities", list(SETS))
def test_fit_test_robustness_analyze_and_predict(tmp_path, mustard, capsys, modalities):
    base = args(tmp_path, mustard, modalities)
    assert main(["fit", *base]) == 0
    out = capsys.readouterr().out
    ckpt = next(line.split()[-1] for line in out.splitlines() if line.strip().startswith("best checkpoint"))
    run_dir = ckpt.split("/checkpoints/")[0]
    fit = json.loads(open(f"{run_dir}/fit_metrics.json").read())
    assert {"test/acc", "test/f1_weighted", "test/auroc"} <= set(fit["metrics"])
    read = modalities.split(",")
    cached = {p.name.split("-")[0] for p in (tmp_path / "cache" / "mustard").glob("*.pt")}
    assert cached == set(read) - {SETS[modalities][0], "text"}  # the frozen conditioning media's features only

    assert main(["test", *base, f"ckpt={ckpt}"]) == 0
    tested = re.search(r"test/acc\s+([0-9.]+)", capsys.readouterr().out)
    assert tested and float(tested[1]) == pytest.approx(fit["metrics"]["test/acc"], abs=1e-4)  # the same weights

    # robustness: by default every single modality lost and, with three, every pair; one test pass per lost set
    assert main(["robustness", *base, f"ckpt={ckpt}", "rates=[0,1]", f"out={tmp_path / 'robust'}"]) == 0
    kinds = SETS[modalities][1]
    assert capsys.readouterr().out.count("robustness: test split with") == 1 + len(kinds)
    results = json.loads((tmp_path / "robust" / "robustness.json").read_text())["metrics"]
    assert {name.rsplit("/", 1)[0] for name in results} == {"missing/none=0", *(f"missing/{k}=1" for k in kinds)}
    assert all(0.0 <= results[f"missing/{k}=1/acc"] <= 1.0 for k in kinds)

    # the routing report relates the experts to the speaker and the show
    report = tmp_path / "report"
    assert main(["analyze", *base, f"ckpt={ckpt}", f"out={report}"]) == 0
    assert (report / "speaker_expert.png").stat().st_size > 0 and (report / "show_expert.png").stat().st_size > 0
    summary = (report / "summary.md").read_text()
    assert "speaker" in summary and "show" in summary

    # the Python API takes the inputs of the model's modalities, and needs every one of them
    clips = sorted((mustard / "utterances_final").glob("*.mp4"))[:2]
    inputs = {"text": {"texts": TEXTS}, "audio": {"audio": clips}, "video": {"video": clips}}
    model = mope_lightning.from_pretrained(ckpt)
    given = {k: v for m in read for k, v in inputs[m].items()}
    preds = model.predict(**given)
    assert preds.probs.shape == (2, 2) and torch.allclose(preds.probs.sum(-1), torch.ones(2))
    swapped = model.predict(**{k: v[::-1] for k, v in given.items()})  # each input's prediction is its own
    assert torch.allclose(swapped.probs.flip(0), preds.probs, atol=1e-6)
    lacking = read[-1]
    with pytest.raises(MopeError, match=f"pass {'texts' if lacking == 'text' else lacking}="):
        model.predict(**{k: v for m in read[:-1] for k, v in inputs[m].items()})


def test_a_three_modality_model_refuses_both_and_loses_a_pair(tmp_path, mustard, capsys):
    base = args(tmp_path, mustard, "text,audio,video")
    assert main(["fit", *base, "data.missing.train.both=0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("mope: error:") == 1 and "data.missing.train.both" in err
    # training with a share of the clips missing both their audio and their video, as a set
    assert main(["fit", *base, "data.missing.train.sets={audio+video: 0.5}", "model.missing_prompts=true"]) == 0
    captured = capsys.readouterr()
    said = re.search(
        r"train: (\d+) of (\d+) samples lose a modality: (\d+) their audio\+video", captured.out + captured.err
    )
    assert said and said[1] == said[3] and int(said[1]) == round(0.5 * int(said[2]))
