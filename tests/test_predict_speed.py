"""`from_pretrained(...).predict` at the model's speed (issue 36, item 5): each distinct image or clip is preprocessed
once per batch, the conditioning encoder runs once per distinct input per call, and the next batch is preprocessed
in a thread while the model runs; the predictions stay those of the path that ran every input through everything
(to 1e-5), for both modality orders, images given as paths, PIL images or tensors, and audio clips.

The "old path" here is today's computation written out: `net(preprocess(chunk))` for each chunk of `batch_size`
inputs, which preprocesses every input and runs every encoder on it."""

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import mope_lightning
from mope_lightning import inference
from mope_lightning.cli import main
from mope_lightning.training.trainer_config import load_config
from mope_lightning.data.datasets.easy_vqa import default_root
from mope_lightning.inference import Distinct, distinct_rows, overlaps
from mope_lightning.models.image_encoders import PooledImageEncoder
from mope_lightning.predictions import probabilities
from mope_lightning.pretrained import PretrainedModel

from helpers import EXPERIMENTS, TINY, tiny_config
from helpers.datasets import write_wav
from helpers.models import CLASSES, write_tiny_adapter
from helpers.cli import args

TOLERANCE = 1e-5
PROMPTED_IMAGE = [
    "model.prompted=image",
    "model.image_encoder.library=timm",
    "model.image_encoder.name=vit_base_patch16_224",
]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict_speed")
    return {
        "text": write_tiny_adapter(tiny_config(tmp / "t"), tmp / "text", CLASSES),
        "image": write_tiny_adapter(tiny_config(tmp / "i", *PROMPTED_IMAGE), tmp / "image", CLASSES),
    }


@pytest.fixture(scope="module")
def models(adapters):
    return {prompted: mope_lightning.from_pretrained(adapter) for prompted, adapter in adapters.items()}


@pytest.fixture(autouse=True)
def _prefetch_decided_by_the_machine():
    yield
    inference.PREFETCH = None


def easy_vqa_pairs(n: int) -> tuple[list[str], list[Path]]:
    """The first `n` easy-VQA test questions and their image files: about 10 questions per image, in order."""
    folder = default_root() / "test"
    questions = json.loads((folder / "questions.json").read_text())[:n]
    return [q[0] for q in questions], [folder / "images" / f"{q[2]}.png" for q in questions]


