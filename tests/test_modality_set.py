"""A model over any set of modalities (issue 40): text prompted, conditioned on audio and video together, on tiny
random-init encoders; the lost-set missing cases; and the pair's model exactly as it was."""

import pytest
import torch
from hypothesis import given, strategies as st

from mope_lightning.cli import main
from mope_lightning.models import build_model
from mope_lightning.models.modality_set import conditioning_modalities, missing_case, missing_cases
from mope_lightning.models.prompts import ConditionMapper, ConditionMappers
from mope_lightning.models.registry import MODALITIES
from mope_lightning.training.trainer_config import load_config

from helpers import DEFAULT_EXP, EXPERIMENTS, TINY
from helpers.cli import one_error
from helpers.datasets import make_mustard

TRIPLE_EXP = EXPERIMENTS / "mustard_video.yaml"  # text and video; the tiny audio encoder is the schema's default
TRIPLE = ["model.modalities=[text,audio,video]", "model.prompted=text"]
TEXT_EXPERTS = (  # miniatures of easy_vqa_pmoe.yaml's experts (installed offline, one vocabulary)
    "[{library: transformers, name: sentence-transformers/all-MiniLM-L6-v2},"
    " {library: transformers, name: sentence-transformers/paraphrase-MiniLM-L3-v2}]"
)
FUSION_OVERRIDES = {
    "mope": [],
    "promptfuse": ["model.fusion=promptfuse"],
    "prompt_tuning": ["model.fusion=prompt_tuning"],
    "late_concat": ["model.fusion=late_concat"],
    "linear_probe": ["model.fusion=linear_probe"],
    "pmoe": ["model.fusion=pmoe", f"model.pmoe.experts={TEXT_EXPERTS}", "model.pmoe.mapped_length=1"],
}


def triple(*overrides: str):
    torch.manual_seed(0)
    return build_model(load_config([TRIPLE_EXP, TINY], [*TRIPLE, *overrides]).model, 2)


def triple_batch(net, size: int = 3) -> dict:
    torch.manual_seed(1)
    _, height, width = net.video.data_config["input_size"]
    mask = torch.ones(size, 2000, dtype=torch.long)
    mask[1:, 1500:] = 0  # padded clips of audio
    return {
        "input_ids": torch.randint(1000, 2000, (size, 6)),
        "attention_mask": torch.ones(size, 6, dtype=torch.long),
        "audio": torch.randn(size, 2000) * mask,
        "audio_mask": mask,
        "video": torch.randn(size, 3, 3, height, width),
        "labels": torch.arange(size) % 2,
    }


@pytest.mark.parametrize("fusion", sorted(FUSION_OVERRIDES))
def test_every_fusion_over_three_modalities_trains(fusion):
    net = triple(*FUSION_OVERRIDES[fusion])
    assert net.modality_set == ("text", "audio", "video")
    batch = triple_batch(net)
    out = net(batch)
    assert out.logits.shape == (3, 2) and torch.isfinite(out.logits).all()
    (torch.nn.functional.cross_entropy(out.logits, batch["labels"]) + out.importance_loss).backward()
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    assert net.modalities() == ("text", "audio", "video")  # each of these reads the whole set


def test_the_conditioning_feature_concatenates_the_others_with_a_mapper_each():
    net = triple().eval()
    widths = [net.audio.num_features, net.video.num_features]
    assert net.conditions == ("audio", "video") == conditioning_modalities(net.modality_set, "text")
    assert net.feature_modalities() == ("audio", "video")
    batch = triple_batch(net)
    with torch.no_grad():
        cond = net.condition_features(batch)
        parts = [net.features("audio", batch), net.features("video", batch)]
    torch.testing.assert_close(cond, torch.cat(parts, dim=-1), rtol=0, atol=0)
    for layer in net.fusion.layers.values():  # the router reads the whole feature
        assert layer.router.cross_proj.in_features == sum(widths)
    mappers = net.fusion.mapper
    assert isinstance(mappers, ConditionMappers) and [m.shared[0].in_features for m in mappers] == widths
    m = load_config([TRIPLE_EXP, TINY], TRIPLE).model.mope
    assert net.fusion.num_prompts == m.static_length + m.dynamic_length + 2 * m.mapped_length
    # each conditioning modality's mapped tokens come from its own slice of the feature alone
    with torch.no_grad():
        mapped = mappers(cond)[0]
        changed = mappers(torch.cat([parts[0], torch.randn_like(parts[1])], dim=-1))[0]
    length = m.mapped_length
    torch.testing.assert_close(changed[:, :length], mapped[:, :length], rtol=0, atol=0)
    assert not torch.allclose(changed[:, length:], mapped[:, length:])


