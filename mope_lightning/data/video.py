"""Video clips: decoding with PyAV (FFmpeg's decoders, the library bundled in PyAV's wheel; no shell command runs),
`data.video_frames` frames sampled uniformly over each clip, and what the dataset index checks and check-data
reports about each clip.

A clip's frames come back as RGB PIL images; the loader passes each through the image encoder's own preprocessing,
so a clip becomes a (T, 3, H, W) float tensor and a batch (B, T, 3, H, W) under the key `video`. The index decodes
every clip once (`probe_video`) and keeps its frame count, frame rate and duration; a clip with fewer frames than
requested is sampled with repeats (counted in a note, not a problem).
"""

from __future__ import annotations

import contextlib
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from mope_lightning.errors import DataError


@dataclass(frozen=True)
class VideoProbe:
    """What the index records of a clip that decodes: its frames, their rate (per second) and its duration."""

    frames: int
    rate: float
    seconds: float

    def to_list(self) -> list:
        return [self.frames, self.rate, self.seconds]


def frame_indices(frame_count: int, count: int) -> list[int]:
    """`count` frame numbers spread uniformly over a clip of `frame_count` frames: the middle frame of each of
    `count` equal parts, non-decreasing and within range; a clip shorter than `count` repeats frames."""
    if frame_count < 1 or count < 1:
        raise ValueError(f"frame_indices: need at least one frame and one sample, got {frame_count} and {count}")
    return [min(frame_count - 1, int((i + 0.5) * frame_count / count)) for i in range(count)]


def _open_video(path: Path):
    """The opened container and its first video stream; a `DataError` naming the file when it has none."""
    import av

    container = av.open(str(path))
    if not container.streams.video:
        container.close()
        raise DataError(f"{path}: no video stream in the file; give a clip with pictures")
    return container, container.streams.video[0]


@contextlib.contextmanager
def _decoding(path: Path):
    """Turns what PyAV raises for a missing or unreadable file into a `DataError` naming the file."""
    import av

    try:
        yield
    except FileNotFoundError:
        raise DataError(f"{path}: video file not found; restore it or remove the samples that use it") from None
    except (av.FFmpegError, OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise DataError(f"{path}: cannot read video ({reason}); replace the file with a readable clip") from None


def _no_frames(path: Path) -> DataError:
    return DataError(f"{path}: empty clip: no video frames; replace it with a clip that has pictures")


def probe_video(path: Path) -> VideoProbe:
    """Decode every frame of the clip's first video stream: its frame count, rate and duration, or a `DataError`
    naming the file and what is wrong (no video stream, zero frames, a frame rate of 0, a frame size that varies,
    an unreadable file)."""
    with _decoding(path):
        container, stream = _open_video(path)
        with container:
            rate = float(stream.average_rate or 0)
            first, frames = None, 0
            for frame in container.decode(stream):
                size = (frame.width, frame.height)
                first = first or size
                if size != first:
                    raise DataError(
                        f"{path}: the frame size varies ({first[0]}x{first[1]} at frame 0, {size[0]}x{size[1]} at "
                        f"frame {frames}); re-encode the clip at one size"
                    )
                frames += 1
            seconds = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
    if not frames:
        raise _no_frames(path)
    if rate <= 0:
        raise DataError(f"{path}: the frame rate is 0 (the stream's headers give none); re-encode it at a set rate")
    return VideoProbe(frames, rate, seconds or frames / rate)


def read_frames(path: Path, count: int):
    """`count` RGB PIL images sampled uniformly over the clip (`frame_indices`), decoded in one pass: the frame count
    comes from the stream's header, or from a first decoding pass when the header does not say (or says more
    frames than the clip holds)."""
    with _decoding(path):
        container, stream = _open_video(path)
        with container:
            total = stream.frames
        if total <= 0:
            total = _count_frames(path)
        images = _pick_frames(path, frame_indices(total, count)) if total else []
        if total and len(images) < count:  # the header promised frames that do not decode: count them
            total = _count_frames(path)
            images = _pick_frames(path, frame_indices(total, count)) if total else []
    if not images:
        raise _no_frames(path)
    return images


def _count_frames(path: Path) -> int:
    container, stream = _open_video(path)
    with container:
        return sum(1 for _ in container.decode(stream))


def _pick_frames(path: Path, wanted: Sequence[int]) -> list:
    """The frames numbered `wanted` (non-decreasing, repeats allowed) as RGB images; fewer when the clip ends early."""
    repeats = Counter(wanted)
    images = []
    container, stream = _open_video(path)
    with container:
        for number, frame in enumerate(container.decode(stream)):
            if number in repeats:
                image = frame.to_image()  # RGB, converted only for the frames kept
                images += [image] * repeats[number]
            if number >= wanted[-1]:
                break
    return images


class LoadVideo:
    """path -> (frames, 3, H, W): `frames` frames sampled uniformly, each through `transform` (the image encoder's
    preprocessing); picklable, for DataLoader workers of any start method."""

    def __init__(self, transform: Callable, frames: int):
        self.transform, self.frames = transform, frames

    def __call__(self, path: Path) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in read_frames(path, self.frames)])


def frame_strip(path: Path, size: int = 96, frames: int = 4):
    """`frames` frames sampled uniformly over the clip, side by side in a `size` x `size` RGB image, top-aligned
    on black (routing exemplars)."""
    from PIL import Image

    strip = Image.new("RGB", (size, size))
    width = size // frames
    for k, image in enumerate(read_frames(path, frames)):
        image = image.copy()
        image.thumbnail((width, size))
        strip.paste(image, (k * width, 0))
    return strip


def describe_videos(probes: Sequence[Sequence[float]], frames_wanted: int) -> list[str]:
    """What loading does to these clips (`probes`: the index's [frames, rate, seconds] of each): their frame
    counts, rates and durations, and how many have fewer frames than `frames_wanted` (sampled with repeats)."""
    probes = [p for p in probes if p]
    if not probes:
        return []
    counts = [int(frames) for frames, _, _ in probes]
    rates = Counter(round(rate, 2) for _, rate, _ in probes)
    seconds = [s for _, _, s in probes]
    lines = [
        f"frames: {min(counts):,} to {max(counts):,} per clip, median {statistics.median(counts):g}; "
        f"{frames_wanted} sampled uniformly from each (data.video_frames)",
        "rates: " + ", ".join(f"{rate:g} fps: {n:,}" for rate, n in sorted(rates.items())),
        f"durations: {min(seconds):.1f} to {max(seconds):.1f} s, median {statistics.median(seconds):.1f} s",
    ]
    short = sum(n < frames_wanted for n in counts)
    if short:
        lines.append(
            f"{short:,} clip(s) have fewer than data.video_frames={frames_wanted} frames: their frames are sampled "
            "with repeats"
        )
    return lines