def load(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def old_path(model: PretrainedModel, batch_size: int, **given) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, routing) with every input preprocessed and run through every encoder, batch by batch."""
    n = len(next(iter(given.values())))
    probs, routing = [], []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            out = model.net(model.preprocess(**{k: v[start : start + batch_size] for k, v in given.items()}))
            probs.append(probabilities(out.logits.float(), model.task))
            routing.append(out.routing.float())
    return torch.cat(probs), torch.cat(routing)


def assert_same_predictions(model: PretrainedModel, batch_size: int, **given) -> None:
    out = model.predict(batch_size=batch_size, **given)
    probs, routing = old_path(model, batch_size, **given)
    torch.testing.assert_close(out.probs, probs, rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(out.routing, routing, rtol=0, atol=TOLERANCE)
    assert out.labels == [model.classes[i] for i in probs.argmax(-1)]


def mixed_images(paths: list[Path], tmp_path: Path) -> list:
    """The same images in every form predict takes, repeats crossing batch boundaries: paths, a link to one, one PIL
    object given many times, equal PIL copies, uint8 tensors, a float tensor preprocessed by `model.transform`, and
    a near miss (one pixel changed) of a repeated image."""
    link = tmp_path / "link.png"
    if not link.exists():
        link.symlink_to(paths[0])
    shared = load(paths[0])
    near_miss = load(paths[0])
    near_miss.putpixel((5, 7), (1, 2, 3))
    forms = [
        lambda p: p,
        lambda p: link if p == paths[0] else p,
        lambda p: shared if p == paths[0] else load(p),
        lambda p: torch.from_numpy(np.asarray(load(p)).copy()).permute(2, 0, 1),
    ]
    images = [forms[i % len(forms)](p) for i, p in enumerate(paths)]
    images[3] = near_miss
    return images


@pytest.mark.parametrize("prompted", ["text", "image"])
@pytest.mark.parametrize("form", ["paths", "pil", "mixed"])
def test_predict_equals_the_old_path_on_inputs_sharing_images(models, prompted, form, tmp_path):
    texts, paths = easy_vqa_pairs(26)  # 3 images, 7-11 questions each
    images = {"paths": paths, "pil": [load(p) for p in paths], "mixed": mixed_images(paths, tmp_path)}[form]
    if form == "mixed":
        images[5] = models[prompted].transform(load(paths[5]))
    for prefetch in (False, True):
        inference.PREFETCH = prefetch
        assert_same_predictions(models[prompted], 4, texts=texts, images=images)
    # One input per batch: the per-sample path.
    assert_same_predictions(models[prompted], 1, texts=texts[:9], images=images[:9])


def count_rows(monkeypatch, module_or_class, seen: list) -> None:
    forward = module_or_class.forward

    def counting(*args, **kwargs):
        out = forward(*args, **kwargs)
        seen.append(out.shape[0])
        return out

    monkeypatch.setattr(module_or_class, "forward", counting)


def test_the_conditioning_encoder_runs_once_per_distinct_image(models, tmp_path, monkeypatch):
    texts, paths = easy_vqa_pairs(27)  # 3 images
    link = tmp_path / "link.png"
    link.symlink_to(paths[0])
    copies = [load(p) for p in paths]  # one PIL object per question: equal pixels where they share an image
    copies[3].putpixel((5, 7), (1, 2, 3))  # a near miss of the first image: another input
    seen = []
    count_rows(monkeypatch, PooledImageEncoder, seen)
    for images, distinct in (
        ([link if i % 2 else p for i, p in enumerate(paths)], 3),
        (copies, 4),
        (copies * 2, 4),
    ):  # the same inputs twice in one call: still once each
        seen.clear()
        models["text"].predict(texts=texts * (len(images) // 27), images=images, batch_size=4)
        assert sum(seen) == distinct


def test_a_conditioning_text_is_encoded_once_and_a_prompted_image_preprocessed_once_per_batch(models, monkeypatch):
    model = models["image"]
    texts, paths = easy_vqa_pairs(24)
    texts = [texts[i % 3] for i in range(24)]  # 3 distinct questions
    seen, transformed = [], []
    count_rows(monkeypatch, model.net.text, seen)
    transform = model.transform
    monkeypatch.setattr(model, "transform", lambda image: transformed.append(1) or transform(image))
    model.predict(texts=texts, images=paths, batch_size=8)
    assert sum(seen) == 3
    distinct = Distinct(paths)
    assert len(transformed) == sum(len(distinct.within(s, s + 8)[0]) for s in range(0, 24, 8)) < 24


def test_features_are_kept_only_until_their_last_sample(models, monkeypatch):
    texts, paths = easy_vqa_pairs(40)  # grouped by image: at most the current and the next image's feature live
    kept_sizes = []
    features = PretrainedModel._features

    def watched(self, modality, distinct, kept, new, start, stop):
        out = features(self, modality, distinct, kept, new, start, stop)
        kept_sizes.append(len(kept))
        return out

    monkeypatch.setattr(PretrainedModel, "_features", watched)
    models["text"].predict(texts=texts, images=paths, batch_size=4)
    assert len(kept_sizes) == 10 and max(kept_sizes) <= 1 and kept_sizes[-1] == 0


# --- which inputs are the same -----------------------------------------------------------------------------------
def test_distinct_inputs_are_told_apart_by_what_preprocessing_reads(tmp_path):
    red = Image.new("RGB", (40, 30), (200, 0, 0))
    palette = Image.new("P", (40, 30), 1)
    palette.putpalette([0, 0, 0, 200, 0, 0] * 128)
    other_palette = palette.copy()
    other_palette.putpalette([0, 0, 0, 0, 200, 0] * 128)
    values = [red, red.copy(), red.convert("RGBA"), palette, palette.copy(), other_palette]
    assert distinct_rows(values)[0].tolist() == [0, 0, 1, 2, 2, 3]
    pixels = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    tensors = [pixels, pixels.clone(), pixels.float(), pixels.clone().reshape(3, 4, 16)]
    assert distinct_rows(tensors)[0].tolist() == [0, 0, 1, 2]
    red.save(tmp_path / "a.png")
    red.save(tmp_path / "copy.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")
    files = [tmp_path / "a.png", tmp_path / "copy.png", tmp_path / "link.png", tmp_path / "." / "a.png"]
    assert distinct_rows(files)[0].tolist() == [0, 1, 0, 0]  # a copy of a file is another input
    rows, first = distinct_rows(["q", "p", "q"])
    assert rows.tolist() == [0, 1, 0] and first == [0, 1]


def test_only_images_whose_samples_agree_are_hashed_in_full(monkeypatch):
    full = []
    full_key = inference._full_key
    monkeypatch.setattr(inference, "_full_key", lambda *a: full.append(1) or full_key(*a))
    unique = [Image.new("RGB", (300, 200), (i, 0, 0)) for i in range(20)]
    assert distinct_rows(unique)[0].tolist() == list(range(20)) and not full
    # A change outside the sampled bytes: the samples agree, and only the full hash tells them apart.
    near = unique[0].copy()
    near.putpixel((1, 0), (9, 9, 9))
    assert distinct_rows([unique[0], near, unique[0].copy()])[0].tolist() == [0, 1, 0] and len(full) == 3


@settings(max_examples=30)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["RGB", "L", "P"]), st.booleans()), min_size=1, max_size=12)
)
def test_equal_rows_exactly_for_equal_images(draws):
    """rows[i] == rows[j] if and only if images i and j have the same mode, size, palette and pixels."""
    images = []
    for seed, mode, touched in draws:
        img = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (6, 5, 3), dtype=np.uint8)).convert(mode)
        if touched:
            img.putpixel((4, 5), 7 if mode != "RGB" else (7, 7, 7))
        images.append(img)
    rows, first = distinct_rows(images)
    content = [(im.mode, im.getpalette(), im.tobytes()) for im in images]
    assert [rows[i] for i in first] == list(range(len(first)))
    for i in range(len(images)):
        for j in range(len(images)):
            assert (rows[i] == rows[j]) == (content[i] == content[j])


def test_distinct_inputs_first_seen_and_last_read_by_batch():
    d = Distinct(["a", "b", "a", "c", "c", "b", "d"])
    assert d.rows.tolist() == [0, 1, 0, 2, 2, 1, 3] and d.first == [0, 1, 3, 6]
    assert [list(d.first_seen(s, min(s + 2, 7))) for s in (0, 2, 4, 6)] == [[0, 1], [2], [], [3]]
    assert d.last_read_before(np.array([0, 1]), 3).tolist() == [0]  # "b" is read again at 5
    inputs, position = d.within(2, 6)
    assert inputs.tolist() == [0, 1, 2] and position.tolist() == [0, 2, 2, 1]


# --- overlap ---------------------------------------------------------------------------------------------------
def test_preprocessing_runs_ahead_in_a_thread_and_a_bad_file_keeps_its_index(models, tmp_path, monkeypatch):
    model = models["text"]
    texts, paths = easy_vqa_pairs(12)
    threads = []
    batch = PretrainedModel._batch
    monkeypatch.setattr(
        PretrainedModel, "_batch", lambda self, *a: threads.append(threading.current_thread().name) or batch(self, *a)
    )
    inference.PREFETCH = True
    model.predict(texts=texts, images=paths, batch_size=4)
    assert threads and all(name.startswith("mope-predict-preprocess") for name in threads)
    broken = tmp_path / "broken.png"
    broken.write_bytes(paths[0].read_bytes()[:60])
    for prefetch, where in ((True, "mope-predict-preprocess"), (False, "MainThread")):
        inference.PREFETCH = prefetch
        threads.clear()
        with pytest.raises(ValueError, match=r"^images\[9\]: .*broken\.png"):
            model.predict(texts=texts, images=paths[:9] + [broken] + paths[10:], batch_size=4)
        assert threads and all(name.startswith(where) for name in threads)


def test_the_thread_runs_on_a_gpu_only(monkeypatch):
    """On a CPU the forward pass's own threads keep the cores busy: a preprocessing thread only competes with them."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert not overlaps(torch.device("cpu")) and overlaps(torch.device("cuda"))


