"""The Python API checks its arguments at the boundary, before any model work (issue 35): a str where a list is
expected, empty inputs, lengths that differ, a bad batch_size, tensors of the wrong shape or dtype, wrong elements,
a modality the model does not read and unknown keyword arguments each raise one TypeError or ValueError naming the
argument (and the index of a bad element). Hypothesis throws random arguments at `predict`: each call ends in one
of those errors or a correct result, never another exception.

The models are tiny random-init adapters written straight from a freshly built classifier (no training needed to
check arguments): easy-VQA's text-image model and MUStARD's text-audio one."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from PIL import Image

import mope_lightning
from mope_lightning.training.trainer_config import load_config
from mope_lightning.errors import ArgumentTypeError, ArgumentValueError, MopeError

from helpers import EXPERIMENTS, TINY, tiny_config
from helpers.models import CLASSES, write_tiny_adapter

ARGUMENT = re.compile(r"^(texts|images|audio|batch_size)(\[(\d+)\])?: |^predict: ")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    return write_tiny_adapter(tiny_config(tmp), tmp / "adapter", CLASSES)


@pytest.fixture(scope="module")
def model(adapter):
    return mope_lightning.from_pretrained(adapter)


@pytest.fixture(scope="module")
def audio_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api_audio")
    cfg = load_config(
        [EXPERIMENTS / "mustard.yaml", TINY],
        [f"data.root={tmp}", f"data.cache_dir={tmp / 'cache'}", "model.prompted=audio"],
    )
    return mope_lightning.from_pretrained(write_tiny_adapter(cfg, tmp / "adapter", ["no", "yes"]))


@pytest.fixture
def no_model_work(model, audio_model, monkeypatch):
    """Any batch built or forward pass run fails the test: the checks come first."""

    def forbidden(*args, **kwargs):
        raise AssertionError("model work before the arguments were checked")

    for m in (model, audio_model):
        monkeypatch.setattr(m, "_batch", forbidden)
        monkeypatch.setattr(m.net, "forward", forbidden)


def img(size=(20, 12), color=(200, 30, 0)) -> Image.Image:
    return Image.new("RGB", size, color)


def clip(samples=800) -> np.ndarray:
    return np.random.default_rng(0).uniform(-0.5, 0.5, samples).astype(np.float32)


def assert_predictions(out, n: int, classes=CLASSES) -> None:
    assert len(out.labels) == n and set(out.labels) <= set(classes)
    assert out.probs.shape == (n, len(classes)) and torch.isfinite(out.probs).all()
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(n))


# --- a str where a list is expected ------------------------------------------------------------------------------
def test_a_str_for_texts_is_refused_naming_texts_never_split_into_characters(model, no_model_work):
    with pytest.raises(TypeError, match=r"^texts: a str \('a question'\), a single text; give a list"):
        model.predict(texts="a question", images=[img()])
    # Beside two images the str is neither split into characters nor broadcast: the same error names texts.
    with pytest.raises(TypeError, match=r"^texts: a str"):
        model.predict(texts="ab", images=[img(), img()])


def test_a_single_image_or_clip_is_refused_like_a_single_text(model, audio_model, tmp_path, no_model_work):
    """One input is a list of one, for every modality alike; a lone element never passes as one input."""
    img().save(tmp_path / "a.png")
    for single in (img(), str(tmp_path / "a.png"), tmp_path / "a.png", torch.zeros(3, 8, 8, dtype=torch.uint8)):
        with pytest.raises(TypeError, match=r"^images: .*a single image; give a list with one image per input"):
            model.predict(texts=["q"], images=single)
    for single in (clip(), torch.from_numpy(clip())):
        with pytest.raises(TypeError, match=r"^audio: .*a single clip; give a list with one clip per input"):
            audio_model.predict(texts=["q"], audio=single)


def test_one_input_is_a_list_of_one_and_a_batch_may_be_one_array(model, audio_model):
    assert_predictions(model.predict(texts=["what shape is this?"], images=[img()]), 1)
    pixels = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    as_array = model.predict(texts=("a", "b", "c"), images=pixels)  # (N, C, H, W), a tuple of texts
    torch.testing.assert_close(as_array.probs, model.predict(texts=["a", "b", "c"], images=list(pixels)).probs)
    clips = np.stack([clip(), clip()])
    assert_predictions(audio_model.predict(texts=["a", "b"], audio=clips), 2, ["no", "yes"])  # (N, samples)


@pytest.mark.parametrize(
    "texts, message",
    [
        ({"a", "b"}, r"^texts: a set; give a list with one text per input"),
        ({"a": 1}, r"^texts: a dict; give a list"),
        (3, r"^texts: an int; give a list"),
        (b"ab", r"^texts: a bytes, a single text"),
    ],
)
def test_texts_of_other_container_types_are_refused(model, no_model_work, texts, message):
    with pytest.raises(TypeError, match=message):
        model.predict(texts=texts, images=[img(), img()])


# --- empty inputs, lengths, batch_size ---------------------------------------------------------------------------
def test_empty_inputs_are_refused(model, audio_model, no_model_work):
    with pytest.raises(ValueError, match=r"^texts: empty; give at least one input"):
        model.predict(texts=[], images=[])
    with pytest.raises(ValueError, match=r"^images: empty"):
        model.predict(texts=["a"], images=[])
    with pytest.raises(ValueError, match=r"^audio: empty"):
        audio_model.predict(texts=["a"], audio=np.zeros((0, 800), np.float32))


def test_inputs_of_different_lengths_are_refused_naming_both(model, audio_model, no_model_work):
    with pytest.raises(ValueError, match=r"^predict: texts and images differ in length \(texts 1, images 2\)"):
        model.predict(texts=["a"], images=[img(), img()])
    with pytest.raises(ValueError, match=r"texts 3, audio 2"):
        audio_model.predict(texts=["a", "b", "c"], audio=[clip(), clip()])


@pytest.mark.parametrize(
    "batch_size, error",
    [
        (0, ValueError),
        (-3, ValueError),
        (True, TypeError),
        (False, TypeError),
        (2.0, TypeError),
        ("4", TypeError),
        (None, TypeError),
        (torch.tensor(2), TypeError),
    ],
)
def test_batch_size_must_be_a_positive_int(model, no_model_work, batch_size, error):
    with pytest.raises(error, match=r"^batch_size: .*give a positive int"):
        model.predict(texts=["a"], images=[img()], batch_size=batch_size)


def test_batch_size_takes_numpy_ints_and_batches_give_the_same_result(model):
    texts, images = ["a", "b", "c"], [img(color=(0, 0, 9 * i)) for i in range(3)]
    one_batch = model.predict(texts=texts, images=images)
    by_two = model.predict(texts=texts, images=images, batch_size=np.int64(2))
    torch.testing.assert_close(by_two.probs, one_batch.probs)


# --- elements ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "texts, error, message",
    [
        (["a", None], TypeError, r"^texts\[1\]: None; give a str"),
        ([7, "a"], TypeError, r"^texts\[0\]: an int; give a str"),
        (["a", " \n"], ValueError, r"^texts\[1\]: empty or only whitespace"),
        (["a", ["b"]], TypeError, r"^texts\[1\]: a list; give a str"),
    ],
)
def test_bad_texts_name_their_index(model, no_model_work, texts, error, message):
    with pytest.raises(error, match=message):
        model.predict(texts=texts, images=[img(), img()])


@pytest.mark.parametrize(
    "image, error, message",
    [
        (None, TypeError, r"^images\[1\]: None; give a PIL image, an image file path, a uint8"),
        (3, TypeError, r"^images\[1\]: an int; give a PIL image"),
        (np.zeros((8, 8, 3), np.uint8), TypeError, r"^images\[1\]: a numpy array of shape \(8, 8, 3\), dtype uint8"),
        (Image.new("RGB", (0, 5)), ValueError, r"^images\[1\]: a PIL image \(RGB, 0x5\) has no pixels"),
        (
            torch.zeros(8, 8, dtype=torch.uint8),
            ValueError,
            r"^images\[1\]: a tensor of shape \(8, 8\), dtype uint8; "
            r"give pixels as a uint8 \(C, H, W\) tensor with C = 1, 3 or 4",
        ),
        (torch.zeros(2, 8, 8, dtype=torch.uint8), ValueError, r"^images\[1\]: .*C = 1, 3 or 4 channels"),
        (torch.zeros(3, 0, 8, dtype=torch.uint8), ValueError, r"^images\[1\]: .*at least 1x1 pixels"),
        (torch.zeros(3, 8, 8, dtype=torch.int64), TypeError, r"^images\[1\]: .*dtype int64; give pixels as a uint8"),
        (torch.zeros(3, 8, 8, dtype=torch.bool), TypeError, r"^images\[1\]: .*dtype bool"),
        (
            torch.zeros(3, 8, 8),
            ValueError,
            r"^images\[1\]: .*float tensor is an image preprocessed by model.transform, "
            r"of shape \(3, 32, 32\)",
        ),
        (torch.full((3, 32, 32), float("nan")), ValueError, r"^images\[1\]: NaN or infinite values"),
    ],
)
def test_bad_images_name_their_index(model, no_model_work, image, error, message):
    with pytest.raises(error, match=message):
        model.predict(texts=["a", "b"], images=[img(), image])


def test_image_batches_of_the_wrong_rank_are_refused(model, no_model_work):
    with pytest.raises(ValueError, match=r"^images: a tensor of shape \(1, 2, 3, 8, 8\).*a batch is 4-D"):
        model.predict(texts=["a"], images=torch.zeros(1, 2, 3, 8, 8, dtype=torch.uint8))


def test_image_tensors_of_each_accepted_kind_predict(model):
    pil = img(size=(16, 16))
    pixels = torch.from_numpy(np.array(pil)).permute(2, 0, 1)  # uint8 (3, H, W)
    reference = model.predict(texts=["a"], images=[pil]).probs
    torch.testing.assert_close(model.predict(texts=["a"], images=[pixels]).probs, reference)
    torch.testing.assert_close(model.predict(texts=["a"], images=[model.transform(pil)]).probs, reference)
    torch.testing.assert_close(model.predict(texts=["a"], images=[model.transform(pil).double()]).probs, reference)
    gray, rgba = pixels[:1], torch.cat([pixels, torch.full((1, 16, 16), 255, dtype=torch.uint8)])
    assert_predictions(model.predict(texts=["a", "b"], images=[gray, rgba]), 2)


def test_image_paths_are_checked_before_model_work(model, tmp_path, no_model_work):
    img().save(tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"^images\[1\]: '.*missing.png': no such file"):
        model.predict(texts=["a", "b"], images=[tmp_path / "a.png", tmp_path / "missing.png"])
    with pytest.raises(ValueError, match=r"^images\[1\]: '.*' is not a file"):
        model.predict(texts=["a", "b"], images=[tmp_path / "a.png", str(tmp_path)])


def test_an_image_that_does_not_decode_is_named_by_its_index_in_all_the_inputs(model, tmp_path):
    img().save(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"^images\[2\]: .*broken.png: cannot read image"):
        model.predict(
            texts=["a", "b", "c"], images=[tmp_path / "a.png"] * 2 + [tmp_path / "broken.png"], batch_size=2
        )  # the third input is the first of the second batch
    with pytest.raises(ValueError, match=r"^images\[0\]: cannot read it as an RGB image"):
        model.predict(texts=["a"], images=[Image.new("La", (4, 4))])  # a mode PIL cannot convert


@pytest.mark.parametrize(
    "element, error, message",
    [
        (None, TypeError, r"^audio\[1\]: None; give an audio file path or a 1-D float array of samples at 16000 Hz"),
        ([0.1] * 800, TypeError, r"^audio\[1\]: a list; give an audio file path"),
        (np.zeros(800, np.int16), TypeError, r"^audio\[1\]: .*dtype int16; give float samples in \[-1, 1\]"),
        (torch.zeros(800, dtype=torch.complex64), TypeError, r"^audio\[1\]: .*dtype complex64; give float samples"),
        (np.zeros((2, 800), np.float32), ValueError, r"^audio\[1\]: .*give one mono clip as a 1-D array"),
        (
            np.zeros(100, np.float32),
            ValueError,
            r"^audio\[1\]: 100 samples; the audio encoder needs at least 148 "
            r"\(9.25 ms at 16000 Hz\)",
        ),
        (np.full(800, np.inf, np.float32), ValueError, r"^audio\[1\]: NaN or infinite samples"),
        (np.full(800, 1e300), ValueError, r"^audio\[1\]: NaN or infinite samples"),  # finite, but not in float32
    ],
)
def test_bad_clips_name_their_index(audio_model, no_model_work, element, error, message):
    with pytest.raises(error, match=message):
        audio_model.predict(texts=["a", "b"], audio=[clip(), element])


def test_clips_of_each_accepted_kind_predict_and_a_missing_file_is_named(audio_model, tmp_path):
    samples = clip(2000)
    reference = audio_model.predict(texts=["a"], audio=[samples]).probs
    for same in (torch.from_numpy(samples), samples.astype(np.float64), samples.astype(np.float16)):
        torch.testing.assert_close(audio_model.predict(texts=["a"], audio=[same]).probs, reference, atol=1e-3, rtol=0)
    assert_predictions(audio_model.predict(texts=["a"], audio=[clip(148)]), 1, ["no", "yes"])  # the shortest
    with pytest.raises(ValueError, match=r"^audio\[0\]: '.*nothing.wav': no such file"):
        audio_model.predict(texts=["a"], audio=[tmp_path / "nothing.wav"])


# --- modalities and keyword arguments ----------------------------------------------------------------------------
def test_a_modality_the_model_does_not_read_is_refused(model, audio_model, no_model_work):
    with pytest.raises(ValueError, match=r"^audio: this model reads text and image, not audio; leave audio out"):
        model.predict(texts=["a"], images=[img()], audio=[clip()])
    with pytest.raises(ValueError, match=r"^images: this model reads text and audio, not image"):
        audio_model.predict(texts=["a"], images=[img()], audio=[clip()])
    with pytest.raises(TypeError, match=r"^predict: this model reads text and image; pass images=\[...\]"):
        model.predict(texts=["a"])


def test_unknown_keyword_arguments_are_named(model, adapter, no_model_work):
    with pytest.raises(
        TypeError,
        match=r"^predict: unknown keyword arguments 'text' \(did you mean 'texts'\?\), "
        r"'image' \(did you mean 'images'\?\); it takes texts, images, audio",
    ):
        model.predict(text=["a"], image=[img()])
    with pytest.raises(TypeError, match=r"'colour'; it takes"):
        model.predict(texts=["a"], images=[img()], colour="red")
    with pytest.raises(TypeError, match="revison"):
        mope_lightning.from_pretrained(adapter, revison="main")


def test_argument_errors_are_also_mope_errors_for_the_cli():
    """`mope predict` reaches the API: its handler shows MopeError messages as one line with exit status 2."""
    assert issubclass(ArgumentTypeError, (TypeError, MopeError)) and issubclass(ArgumentValueError, MopeError)
    assert issubclass(ArgumentValueError, ValueError) and issubclass(ArgumentTypeError, MopeError)


# --- from_pretrained, save_pretrained, push_to_hub ---------------------------------------------------------------
def test_from_pretrained_checks_source_device_and_overrides(adapter, tmp_path):
    with pytest.raises(TypeError, match=r"^source: an int; give an adapter folder, a .ckpt file or a Hub repo id"):
        mope_lightning.from_pretrained(3)
    with pytest.raises(TypeError, match=r"^source: None"):
        mope_lightning.from_pretrained(None)
    with pytest.raises(ValueError, match=r"^source: empty"):  # Path("") would be the working directory
        mope_lightning.from_pretrained("")
    with pytest.raises(ValueError, match=r"^source: .*nothing: no such adapter folder or checkpoint file"):
        mope_lightning.from_pretrained(tmp_path / "nothing")
    with pytest.raises(ValueError, match=r"^device: 'gpu' is not a device"):
        mope_lightning.from_pretrained(adapter, device="gpu")
    with pytest.raises(TypeError, match=r"^device: a float"):
        mope_lightning.from_pretrained(adapter, device=0.5)
    missing_gpu = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ValueError, match=rf"^device: '{missing_gpu}', but this machine has"):
        mope_lightning.from_pretrained(adapter, device=missing_gpu)
    with pytest.raises(TypeError, match=r"^overrides: a str \('data.max_text_length=8'\); give a list"):
        mope_lightning.from_pretrained(adapter, overrides="data.max_text_length=8")
    with pytest.raises(TypeError, match=r"^overrides\[1\]: an int"):
        mope_lightning.from_pretrained(adapter, overrides=["data.max_text_length=8", 8])
    assert mope_lightning.from_pretrained(adapter, overrides=("data.max_text_length=8",)).max_text_length == 8


def test_save_and_push_check_their_arguments_before_writing(model, tmp_path, monkeypatch):
    with pytest.raises(TypeError, match=r"^overwrite: a str \('false'\); give True or False"):
        model.save_pretrained(tmp_path / "copy", overwrite="false")  # truthy: it would have replaced an adapter
    with pytest.raises(TypeError, match=r"^out: None; give the adapter folder"):
        model.save_pretrained(None)
    with pytest.raises(TypeError, match=r"^device: a list"):
        model.to(["cpu"])
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", None)  # any use of the Hub fails the test
    with pytest.raises(ValueError, match=r"^repo_id: 'no-org'; give a Hub repo id 'org/name'"):
        model.push_to_hub("no-org")
    with pytest.raises(TypeError, match=r"^repo_id: a PosixPath"):
        model.push_to_hub(Path("org/name"))
    with pytest.raises(TypeError, match=r"^private: a str"):
        model.push_to_hub("org/name", private="yes")
    assert list(tmp_path.iterdir()) == []


# --- property-based: random arguments to predict -----------------------------------------------------------------
# Two kinds of property test per model: random containers (a str, a set, a tensor of any rank, a scalar, lists of
# anything, any batch_size, stray keywords), and inputs of matching length whose elements are random (images of
# every PIL mode and size, tensors of any shape and dtype, numpy arrays, clips of any length, dtype and value),
# which reach the element checks and, often enough, a result.
PIL_MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "I;16", "LA", "La", "RGBa"]
DTYPES = [torch.uint8, torch.float32, torch.float16, torch.float64, torch.int64, torch.bool, torch.complex64]
SCALARS = st.none() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.booleans() | st.binary(max_size=3)
TEXTS = st.text(max_size=12)


def mostly(good, bad):
    """`good` four times in five, else `bad` (`good | bad` would flatten both into branches drawn alike)."""
    return st.integers(0, 4).flatmap(lambda k: bad if k == 4 else good)


@st.composite
def tensors(draw, shapes=st.lists(st.integers(0, 5), max_size=5), dtypes=st.sampled_from(DTYPES)):
    shape, dtype = tuple(draw(shapes)), draw(dtypes)
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
    fill = draw(mostly(st.floats(-3, 3), st.sampled_from([float("nan"), float("inf"), 1e4])))
    return torch.full(shape, fill).to(dtype)


def pil_images():
    sizes = mostly(st.tuples(st.integers(1, 40), st.integers(1, 40)), st.tuples(st.integers(0, 1), st.integers(0, 1)))
    return st.builds(Image.new, st.sampled_from(PIL_MODES), sizes)


def numpy_arrays():
    return st.builds(
        np.zeros,
        st.lists(st.integers(0, 4), max_size=4).map(tuple),
        st.sampled_from([np.uint8, np.float32, np.int16, np.float64]),
    )


PIXELS = tensors(st.tuples(st.sampled_from([1, 3, 4]), st.integers(1, 9), st.integers(1, 9)), st.just(torch.uint8))
PREPROCESSED = tensors(st.just((3, 32, 32)), st.sampled_from([torch.float32, torch.float64, torch.float16]))
IMAGE_ELEMENTS = mostly(
    pil_images() | PIXELS | PREPROCESSED,
    tensors() | tensors(st.lists(st.integers(0, 5), min_size=3, max_size=3)) | numpy_arrays() | TEXTS | SCALARS,
)
VALID_TEXTS = st.text(min_size=1, max_size=12) | st.just("what shape is this?")


@st.composite
def clips(draw):
    """A valid clip four times in five, else one with one thing wrong: its type, rank, length, dtype or values."""
    wrong = draw(mostly(st.none(), st.sampled_from(["type", "shape", "dtype", "values"])))
    if wrong == "type":
        return draw(TEXTS | SCALARS | st.lists(st.floats(-1, 1), max_size=3))
    shape = draw(st.lists(st.integers(0, 150), max_size=3) if wrong == "shape" else st.tuples(st.integers(148, 600)))
    dtype = draw(
        st.sampled_from(
            [np.int16, np.complex64, np.bool_] if wrong == "dtype" else [np.float32, np.float64, np.float16]
        )
    )
    fill = draw(st.sampled_from([np.nan, np.inf, 1e300]) if wrong == "values" else st.floats(-1, 1))
    with np.errstate(over="ignore", invalid="ignore"):
        array = np.full(shape, fill).astype(dtype)
    return torch.from_numpy(array) if draw(st.booleans()) else array


def anything_but_a_list_of(elements):
    """A sequence of random things or a container of the wrong kind, or a single element or scalar."""
    return (
        st.lists(elements | SCALARS, max_size=3)
        | st.lists(elements, max_size=3).map(tuple)
        | st.sets(st.integers(), max_size=2)
        | st.dictionaries(TEXTS, st.integers(), max_size=2)
        | elements
        | SCALARS
    )


@st.composite
def matching_inputs(draw, elements):
    """(texts, other) of one length, mostly: the texts mostly valid, the other modality's elements random."""
    n = draw(st.integers(1, 3))
    texts = draw(st.lists(mostly(VALID_TEXTS, st.just(" ") | SCALARS), min_size=n, max_size=n))
    other = draw(st.lists(elements, min_size=n, max_size=draw(mostly(st.just(n), st.just(n + 1)))))
    return texts, other


