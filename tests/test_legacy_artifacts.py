"""Artifacts written by an earlier layout of the package still load (issue 37): a Lightning checkpoint resumes and
tests through `mope`, and an exported adapter predicts through `from_pretrained`. tests/assets/legacy/README.md says
which commit wrote them and how. The checkpoint pickles no class of ours, so moving modules cannot break it; the
first test checks that stays true."""

import pickletools
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mope_lightning
from mope_lightning.cli import main

from helpers import DEFAULT_EXP, TINY

LEGACY = Path(__file__).parent / "assets" / "legacy"
CLASSES = [
    "circle",
    "green",
    "red",
    "gray",
    "yes",
    "teal",
    "black",
    "rectangle",
    "yellow",
    "triangle",
    "brown",
    "blue",
    "no",
]
# The overrides the checkpoint was trained with (a resume refuses others), apart from where it writes
TRAINED_WITH = [
    "data.train_images=40",
    "data.test_images=10",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "model.mope.mapper_hidden=16",
]
# What the code that wrote them printed: `mope test` of last.ckpt, and the adapter's probabilities below
TEST_LOSS = 2.6223
PROBS = [
    [
        0.054309,
        0.090223,
        0.078358,
        0.080879,
        0.080149,
        0.105663,
        0.079117,
        0.074665,
        0.069347,
        0.081927,
        0.072829,
        0.068203,
        0.064332,
    ],
    [
        0.057246,
        0.091913,
        0.078962,
        0.082051,
        0.080404,
        0.102334,
        0.078629,
        0.07422,
        0.069065,
        0.079761,
        0.074509,
        0.065004,
        0.065902,
    ],
]


def legacy_args(tmp_path, *extra):
    return [
        str(DEFAULT_EXP),
        str(TINY),
        f"trainer.default_root_dir={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        *TRAINED_WITH,
        *extra,
    ]


@pytest.fixture
def ckpt(tmp_path):
    """A copy, so that nothing a command writes lands in tests/assets."""
    return shutil.copy(LEGACY / "last.ckpt", tmp_path / "last.ckpt")


def pickled_globals(path: Path) -> set[str]:
    """`module name` of every global the checkpoint's pickle names (torch.save pushes them as two strings)."""
    with zipfile.ZipFile(path) as archive:
        pickle = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    strings, names = [], set()
    for op, arg, _ in pickletools.genops(pickle):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            names.add(" ".join(strings[-2:]))
        elif op.name == "GLOBAL":
            names.add(arg)
    return names


def test_the_checkpoint_pickles_no_class_of_ours():
    names = pickled_globals(LEGACY / "last.ckpt")
    assert "collections OrderedDict" in names, names  # the parser sees the globals at all
    assert not [n for n in names if n.startswith("mope_lightning")], names
    torch.load(LEGACY / "last.ckpt", map_location="cpu", weights_only=True)  # plain tensors and containers only


def test_the_checkpoint_tests_through_the_cli(tmp_path, ckpt, capsys):
    assert main(["test", *legacy_args(tmp_path, f"ckpt={ckpt}")]) == 0
    out = capsys.readouterr().out
    loss = float(next(line.split()[-1] for line in out.splitlines() if line.strip().startswith("test/loss")))
    assert loss == pytest.approx(TEST_LOSS, abs=1e-3), out


def test_the_checkpoint_resumes_and_trains_on(tmp_path, ckpt, capsys):
    assert main(["fit", *legacy_args(tmp_path, f"ckpt={ckpt}", "trainer.max_epochs=2")]) == 0
    written = sorted((tmp_path / "runs").rglob("last.ckpt"))
    assert written, capsys.readouterr()
    assert torch.load(written[-1], map_location="cpu", weights_only=True)["global_step"] == 4  # 2 more steps


def test_the_adapter_predicts_through_from_pretrained():
    model = mope_lightning.from_pretrained(LEGACY / "adapter")
    images = [Image.new("RGB", (64, 64), color) for color in ((200, 30, 0), (0, 90, 200))]
    out = model.predict(texts=["what shape is this?", "what color is it?"], images=images)
    assert list(model.classes) == CLASSES
    assert out.probs.shape == (2, len(CLASSES)) and all(label in CLASSES for label in out.labels)
    torch.testing.assert_close(torch.as_tensor(out.probs), torch.tensor(PROBS), atol=1e-5, rtol=0)
    from_ckpt = mope_lightning.from_pretrained(LEGACY / "last.ckpt").predict(
        texts=["what shape is this?", "what color is it?"], images=images
    )
    assert torch.equal(torch.as_tensor(from_ckpt.probs), torch.as_tensor(out.probs))


def test_configs_may_name_callbacks_by_their_old_module():
    """`class_path: mope_lightning.callbacks.X` (the module before issue 37) is looked up in training/callbacks.py."""
    from mope_lightning.errors import ConfigError
    from mope_lightning.training.config_callbacks import resolve_callbacks

    with pytest.raises(ConfigError, match=r"mope_lightning\.training\.callbacks has no callback 'Nope'"):
        resolve_callbacks([{"class_path": "mope_lightning.callbacks.Nope"}], "callbacks")


# A text-audio MoPE adapter written by the pair-only code (728f287, before model.modalities took any set; README.md
# there), and its probabilities for two texts with two synthetic tones, as that code predicted them.
TEXT_AUDIO_PROBS = [[0.44422000646591187, 0.5557799935340881], [0.44664087891578674, 0.5533591508865356]]


def test_a_text_audio_adapter_of_the_pair_only_code_predicts_the_same():
    model = mope_lightning.from_pretrained(LEGACY / "text_audio_adapter")
    t = np.arange(16000) / 16000
    audio = [
        (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32),
        (0.2 * np.sin(2 * np.pi * 440 * t[:12000])).astype(np.float32),
    ]
    out = model.predict(texts=["SHELDON: oh great", "PENNY: sure, why not"], audio=audio)
    assert model.net.modality_set == ("text", "audio")
    torch.testing.assert_close(torch.as_tensor(out.probs), torch.tensor(TEXT_AUDIO_PROBS), atol=1e-6, rtol=0)
