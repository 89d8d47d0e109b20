"""The prompted speech encoder (wav2vec2, HuBERT, WavLM): parity with the library model, gradients to prompts only,
padding; and classifiers over a text-audio pair, audio prompted or conditioning, built from the config."""

import json
import os
import pickle

import pytest
import torch
from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model, WavLMConfig, WavLMModel

import mope_lightning
from mope_lightning.cli import main
from mope_lightning.training.trainer_config import load_config
from mope_lightning.data import DATAMODULES
from mope_lightning.errors import ConfigError, DataError, ModelError, MopeError
from mope_lightning.models import MoPE, PromptedAudioEncoder, build_model
from mope_lightning.models.audio_encoders import TINY_AUDIO, TINY_AUDIO_EXTRA
from mope_lightning.cli.check_data import check_data
from mope_lightning.cli.fit import run

from helpers import EXPERIMENTS, FAST, TINY, run_dirs
from helpers.datasets import make_mustard, write_wav

FAMILIES = {
    "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model),
    "hubert": (HubertConfig, HubertModel),
    "wavlm": (WavLMConfig, WavLMModel),
}
TEXT_AUDIO = [EXPERIMENTS / "easy_vqa.yaml", TINY]


def tiny_model(family: str, norm: str = "group", stable: bool = False):
    config_class, model_class = FAMILIES[family]
    torch.manual_seed(0)
    config = config_class(
        **TINY_AUDIO,
        **TINY_AUDIO_EXTRA.get(family, {}),
        feat_extract_norm=norm,
        do_stable_layer_norm=stable,
        feat_proj_layer_norm=True,
    )
    return model_class(config).eval()


def waves(lengths=(4000, 3000, 1000)):
    """A zero-padded batch of noise and its sample mask, as the feature extractor makes it."""
    torch.manual_seed(1)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return torch.randn(mask.shape) * mask, mask


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("norm,stable", [("group", False), ("layer", False), ("layer", True)])
def test_no_prompts_equals_the_library(family, norm, stable):
    model = tiny_model(family, norm, stable)
    encoder = PromptedAudioEncoder(model)
    x, mask = waves()
    with torch.no_grad():
        # The library's rule: layer-norm feature encoders take the mask, group-norm ones see zero padding.
        expected = model(x, attention_mask=mask if norm == "layer" else None).last_hidden_state
        # A prompter that declines every layer is the same as no prompter.
        ours, frames = encoder.forward_features(x, mask, prompter=lambda layer, pooled, carried: None)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    lengths = model._get_feat_extract_output_lengths(mask.sum(1))
    assert frames.sum(1).tolist() == lengths.tolist()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_gradients_reach_the_prompts_only(family):
    encoder = PromptedAudioEncoder(tiny_model(family, "layer"))
    mope = MoPE(encoder.layer_dims, encoder.layer_stages, cond_dim=12, num_experts=3)
    x, mask = waves()
    out, frames = encoder.forward_features(x, mask, prompter=mope.bind(torch.randn(3, 12)))
    assert out.shape[1] == frames.shape[1] and frames[:, : mope.num_prompts].all()
    (out * torch.randn_like(out)).sum().backward()  # a random projection: out.sum() of LayerNorm-ed rows is 0
    assert all(not p.requires_grad and p.grad is None for p in encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mope.parameters())


def test_prompts_change_the_output_and_padding_does_not():
    encoder = PromptedAudioEncoder(tiny_model("wav2vec2", "layer"))
    mope = MoPE(encoder.layer_dims, encoder.layer_stages, cond_dim=12, num_experts=3).eval()
    cond = torch.randn(1, 12)
    x, mask = waves((3000, 4000))
    with torch.no_grad():
        alone = encoder(x[:1, :3000], mask[:1, :3000], prompter=mope.bind(cond))
        padded = encoder(x, mask, prompter=mope.bind(cond.expand(2, -1)))[:1]
        bare = encoder(x[:1, :3000], mask[:1, :3000])
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)
    assert (alone - bare).abs().max() > 1e-3