def check_outcome(call, arguments: dict, classes) -> None:
    """The property: a correct result, or one of our errors whose message names the argument at fault (with an
    index inside it where one element is at fault). Any other exception fails the test."""
    try:
        out = call(**arguments)
    except (ArgumentTypeError, ArgumentValueError) as exc:
        message = str(exc)
        named = ARGUMENT.match(message)
        assert named, message
        event(f"{type(exc).__name__} {named.group(1) or 'predict'}")  # --hypothesis-show-statistics
        if named.group(3) is not None:
            assert int(named.group(3)) < len(arguments[named.group(1)]), message
        return
    event("a result")
    texts = arguments["texts"]  # a result only for a list of texts, each with words: never a str's characters
    assert isinstance(texts, (list, tuple)) and all(isinstance(t, str) and t.strip() for t in texts), texts
    for name, batch_ndim in (("images", 4), ("audio", 2)):
        value = arguments.get(name)
        assert value is None or isinstance(value, (list, tuple)) or value.ndim == batch_ndim, (name, value)
    assert_predictions(out, len(texts), classes)


@st.composite
def containers(draw):
    """(texts, images): a list of texts half the time, else a str or something else; the images as many as the texts
    have items (a str's characters included) four times in five, so that a str split into characters would give a
    result."""
    texts = draw(
        {
            "list": st.lists(VALID_TEXTS, min_size=1, max_size=3),
            "str": st.text(min_size=1, max_size=3),
            "other": anything_but_a_list_of(TEXTS),
        }[draw(st.sampled_from(["list", "list", "str", "other"]))]
    )
    n = len(texts) if isinstance(texts, (str, list, tuple, set, dict, bytes)) and texts else draw(st.integers(1, 3))
    images = draw(
        mostly(
            st.lists(pil_images(), min_size=n, max_size=n) | PIXELS.map(lambda t: t.expand(n, -1, -1, -1)),
            anything_but_a_list_of(IMAGE_ELEMENTS) | tensors(),
        )
    )
    return texts, images


