"""The Python API's argument checks, made at its boundary before any model work, as PyTorch and scikit-learn check
theirs: a bad argument raises one `ArgumentTypeError` (a TypeError) or `ArgumentValueError` (a ValueError) whose
message names the argument, the index of a bad element, and what is expected.

`predict` takes one sequence per modality, one element per input, all of one length. A lone text, image or clip is
refused rather than taken as one input, for every modality alike: a str is itself a sequence (of characters), so
accepting `texts="q"` would make `texts="q", images=[a, b]` either a silent broadcast or an error that depends on
the other argument. One input is a list of one. A whole batch may also be one array: images as a (N, C, H, W)
tensor, audio as a (N, samples) array or tensor.
"""

from __future__ import annotations

import difflib
import numbers
import os
import stat
from collections.abc import Iterable, Mapping, Set
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from mope_lightning.errors import ArgumentTypeError, ArgumentValueError

ARGUMENT = {"text": "texts", "image": "images", "audio": "audio", "video": "video", "depth": "depth"}  # keywords
ELEMENT = {"text": "text", "image": "image", "audio": "clip", "video": "clip", "depth": "depth map"}  # one element
BATCH_NDIM = {"text": 1, "image": 4, "audio": 2, "video": 5, "depth": 3}  # the dims of one array holding a batch
IMAGE_FORMS = (
    "a PIL image, an image file path, a uint8 (C, H, W) tensor with C = 1, 3 or 4, or a float tensor "
    "preprocessed by model.transform"
)


def describe(value: Any) -> str:
    """What a value is, for a message: its type, with the dtype and shape of an array, the start of a str."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        kind = "tensor" if isinstance(value, torch.Tensor) else "numpy array"
        return f"a {kind} of shape {tuple(value.shape)}, dtype {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, Image.Image):
        return f"a PIL image ({value.mode}, {value.width}x{value.height})"
    if isinstance(value, str):
        return f"a str ({value if len(value) <= 40 else value[:37] + '...'!r})"
    if value is None:
        return "None"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiouAEIOU' else 'a'} {name}"


def reject_unknown(function: str, unknown: dict, known: Sequence[str]) -> None:
    """A TypeError naming each unknown keyword argument, with the known one it is closest to (`text` -> `texts`)."""
    if not unknown:
        return
    shown = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        shown.append(repr(name) + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ArgumentTypeError(
        f"{function}: unknown keyword argument{'s' * (len(shown) > 1)} {', '.join(shown)}; it takes {', '.join(known)}"
    )


def check_batch_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"batch_size: {describe(value)}; give a positive int, the inputs per forward pass")
    if value < 1:
        raise ArgumentValueError(f"batch_size: {value}; give a positive int, the inputs per forward pass")
    return int(value)


def check_device(name: str, value: Any) -> torch.device:
    """A device torch can move the model to: a `torch.device`, a str such as "cpu" or "cuda:0", or a GPU index."""
    if isinstance(value, bool) or not isinstance(value, (str, torch.device, int)):
        raise ArgumentTypeError(f"{name}: {describe(value)}; give a device such as 'cpu' or 'cuda:0'")
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError) as exc:
        raise ArgumentValueError(
            f"{name}: {value!r} is not a device ({exc}); give one such as 'cpu' or 'cuda:0'"
        ) from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ArgumentValueError(
            f"{name}: {value!r}, but this machine has {torch.cuda.device_count()} CUDA "
            "device(s); give 'cpu' or an existing GPU"
        )
    return device


def check_path(name: str, value: Any, what: str) -> None:
    """A str or os.PathLike, not empty: the type check of a path argument (whether it exists is the caller's)."""
    if not isinstance(value, (str, os.PathLike)):
        raise ArgumentTypeError(f"{name}: {describe(value)}; give {what} as a str or pathlib.Path")
    if not str(value):
        raise ArgumentValueError(f"{name}: empty; give {what}")


def check_repo_id(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name}: {describe(value)}; give a Hub repo id 'org/name' as a str")
    if value.count("/") != 1 or not all(value.split("/")):
        raise ArgumentValueError(f"{name}: {value!r}; give a Hub repo id 'org/name'")
    return value


def check_strings(name: str, value: Any, what: str) -> list[str]:
    """A list of str (never a lone str, which would be read as its characters)."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ArgumentTypeError(f"{name}: {describe(value)}; give a list of {what}, e.g. {name}=['...']")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ArgumentTypeError(f"{name}[{i}]: {describe(item)}; give a str, {what[:-1]}")
    return list(value)


def check_flag(name: str, value: Any) -> bool:
    """True or False only: a str such as "false" is truthy, and would turn the flag on."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name}: {describe(value)}; give True or False")
    return value