def test_wavlm_recomputes_its_position_bias_when_prompts_change_the_length():
    encoder = PromptedAudioEncoder(tiny_model("wavlm", "layer"))
    mope = MoPE(encoder.layer_dims, encoder.layer_stages, cond_dim=4, num_experts=2, prompted_layers=[1])
    x, mask = waves()
    # Layer 0 runs on the frames alone and computes the bias for them; layer 1 adds prompts (a longer sequence).
    out, frames = encoder.forward_features(x, mask, prompter=mope.bind(torch.randn(3, 4)))
    length = int(encoder.model._get_feat_extract_output_lengths(x.shape[1]))
    assert out.shape[1] == frames.shape[1] == mope.num_prompts + length and torch.isfinite(out).all()


def test_other_models_are_refused():
    from transformers import BertConfig, BertModel

    with pytest.raises(TypeError, match="wav2vec2"):
        PromptedAudioEncoder(
            BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37))
        )


def audio_batch(net, size: int = 4) -> dict:
    x, mask = waves(tuple(4000 - 500 * i for i in range(size)))
    text = net.text.tokenizer(
        ["is it sarcastic?", "no", "oh really, what a surprise", "yes"][:size], padding=True, return_tensors="pt"
    )
    return {
        "audio": x,
        "audio_mask": mask,
        "input_ids": text["input_ids"],
        "attention_mask": text["attention_mask"],
        "labels": torch.arange(size) % 2,
    }


@pytest.mark.parametrize("prompted", ["audio", "text"])
def test_mope_over_text_and_audio_trains_its_prompts_only(prompted):
    cfg = load_config(TEXT_AUDIO, ["model.modalities=[text,audio]", f"model.prompted={prompted}"])
    net = build_model(cfg.model, 2)
    assert net.modality_set == ("text", "audio") and net.conditions == ("text" if prompted == "audio" else "audio",)
    spec = net.input_spec()
    assert spec.audio_preprocessor.sampling_rate == 16000 and spec.image_config is None
    assert set(spec.cacheable) == set(net.conditions)  # the frozen, unprompted conditioning encoder
    out = net(audio_batch(net))
    assert out.logits.shape == (4, 2) and out.routing.shape[1:] == (2, cfg.model.mope.num_experts)
    (out.logits.sum() + out.importance_loss).backward()
    assert all(p.grad is None for p in net.audio.parameters()) and all(p.grad is None for p in net.text.parameters())
    assert all(p.grad is not None for p in net.fusion.parameters() if p.requires_grad)


def test_late_fusion_and_audio_only_read_the_audio():
    for fusion, reads in (("late_concat", ("text", "audio")), ("audio_only", ("audio",))):
        cfg = load_config(TEXT_AUDIO, ["model.modalities=[text,audio]", f"model.fusion={fusion}"])
        net = build_model(cfg.model, 3)
        assert net.modalities() == reads
        assert net(audio_batch(net)).logits.shape == (4, 3)


def test_pmoe_with_audio_experts():
    experts = "[{library: transformers, name: a, arch: wav2vec2}, {library: transformers, name: b, arch: hubert}]"
    cfg = load_config(
        [EXPERIMENTS / "easy_vqa_pmoe.yaml", TINY],
        ["model.modalities=[text,audio]", "model.prompted=audio", f"model.pmoe.experts={experts}"],
    )
    net = build_model(cfg.model, 2)
    assert [type(e).__name__ for e in net.experts] == ["PromptedAudioEncoder"] * 2
    out = net(audio_batch(net))
    assert out.logits.shape == (4, 2) and torch.isfinite(out.logits).all()


def test_bad_pairs_name_the_key():
    with pytest.raises(ConfigError, match="model.modalities"):
        load_config(TEXT_AUDIO, ["model.modalities=[text,smell]"])
    with pytest.raises(ConfigError, match="model.prompted: 'audio' is not one of"):
        load_config(TEXT_AUDIO, ["model.prompted=audio"])
    with pytest.raises(ConfigError, match="data.missing.test.image"):
        load_config(TEXT_AUDIO, ["model.modalities=[text,audio]", "data.missing.test.image=0.5"])
    cfg = load_config(
        TEXT_AUDIO,
        [
            "model.modalities=[text,audio]",
            "model.prompted=audio",
            "model.audio_encoder.tiny=false",
            "model.audio_encoder.pretrained=false",
            "model.audio_encoder.arch=bert",
        ],
    )
    with pytest.raises(ModelError, match="model.audio_encoder.name: cannot prompt audio encoder of type 'bert'"):
        build_model(cfg.model, 2)