def test_prompt_tuning_feeds_every_conditioning_feature_to_its_head():
    net = triple("model.fusion=prompt_tuning")
    widths = net.text.num_features + net.audio.num_features + net.video.num_features
    assert net.head[-1].in_features == widths and net.fusion.mapper is None


def test_missing_cases_are_the_lost_sets_in_order():
    assert missing_cases(("text", "image")) == [(), ("text",), ("image",)]  # the pair's three cases, as before
    assert missing_cases(("text", "audio", "video")) == [
        (),
        ("text",),
        ("audio",),
        ("video",),
        ("text", "audio"),
        ("text", "video"),
        ("audio", "video"),
    ]
    flags = {
        "text_missing": torch.tensor([False, True, False, True, False, False, True]),
        "audio_missing": torch.tensor([False, False, True, True, False, True, False]),
        "video_missing": torch.tensor([False, False, False, False, True, True, True]),
    }
    cases = missing_case(flags, 7, torch.device("cpu"), ("text", "audio", "video"))
    assert cases.tolist() == [0, 1, 2, 4, 3, 6, 5]
    # a modality with no flags in the batch is present in every sample
    partial = {"video_missing": torch.tensor([True, False])}
    assert missing_case(partial, 2, torch.device("cpu"), ("text", "audio", "video")).tolist() == [3, 0]
    assert missing_case({}, 2, torch.device("cpu"), ("text", "audio", "video")).tolist() == [0, 0]
    every = {f"{m}_missing": torch.tensor([False, True]) for m in ("text", "audio", "video")}
    with pytest.raises(ValueError, match=r"lost every modality of \('text', 'audio', 'video'\) \(rows \[1\]"):
        missing_case(every, 2, torch.device("cpu"), ("text", "audio", "video"))


@given(
    st.integers(min_value=2, max_value=len(MODALITIES)).flatmap(
        lambda n: st.tuples(
            st.permutations(MODALITIES).map(lambda order: order[:n]),
            st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=1, max_size=6),
        )
    )
)
def test_every_sample_maps_to_the_case_of_its_lost_set_or_one_error(drawn):
    modality_set, rows = drawn
    batch = {f"{m}_missing": torch.tensor([row[k] for row in rows]) for k, m in enumerate(modality_set)}
    cases = missing_cases(modality_set)
    assert len(cases) == 2 ** len(modality_set) - 1 and cases[0] == ()
    try:
        found = missing_case(batch, len(rows), torch.device("cpu"), modality_set).tolist()
    except ValueError as exc:
        assert any(all(row) for row in rows) and "lost every modality" in str(exc)
        return
    assert [cases[c] for c in found] == [tuple(m for m, lost in zip(modality_set, row) if lost) for row in rows]


def test_a_triple_learns_seven_missing_aware_prompt_sets():
    net = triple("model.missing_prompts=true", "model.missing_prompt_length=2")
    assert net.fusion.missing_cases == 7
    assert net.fusion.layers["0"].missing.shape == (7, 2, net.text.width)
    batch = triple_batch(net)
    batch["audio_missing"] = torch.tensor([False, True, True])
    batch["video_missing"] = torch.tensor([False, False, True])
    net.train()
    torch.nn.functional.cross_entropy(net(batch).logits, batch["labels"]).backward()
    grads = net.fusion.layers["0"].missing.grad.abs().sum(dim=(1, 2))
    used = {0, 2, 6}  # complete, audio lost, audio and video lost
    assert all((grads[case] > 0) == (case in used) for case in range(7)), grads


def test_each_missing_embedding_replaces_exactly_its_lost_rows():
    net = triple().eval()
    with torch.no_grad():
        net.missing_features["audio"].fill_(7.0)
        net.missing_features["video"].fill_(-3.0)
    batch = triple_batch(net)
    with torch.no_grad():
        complete = net.condition_features(batch)
        batch["audio_missing"] = torch.tensor([True, False, True])
        batch["video_missing"] = torch.tensor([False, True, False])
        lost = net.condition_features(batch)
    audio = slice(0, net.audio.num_features)
    video = slice(net.audio.num_features, None)
    expected = complete.clone()
    expected[[0, 2], audio] = 7.0
    expected[1, video] = -3.0
    torch.testing.assert_close(lost, expected, rtol=0, atol=0)