# --- predict's inputs --------------------------------------------------------------------------------------------
def as_list(modality: str, value: Any) -> list:
    """The elements of one modality's argument: a sequence of them, or an array whose first dimension counts them."""
    name, one, batch_ndim = ARGUMENT[modality], ELEMENT[modality], BATCH_NDIM[modality]
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if value.ndim == batch_ndim:
            return list(value)
        if value.ndim != batch_ndim - 1:  # one dimension fewer is a single element: refused below
            raise ArgumentValueError(
                f"{name}: {describe(value)}; as one array, a batch is {batch_ndim}-D with "
                f"the inputs first; or give a list with one {one} per input"
            )
    if isinstance(value, (str, bytes, os.PathLike, Image.Image, torch.Tensor, np.ndarray)):
        raise ArgumentTypeError(
            f"{name}: {describe(value)}, a single {one}; give a list with one {one} per input "
            f"(for one input, a list of one: {name}=[...])"
        )
    if isinstance(value, (Mapping, Set)) or not isinstance(value, Iterable):
        raise ArgumentTypeError(f"{name}: {describe(value)}; give a list with one {one} per input")
    return list(value)


def check_inputs(
    reads: Sequence[str], given: dict[str, Any], element_checks: dict[str, Callable[[int, Any], Any]]
) -> dict[str, list]:
    """{modality: its checked elements} for each modality the model reads. `given` holds the argument of every
    modality (None where not passed); `element_checks[modality](i, element)` checks one element and returns it in
    the form preprocessing takes."""
    for modality, value in given.items():
        if value is not None and modality not in reads:
            raise ArgumentValueError(
                f"{ARGUMENT[modality]}: this model reads {' and '.join(reads)}, not {modality}; "
                f"leave {ARGUMENT[modality]} out"
            )
    missing = [ARGUMENT[m] for m in reads if given[m] is None]
    if missing:
        raise ArgumentTypeError(
            f"predict: this model reads {' and '.join(reads)}; pass {' and '.join(f'{name}=[...]' for name in missing)}"
        )
    inputs = {m: as_list(m, given[m]) for m in reads}
    for modality, values in inputs.items():
        if not values:
            raise ArgumentValueError(f"{ARGUMENT[modality]}: empty; give at least one input")
    lengths = {ARGUMENT[m]: len(values) for m, values in inputs.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name} {n}" for name, n in lengths.items())
        raise ArgumentValueError(
            f"predict: {' and '.join(lengths)} differ in length ({shown}); give one of each per input"
        )
    return {m: [element_checks[m](i, value) for i, value in enumerate(values)] for m, values in inputs.items()}


def check_text(i: int, text: Any) -> str:
    if not isinstance(text, str):
        raise ArgumentTypeError(f"texts[{i}]: {describe(text)}; give a str, the text of each input")
    if not text.strip():
        raise ArgumentValueError(f"texts[{i}]: empty or only whitespace; give the text of each input")
    return text


def check_file(name: str, value: str | os.PathLike, what: str) -> Path:
    path = Path(os.path.expanduser(value))
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        raise ArgumentValueError(f"{name}: {str(path)!r}: no such file; give the path of {what} file") from None
    if not stat.S_ISREG(mode):
        raise ArgumentValueError(f"{name}: {str(path)!r} is not a file (a folder?); give the path of {what} file")
    return path


