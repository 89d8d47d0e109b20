"""Missing modalities for every modality and sets of them (issue 40, item 2): `data.missing.<split>.<modality>` and
`.sets` (which samples: nested, exact, seeded; never every modality a model reads), the batch flags of every
modality, the config's refusals, the robustness kinds (defaults, set names, passes), and a text-audio robustness run
on the generated MUStARD that removes audio clips."""

import itertools
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mope_lightning.analysis.robustness_tables import conditions, default_kinds, robustness_kinds
from mope_lightning.cli import main
from mope_lightning.cli.fit import run
from mope_lightning.models import build_model
from mope_lightning.training.datamodule import datamodule
from mope_lightning.training.trainer_config import load_config
from mope_lightning.cli.robustness import needed_passes
from mope_lightning.data.items import BatchCollate, MultimodalDataset
from mope_lightning.data.missing import (
    MODALITIES,
    MissingRatesError,
    describe,
    lost_modalities,
    loses,
    missing_table,
    model_removals,
)
from mope_lightning.data.options import MissingRates
from mope_lightning.data.samples import Split
from mope_lightning.errors import ConfigError
from mope_lightning.models import registry

from helpers import EXPERIMENTS, FAST, TINY, run_dirs
from helpers.cli import args, one_error
from helpers.datasets import make_mustard

IDS = [f"s{i}" for i in range(60)]


# --- which samples lose what ------------------------------------------------------------------------------------
def test_the_losable_modalities_are_the_models():
    assert set(MODALITIES) == set(registry.MODALITIES)


def test_a_set_is_removed_at_its_exact_rate_and_named_canonically():
    ids = [f"q{i}" for i in range(1000)]
    table = missing_table(ids, MissingRates(audio=0.1, sets={"video+audio": 0.3, "text+image": 0.2}), seed=5)
    assert Counter(table) == {"": 400, "audio": 100, "audio+video": 300, "image+text": 200}
    assert table == missing_table(ids, MissingRates(audio=0.1, sets={"audio+video": 0.3, "image+text": 0.2}), 5)
    assert table != missing_table(ids, MissingRates(audio=0.1, sets={"audio+video": 0.3, "image+text": 0.2}), 6)
    assert describe(table) == (
        "600 of 1,000 samples lose a modality: 100 their audio, 300 their audio+video, 200 their image+text"
    )
    assert loses("audio+video", "video") and loses("audio+video", "audio") and not loses("audio+video", "text")
    assert not loses("", "text") and lost_modalities("") == ()


def _kinds_of(modalities: tuple) -> list[str]:
    """Single modalities and every set of two or more that leaves one (what a model of `modalities` may lose)."""
    sets = ["+".join(c) for k in range(2, len(modalities)) for c in itertools.combinations(modalities, k)]
    return [*modalities, *sets]


@st.composite
def valid_removals(draw):
    """(modalities, counts per kind, n): a model's modalities and integer counts of samples per kind, adding up to
    at most n (so each rate count/n is exact)."""
    modalities = tuple(draw(st.lists(st.sampled_from(MODALITIES), min_size=2, max_size=5, unique=True)))
    kinds = draw(st.lists(st.sampled_from(_kinds_of(modalities)), max_size=4, unique=True))
    n = draw(st.integers(1, 80))
    counts, left = {}, n
    for kind in kinds:
        counts[kind] = draw(st.integers(0, left))
        left -= counts[kind]
    return modalities, counts, n


def _rates(counts: dict, n: int) -> MissingRates:
    singles = {k: c / n for k, c in counts.items() if "+" not in k}
    return MissingRates(**singles, sets={k: c / n for k, c in counts.items() if "+" in k})


@settings(max_examples=40)
@given(valid_removals(), st.integers(0, 3), st.data())
def test_any_valid_rates_remove_exact_nested_sets_and_never_every_modality(removal, seed, data):
    modalities, counts, n = removal
    ids = [f"id{i}" for i in range(n)]
    rates = _rates(counts, n)
    model_removals(rates, modalities, modalities, "model.fusion=mope")  # valid for this model: no error
    table = missing_table(ids, rates, seed)
    if not any(counts.values()):
        assert table is None
        return
    found = Counter(table)
    named = {_canonical(k): c for k, c in counts.items()}
    assert {k: c for k, c in found.items() if k} == {k: c for k, c in named.items() if c}  # exact counts
    assert all(set(lost_modalities(lost)) < set(modalities) for lost in table)  # one modality always left
    assert table == missing_table(ids, rates, seed)  # seeded: the same again
    kind = data.draw(st.sampled_from(sorted(counts)))
    higher = dict(counts, **{kind: counts[kind] + n - sum(counts.values())})  # this kind takes every sample left
    more = missing_table(ids, _rates(higher, n), seed)
    canonical = _canonical(kind)
    before = {i for i, lost in enumerate(table) if lost == canonical}
    assert before <= {i for i, lost in enumerate(more) if lost == canonical}  # nested: a higher rate keeps them