# --- audio, and `mope predict` -------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompted", ["text", "audio"])
def test_repeated_clips_predict_as_the_old_path_and_are_encoded_once(tmp_path, prompted, monkeypatch):
    cfg = load_config(
        [EXPERIMENTS / "mustard.yaml", TINY],
        [f"data.root={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}", f"model.prompted={prompted}"],
    )
    model = mope_lightning.from_pretrained(write_tiny_adapter(cfg, tmp_path / "adapter", ["no", "yes"]))
    rate = model.audio_preprocessor.sampling_rate
    clips = [np.random.default_rng(i).uniform(-0.5, 0.5, rate // (4 + i)).astype(np.float32) for i in range(3)]
    wav = write_wav(tmp_path / "clip.wav", 3, seconds=0.3, rate=rate)
    audio = [clips[0], clips[1], clips[0].copy(), wav, clips[2], clips[0], wav, torch.from_numpy(clips[1])]
    texts = ["a: yes", "b: no", "a: yes", "c: maybe", "d", "a: yes", "e", "f"]
    for prefetch in (False, True):
        inference.PREFETCH = prefetch
        assert_same_predictions(model, 3, texts=texts, audio=audio)
    # The conditioning encoder sees each distinct text once per call, and each distinct clip once per batch (a
    # copy, a tensor of the same samples and a file named twice are one): a clip's feature depends on the padding.
    seen = []
    count_rows(monkeypatch, model.net.encoder(*model.net.conditions), seen)
    model.predict(texts=texts, audio=audio, batch_size=3)
    assert sum(seen) == (2 + 3 + 2 if prompted == "text" else 6)


def test_mope_predict_encodes_each_image_of_its_rows_once(adapters, tmp_path, monkeypatch):
    texts, paths = easy_vqa_pairs(18)  # 2 images
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": t, "image": str(p)}) + "\n" for t, p in zip(texts, paths)))
    seen = []
    count_rows(monkeypatch, PooledImageEncoder, seen)
    out = tmp_path / "predictions.csv"
    assert (
        main(["predict", *args(tmp_path, f"ckpt={adapters['text']}", f"predict.input={rows}", f"predict.out={out}")])
        == 0
    )
    assert sum(seen) == len(set(paths)) == 2
    labels = [line.split(",")[1] for line in out.read_text().splitlines()[1:]]
    assert labels == mope_lightning.from_pretrained(adapters["text"]).predict(texts=texts, images=paths).labels