def check_image(i: int, image: Any, preprocessed_shape: tuple[int, ...]) -> Path | Image.Image | torch.Tensor:
    """An image file path, a PIL image, or a tensor: uint8 pixels (C, H, W), or floats of the shape
    `model.transform` gives (`preprocessed_shape`)."""
    name = f"images[{i}]"
    if isinstance(image, (str, os.PathLike)):
        return check_file(name, image, "an image")
    if isinstance(image, Image.Image):
        if not image.width or not image.height:
            raise ArgumentValueError(f"{name}: {describe(image)} has no pixels; give an image of at least 1x1")
        return image
    if not isinstance(image, torch.Tensor):
        raise ArgumentTypeError(f"{name}: {describe(image)}; give {IMAGE_FORMS}")
    if image.is_floating_point():
        if tuple(image.shape) != preprocessed_shape:
            raise ArgumentValueError(
                f"{name}: {describe(image)}; a float tensor is an image preprocessed by "
                f"model.transform, of shape {preprocessed_shape}; give raw pixels as a uint8 "
                "(C, H, W) tensor"
            )
        if not torch.isfinite(image).all():
            raise ArgumentValueError(f"{name}: NaN or infinite values; give finite pixel values")
        return image
    if image.dtype != torch.uint8:
        raise ArgumentTypeError(
            f"{name}: {describe(image)}; give pixels as a uint8 (C, H, W) tensor, or a float "
            "tensor preprocessed by model.transform"
        )
    if image.ndim != 3 or image.shape[0] not in (1, 3, 4) or 0 in image.shape:
        raise ArgumentValueError(
            f"{name}: {describe(image)}; give pixels as a uint8 (C, H, W) tensor with C = 1, "
            "3 or 4 channels and at least 1x1 pixels"
        )
    return image


def check_depth(i: int, depth: Any) -> Path | np.ndarray:
    """A depth map: a 16-bit PNG path (millimetres, as NYUDv2 ships them), or a 2-D array or tensor of depths in
    millimetres (returned as float32), finite and non-negative."""
    name = f"depth[{i}]"
    if isinstance(depth, (str, os.PathLike)):
        return check_file(name, depth, "a depth map")
    if not isinstance(depth, (torch.Tensor, np.ndarray)):
        raise ArgumentTypeError(f"{name}: {describe(depth)}; give a 16-bit depth PNG path or a 2-D array in mm")
    values = depth.detach().cpu().numpy() if isinstance(depth, torch.Tensor) else np.asarray(depth)
    if values.ndim != 2 or 0 in values.shape or not np.issubdtype(values.dtype, np.number):
        raise ArgumentValueError(f"{name}: {describe(depth)}; give one (H, W) array of depths in millimetres")
    values = values.astype(np.float32)
    if not np.isfinite(values).all() or (values < 0).any():
        raise ArgumentValueError(f"{name}: NaN, infinite or negative depths; give depths in millimetres (0: unknown)")
    return values


def check_video(i: int, clip: Any) -> Path:
    """A video file path (its frames are sampled and preprocessed as in training)."""
    if not isinstance(clip, (str, os.PathLike)):
        raise ArgumentTypeError(f"video[{i}]: {describe(clip)}; give a video file path")
    return check_file(f"video[{i}]", clip, "a video")


def check_clip(i: int, clip: Any, shortest: int, rate: int) -> Path | np.ndarray:
    """An audio file path, or mono float samples at the encoder's `rate` (returned as float32), of at least
    `shortest` samples."""
    name = f"audio[{i}]"
    if isinstance(clip, (str, os.PathLike)):
        return check_file(name, clip, "an audio")
    if not isinstance(clip, (torch.Tensor, np.ndarray)):
        raise ArgumentTypeError(
            f"{name}: {describe(clip)}; give an audio file path or a 1-D float array of samples at {rate} Hz"
        )
    floating = clip.is_floating_point() if isinstance(clip, torch.Tensor) else np.issubdtype(clip.dtype, np.floating)
    if not floating:
        raise ArgumentTypeError(
            f"{name}: {describe(clip)}; give float samples in [-1, 1] (16-bit PCM: divide by 32768)"
        )
    if clip.ndim != 1:
        raise ArgumentValueError(f"{name}: {describe(clip)}; give one mono clip as a 1-D array of samples at {rate} Hz")
    if isinstance(clip, torch.Tensor):
        samples = clip.detach().cpu().float().numpy()
    else:
        with np.errstate(over="ignore"):  # a float64 sample beyond float32's range: found by check_samples
            samples = clip.astype(np.float32, copy=False)
    check_samples(name, samples, shortest, rate)
    return samples


def check_samples(name: str, samples: np.ndarray, shortest: int, rate: int, source: Optional[Path] = None) -> None:
    """Enough samples for the encoder to make one frame, all finite (checked in float32, the model's precision)."""
    where = f"{name}: {source}:" if source else f"{name}:"
    if len(samples) < shortest:
        raise ArgumentValueError(
            f"{where} {len(samples)} samples; the audio encoder needs at least {shortest} "
            f"({1000 * shortest / rate:g} ms at {rate} Hz)"
        )
    if not np.isfinite(samples).all():
        raise ArgumentValueError(f"{where} NaN or infinite samples; give finite samples in [-1, 1]")