# --- MUStARD: the release's layout, its splits and bad clips, tiny fits through the CLI -------------------------
def mustard_config(tmp_path, root, *overrides):
    return load_config(
        [EXPERIMENTS / "mustard.yaml", TINY], [f"data.root={root}", *run_dirs(tmp_path), *FAST, *overrides]
    )


def test_mustard_check_data_and_splits(tmp_path, capsys):
    root = make_mustard(tmp_path / "mustard")
    assert (
        main(
            [
                "check-data",
                str(EXPERIMENTS / "mustard.yaml"),
                str(TINY),
                f"data.root={root}",
                f"data.cache_dir={tmp_path / 'cache'}",
                "data.max_audio_seconds=0.4",
            ]
        )
        == 0
    )
    report = capsys.readouterr().out
    assert "check-data mustard: 2 classes" in report and "the dataset is clean" in report
    assert "clips: 30 decoded in full, 0 unreadable" in report
    # the mp4 clip's AAC track and the 44.1 kHz stereo WAV are read like the others
    assert "audio rates: 16,000 Hz: 28, 22,050 Hz: 1, 44,100 Hz: 1" in report
    assert "clip(s) longer than data.max_audio_seconds=0.4 are cut" in report
    folds = pickle.loads((root / "split_indices.p").read_bytes())
    splits = DATAMODULES["mustard"](mustard_config(tmp_path, root, "data.fold=2").data).read_splits()[0]
    ids = list(json.loads((root / "sarcasm_data.json").read_text()))
    assert splits["test"].ids == [ids[i] for i in folds[2][1]]
    assert sorted(splits["train"].ids + splits["val"].ids) == sorted(ids[i] for i in folds[2][0])
    assert splits["test"].texts[0].startswith(("SHELDON: ", "CHANDLER: "))
    independent = DATAMODULES["mustard"](mustard_config(tmp_path, root, "data.split=speaker_independent").data)
    splits = independent.read_splits()[0]
    data = json.loads((root / "sarcasm_data.json").read_text())
    assert {data[i]["show"] for i in splits["test"].ids} == {"FRIENDS"} and len(splits["test"]) == 10
    assert "FRIENDS" not in {data[i]["show"] for i in splits["train"].ids + splits["val"].ids}