@settings(max_examples=40)
@given(
    inputs=containers(),
    batch_size=mostly(st.integers(1, 4), st.integers(-1, 0) | SCALARS),
    audio=mostly(st.none(), st.just([clip()])),
    unknown=mostly(
        st.just({}), st.dictionaries(st.sampled_from(["text", "image", "device"]), st.none(), min_size=1, max_size=1)
    ),
)
def test_predict_on_random_containers_gives_a_named_error_or_a_correct_result(
    model, inputs, batch_size, audio, unknown
):
    texts, images = inputs
    arguments = {"texts": texts, "images": images, "batch_size": batch_size, "audio": audio, **unknown}
    check_outcome(model.predict, arguments, CLASSES)


@settings(max_examples=40)
@given(inputs=matching_inputs(IMAGE_ELEMENTS), batch_size=st.integers(1, 3))
def test_predict_on_random_images_gives_a_named_error_or_a_correct_result(model, inputs, batch_size):
    texts, images = inputs
    check_outcome(model.predict, {"texts": texts, "images": images, "batch_size": batch_size}, CLASSES)


@settings(max_examples=40)
@given(
    inputs=mostly(matching_inputs(clips()), st.tuples(anything_but_a_list_of(TEXTS), anything_but_a_list_of(clips()))),
    batch_size=st.integers(1, 2),
)
def test_predict_on_random_clips_gives_a_named_error_or_a_correct_result(audio_model, inputs, batch_size):
    texts, audio = inputs
    check_outcome(audio_model.predict, {"texts": texts, "audio": audio, "batch_size": batch_size}, ["no", "yes"])