def _canonical(kind: str) -> str:
    return "+".join(sorted(kind.split("+"), key=MODALITIES.index))


@settings(max_examples=40)
@given(
    st.dictionaries(
        st.text(alphabet="+abdeiotuvx", max_size=12) | st.sampled_from(["audio+video", "text+text", "image"]),
        st.floats(-0.5, 1.5, allow_nan=False),
        max_size=3,
    ),
    st.floats(0, 1.2),
)
def test_any_rates_give_a_table_or_one_rates_error(sets, audio):
    ids = [f"id{i}" for i in range(20)]
    try:
        table = missing_table(ids, MissingRates(audio=audio, sets=sets), seed=1)
    except MissingRatesError as exc:
        assert exc.message and str(exc)
        return
    assert table is None or (len(table) == 20 and all(set(lost_modalities(t)) <= set(MODALITIES) for t in table))


def test_both_is_refused_for_a_model_of_three_modalities():
    with pytest.raises(MissingRatesError, match=r"^both: the MMP protocol removes one modality of a pair.*sets"):
        model_removals(MissingRates(both=0.3), ("text", "image", "audio"), ("text", "image", "audio"), "mope")
    # a pair model keeps it: half lose their text, half their image, none both
    assert model_removals(MissingRates(both=0.3), ("text", "image"), ("text", "image"), "mope") == [("both", 0.3)]


# --- items and batches ------------------------------------------------------------------------------------------
def test_the_batch_flags_every_modality_of_a_lost_set():
    items = [
        {"id": f"s{i}", "index": i, "label": 0, "missing": lost}
        for i, lost in enumerate(["audio+video", "", "text", "image+audio"])
    ]
    batch = BatchCollate(None, 0)(items)
    assert {k: v.tolist() for k, v in batch.items() if k.endswith("_missing")} == {
        "text_missing": [False, False, True, False],
        "image_missing": [False, False, False, True],
        "audio_missing": [True, False, False, True],
        "video_missing": [True, False, False, False],
        "depth_missing": [False, False, False, False],
    }


def test_a_lost_clip_is_not_read_and_a_lost_text_is_empty():
    split = Split(["a", "b"], ["first", "second"], [0, 1], [0, 1], "pool", ["x:1", "x:2"])
    silent = torch.zeros(1600)

    def load(path):
        if path.name == "a.wav":
            raise AssertionError("the lost clip was read")
        return torch.ones(800)

    dataset = MultimodalDataset(
        split, 2, False, [Path("a.wav"), Path("b.wav")], "audio", load, missing=["text+audio", ""], blank_media=silent
    )
    lost, kept = dataset[0], dataset[1]
    assert lost["audio"] is silent and lost["text"] == "" and lost["missing"] == "text+audio"
    assert kept["audio"].sum() == 800 and kept["text"] == "second"


# --- config refusals --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, needles",
    [
        (
            "data.missing.test.sets={image+vidoe: 0.3}",
            ["data.missing.test.sets.image+vidoe", "'vidoe' is not a modality"],
        ),
        ("data.missing.test.sets={text+text: 0.3}", ["data.missing.test.sets.text+text", "names the text twice"]),
        ("data.missing.test.sets={image+text: 0.3}", ["data.missing.test.sets.image+text", "reads the text and image"]),
        ("data.missing.val.sets={image: 0.2}", ["data.missing.val.sets.image", "use data.missing.<split>.image"]),
        (
            "data.missing.train.sets={text+image: 0.1, image+text: 0.1}",
            ["data.missing.train.sets.image+text", "names the same set as image+text"],
        ),
        ("data.missing.test.sets={image+text: 1.5}", ["data.missing.test.sets.image+text", "must be in [0, 1]"]),
        (
            "data.missing.train.video=0.2",
            ["data.missing.train.video: removes the video of samples", "model.modalities"],
        ),
        (
            "data.missing.test.sets={audio+video: 0.2}",
            ["data.missing.test.sets.audio+video: removes the audio and video of samples"],
        ),
    ],
)
def test_each_bad_missing_setting_is_one_message(tmp_path, capsys, override, needles):
    assert main(["fit", *args(tmp_path, override)]) == 2
    one_error(capsys, *needles)
    assert not (tmp_path / "runs").exists()