@pytest.mark.parametrize("prompted", ["text", "audio"])
def test_mustard_tiny_fit(tmp_path, capsys, prompted):
    root = make_mustard(tmp_path / "mustard")
    summary = run("fit", mustard_config(tmp_path, root, f"model.prompted={prompted}"))
    metrics = summary["metrics"]
    assert {"test/acc", "test/f1_weighted", "test/auroc"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("test/acc", "test/f1_weighted"))
    cached = {p.name.split("-")[0] for p in (tmp_path / "cache" / "mustard").glob("*.pt")}
    assert cached == {"audio" if prompted == "text" else "text"}  # the frozen conditioning encoder's features
    if prompted == "text":  # robustness to lost texts; an audio dataset loses no image
        base = [
            str(EXPERIMENTS / "mustard.yaml"),
            str(TINY),
            f"data.root={root}",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"ckpt={summary['best_checkpoint']}",
            "rates=[0.5]",
        ]
        assert main(["robustness", *base, "kinds=[image]", f"out={tmp_path / 'r1'}"]) == 2
        assert "robustness.kinds: removing the image needs a model that reads it" in capsys.readouterr().err
        assert main(["robustness", *base, "kinds=[text]", f"out={tmp_path / 'r2'}"]) == 0
        results = json.loads((tmp_path / "r2" / "robustness.json").read_text())
        assert "text" in json.dumps(results)
        return
    # New inputs: rows of text and audio path through the CLI, and the Python API on the checkpoint, agree.
    clips = sorted((root / "utterances_final").iterdir())[:3]  # a WAV, the 44.1 kHz stereo WAV, the MP4
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"id": f"u{i}", "text": f"SHELDON: line {i}", "audio": str(clip)}) + "\n"
            for i, clip in enumerate(clips)
        )
    )
    out = tmp_path / "preds.csv"
    ckpt = summary["best_checkpoint"]
    assert (
        main(
            [
                "predict",
                str(EXPERIMENTS / "mustard.yaml"),
                str(TINY),
                f"data.root={root}",
                f"data.cache_dir={tmp_path / 'cache'}",
                "model.prompted=audio",
                f"ckpt={ckpt}",
                f"predict.input={rows}",
                f"predict.out={out}",
            ]
        )
        == 0
    )
    written = [line.split(",")[1] for line in out.read_text().splitlines()[1:]]
    model = mope_lightning.from_pretrained(ckpt)
    direct = model.predict(texts=[f"SHELDON: line {i}" for i in range(3)], audio=clips)
    assert written == direct.labels and direct.routing.shape[0] == 3
    with pytest.raises(MopeError, match="pass audio="):
        model.predict(texts=["a"])
    # The routing report shows the audio of each expert's exemplars as spectrograms.
    assert (
        main(
            [
                "analyze",
                str(EXPERIMENTS / "mustard.yaml"),
                str(TINY),
                f"data.root={root}",
                f"data.cache_dir={tmp_path / 'cache'}",
                "model.prompted=audio",
                f"ckpt={ckpt}",
                f"out={tmp_path / 'report'}",
            ]
        )
        == 0
    )
    assert (tmp_path / "report" / "exemplars.png").stat().st_size > 0


def test_mustard_bad_clips_are_problems_by_file(tmp_path):
    root = make_mustard(tmp_path / "mustard")
    clips = root / "utterances_final"
    (clips / "1_5.wav").write_bytes(b"RIFF....not audio")  # unreadable
    write_wav(clips / "1_6.wav", 6, seconds=0.0)  # empty
    (clips / "1_7.wav").unlink()  # no audio
    data = json.loads((root / "sarcasm_data.json").read_text())
    data["1_8"]["sarcasm"] = "maybe"
    (root / "sarcasm_data.json").write_text(json.dumps(data))
    report, problems = check_data(mustard_config(tmp_path, root))
    assert problems == 4
    for expected in (
        "1_5.wav: cannot read audio",
        "1_6.wav: empty clip: no audio samples",
        "entry 1_7: no audio for utterance '1_7'",
        "entry 1_8: 'sarcasm' is 'maybe', not true or false",
        "2 unreadable audio clips",
    ):
        assert expected in report, expected
    with pytest.raises(DataError, match="4 sample problem"):
        run("fit", mustard_config(tmp_path, root))
    summary = run("fit", mustard_config(tmp_path, root, "data.on_bad_sample=skip"))
    assert "test/acc" in summary["metrics"]


def test_mustard_folds_file_cannot_run_code(tmp_path):
    root = make_mustard(tmp_path / "mustard")

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (root / "split_indices.p").write_bytes(pickle.dumps([Exploit()]))
    with pytest.raises(DataError, match="split_indices.p: not a list of .* asks for posix.system"):
        check_data(mustard_config(tmp_path, root))
    assert not (tmp_path / "pwned").exists()


def test_a_model_reading_a_modality_the_dataset_lacks_is_refused(tmp_path):
    root = make_mustard(tmp_path / "mustard")
    with pytest.raises(
        ConfigError,
        match=r"model.modalities: \['text', 'image'\], but mustard has text and audio, "
        r"no image; set model.modalities=\[text,audio\]",
    ):
        run(
            "fit",
            mustard_config(tmp_path, root, "model.modalities=[text,image]", "model.image_encoder.name=mobilenet_v2"),
        )
    cfg = load_config(TEXT_AUDIO, ["model.modalities=[text,audio]", f"data.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(ConfigError, match="but easy_vqa has text and image, no audio"):
        run("fit", cfg)