# The pair's trained tensors as the pair-only code built them (easy-VQA tiny, missing-aware prompts of length 2):
# the checkpoint keys and the parameter counts must not move.
PAIR_KEYS = [
    *(
        f"fusion.layers.{i}.{name}"
        for i in (0, 1)
        for name in (
            "experts",
            "missing",
            "router.cross_proj.bias",
            "router.cross_proj.weight",
            "router.keys",
            "router.self_proj.bias",
            "router.self_proj.weight",
            "static",
        )
    ),
    "fusion.mapper.shared.0.bias",
    "fusion.mapper.shared.0.weight",
    "fusion.mapper.shared.1.bias",
    "fusion.mapper.shared.1.num_batches_tracked",
    "fusion.mapper.shared.1.running_mean",
    "fusion.mapper.shared.1.running_var",
    "fusion.mapper.shared.1.weight",
    "fusion.mapper.stages.0.0.bias",
    "fusion.mapper.stages.0.0.weight",
    "head.1.bias",
    "head.1.weight",
    "missing_features.image",
]
PAIR_COUNTS = {  # fusion overrides -> (total, trainable) parameters
    ("model.missing_prompts=true", "model.missing_prompt_length=2"): (2_114_359, 865_943),
    ("model.fusion=promptfuse",): (2_337_571, 1_089_155),
    ("model.fusion=prompt_tuning",): (1_254_467, 6_051),
    ("model.fusion=late_concat",): (1_256_291, 7_875),
}


@pytest.mark.parametrize("overrides", sorted(PAIR_COUNTS))
def test_a_pair_keeps_its_parameters(overrides):
    net = build_model(load_config([DEFAULT_EXP, TINY], list(overrides)).model, 3)
    total = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert (total, trainable) == PAIR_COUNTS[overrides]
    assert net.modality_set == ("text", "image")
    if "model.missing_prompt_length=2" in overrides:
        assert sorted(net.trained_state_dict()) == sorted(PAIR_KEYS)
        assert isinstance(net.fusion.mapper, ConditionMapper) and net.fusion.missing_cases == 3


@pytest.mark.parametrize(
    "overrides, needles",
    [
        (
            ["model.modalities=[text,audio,text]"],
            ["command line: model.modalities: ['text', 'audio', 'text'] lists text twice"],
        ),
        (
            ["model.modalities=[text,audio,vidoe]"],
            ["command line: model.modalities: 'vidoe' is not a modality", "'video'"],
        ),
        (
            [*TRIPLE[:1], "model.prompted=image"],
            ["command line: model.prompted: 'image' is not one of model.modalities ['text', 'audio', 'video']"],
        ),
        (
            [*TRIPLE, "model.condition_prompts=2"],
            ["model.condition_prompts: 2 prompts the one conditioning encoder", "audio, video condition"],
        ),
    ],
    ids=["twice", "unknown", "prompted", "condition_prompts"],
)
def test_a_bad_modality_set_is_one_error_naming_the_key(capsys, overrides, needles):
    assert main(["params", str(TRIPLE_EXP), str(TINY), *overrides]) == 2
    one_error(capsys, *needles)


def test_a_modality_listed_twice_in_a_file_names_the_file(tmp_path, capsys):
    overlay = tmp_path / "three.yaml"
    overlay.write_text("model:\n  modalities: [text, video, audio, video]\n")
    assert main(["params", str(TRIPLE_EXP), str(TINY), str(overlay)]) == 2
    one_error(capsys, f"{overlay}: model.modalities: ['text', 'video', 'audio', 'video'] lists video twice")
    assert [p.name for p in tmp_path.iterdir()] == ["three.yaml"]


def test_a_set_the_dataset_cannot_provide_names_what_it_lacks(tmp_path, capsys):
    root = make_mustard(tmp_path / "mustard", count=10)
    audio = [str(EXPERIMENTS / "mustard.yaml"), str(TINY), f"data.root={root}", f"data.cache_dir={tmp_path / 'c'}"]
    assert main(["fit", *audio, "model.modalities=[text,audio,video]", "model.video_encoder.name=mobilenet_v2"]) == 2
    one_error(
        capsys,
        "model.modalities: ['text', 'audio', 'video'], but mustard has text and audio, no video",
        "model.modalities=[text,audio]",
    )


def test_params_counts_a_three_modality_model(capsys):
    assert main(["params", str(TRIPLE_EXP), str(TINY), *TRIPLE]) == 0
    out = capsys.readouterr().out
    assert "text transformers" in out and "audio transformers" in out and "video torchvision" in out
    assert "trainable / total" in out and "audio feature" in out and "video feature" in out