def test_shares_adding_up_to_more_than_one_are_one_message(tmp_path, capsys):
    over = ["data.missing.test.image=0.5", "data.missing.test.sets={image+text: 0.2}", "data.missing.test.text=0.4"]
    assert main(["fit", *args(tmp_path, *over)]) == 2
    one_error(capsys, "data.missing.test: image 0.5 + text 0.4 + both 0 + image+text 0.2 is more than 1")


# --- robustness kinds -------------------------------------------------------------------------------------------
def test_default_kinds_keep_the_text_image_ones_and_add_pairs_for_three_modalities():
    assert default_kinds(["text", "image"]) == ["image", "text", "both"]  # as before: the same outputs
    assert conditions([0, 0.5], default_kinds(["text", "image"])) == [
        ("none", 0.0),
        ("image", 0.5),
        ("text", 0.5),
        ("both", 0.5),
    ]
    assert default_kinds(["text", "audio"]) == ["text", "audio"]
    assert default_kinds(["text", "audio", "video"]) == [
        "text",
        "audio",
        "video",
        "text+audio",
        "text+video",
        "audio+video",
    ]
    assert robustness_kinds(["video+audio", "text"]) == ["audio+video", "text"]
    for bad, needle in (
        (["txt"], "did you mean 'text'"),
        (["audio+audio"], "names the audio twice"),
        ([], "one or more"),
    ):
        with pytest.raises(ConfigError, match=needle):
            robustness_kinds(bad)
    with pytest.raises(ConfigError, match="names audio\\+video twice"):
        robustness_kinds(["audio+video", "video+audio"])


def test_one_test_pass_per_lost_set_the_conditions_use():
    assert needed_passes([["", "image"], ["text", "image", ""]]) == ["", "image", "text"]  # the text-image passes
    assert needed_passes([["audio+video", "", "audio"], ["text+audio"], ["video"]]) == [
        "",
        "audio",
        "video",
        "audio+video",
        "text+audio",
    ]


# --- end to end: a text-audio model without its audio ----------------------------------------------------------
def mustard_config(tmp_path, root, *overrides):
    return load_config(
        [EXPERIMENTS / "mustard.yaml", TINY], [f"data.root={root}", *run_dirs(tmp_path), *FAST, *overrides]
    )


@pytest.mark.parametrize("prompted", ["text", "audio"])
def test_robustness_of_a_text_audio_model_to_lost_audio_equals_mope_test(tmp_path, capsys, prompted):
    """prompted text: the audio is a cached feature (zeros when lost); prompted audio: the prompted encoder runs on
    the silent clip of a lost one."""
    root = make_mustard(tmp_path / "mustard")
    model = f"model.prompted={prompted}"
    summary = run("fit", mustard_config(tmp_path, root, model, "data.missing.train.audio=0.5"))
    ckpt = f"ckpt={summary['best_checkpoint']}"
    out = tmp_path / "robust"
    base = [str(EXPERIMENTS / "mustard.yaml"), str(TINY), f"data.root={root}", *run_dirs(tmp_path), *FAST, model, ckpt]
    capsys.readouterr()
    assert main(["robustness", *base, f"out={out}", "rates=[0,0.5,1]", "kinds=[audio,text]"]) == 0
    assert capsys.readouterr().out.count("robustness: test split with") == 3  # complete, no audio, no text
    results = json.loads((out / "robustness.json").read_text())["metrics"]
    assert {name.rsplit("/", 1)[0] for name in results} == {
        "missing/none=0",
        "missing/audio=0.5",
        "missing/audio=1",
        "missing/text=0.5",
        "missing/text=1",
    }
    assert "| audio |" in (out / "robustness.md").read_text()
    for rate in (0.5, 1):  # each condition, put together from the passes, is what `mope test` gives with it set
        tested = run("test", mustard_config(tmp_path, root, model, ckpt, f"data.missing.test.audio={rate}"))
        assert results[f"missing/audio={rate:g}/acc"] == pytest.approx(tested["metrics"]["test/acc"], abs=1e-6)
    # and that test split's audio is gone: zero cached features, or the silent clip; the batches flag it
    cfg = mustard_config(tmp_path, root, model, "data.missing.test.audio=1.0")
    dm = datamodule(cfg.data)
    dm.attach(build_model(cfg.model, len(dm.classes)).input_spec())
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["audio_missing"].all() and not batch["text_missing"].any()
    lost = batch["audio_features"] if prompted == "text" else batch["audio"]
    kept = batch["text_features"] if "text_features" in batch else batch["attention_mask"][:, 2:]  # past [CLS] [SEP]
    assert not lost.any() and kept.any(1).all()
