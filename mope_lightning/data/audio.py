"""Audio clips: decoding with PyAV (FFmpeg's decoders: WAV, FLAC, MP3, OGG, and the AAC track of an MP4 clip, so a
dataset released as videos needs no extracted audio), mixing to mono, resampling to the audio encoder's rate
(FFmpeg's resampler), and what the dataset index checks and check-data reports about each clip.

Samples come back as float32 in [-1, 1]; the encoder's feature extractor normalises and pads them in the collate
function. No shell command runs: FFmpeg is the library bundled in PyAV's wheel.
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from mope_lightning.errors import DataError


def read_audio(path: Path, sampling_rate: Optional[int] = None) -> tuple[np.ndarray, int]:
    """The mono float32 samples of the file's first audio stream at `sampling_rate` (None: the file's own), and the
    file's own rate; a `DataError` naming the file when it cannot be read."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise DataError(f"{path}: no audio stream in the file; give a clip with sound")
            stream = container.streams.audio[0]
            native = stream.codec_context.sample_rate or stream.rate
            # Planar float at the file's channel layout: channels are averaged here rather than downmixed by
            # FFmpeg, whose stereo-to-mono gain (0.707 per channel) can push a loud clip past 1.
            resampler = av.AudioResampler(format="fltp", rate=sampling_rate or native)
            chunks = [
                out.to_ndarray().mean(axis=0) for frame in container.decode(stream) for out in resampler.resample(frame)
            ]
            chunks += [out.to_ndarray().mean(axis=0) for out in resampler.resample(None)]  # the resampler's tail
    except FileNotFoundError:
        raise DataError(f"{path}: audio file not found; restore it or remove the samples that use it") from None
    except DataError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise DataError(f"{path}: cannot read audio ({reason}); replace the file with a readable clip") from None
    samples = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    return samples, int(native)


def load_clip(path: Path, sampling_rate: int, max_seconds: Optional[float]) -> torch.Tensor:
    """(samples,) float32 at `sampling_rate`, cut to the first `max_seconds`."""
    samples, _ = read_audio(path, sampling_rate)
    if max_seconds:
        samples = samples[: int(max_seconds * sampling_rate)]
    return torch.from_numpy(np.ascontiguousarray(samples))


def pad_clips(preprocessor, clips: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, samples) padded, normalised input values and their (B, samples) mask of real samples: the audio
    encoder's feature extractor, with the mask requested so that each clip is normalised over its own samples."""
    out = preprocessor(
        list(clips),
        sampling_rate=preprocessor.sampling_rate,
        padding=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    return out["input_values"], out["attention_mask"]


def probe_clip(path: Path) -> tuple[int, float]:
    """(the file's sampling rate, its duration in seconds) from the container's headers, without decoding; (0, 0)
    when the headers do not say."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate or stream.rate or 0
            if stream.duration is not None and stream.time_base is not None:
                return int(rate), float(stream.duration * stream.time_base)
            return int(rate), (container.duration or 0) / 1_000_000
    except (av.FFmpegError, OSError, ValueError, IndexError):
        return 0, 0.0


def describe_clips(files: Sequence[Path], sampling_rate: Optional[int], max_seconds: Optional[float]) -> list[str]:
    """What loading does to these clips: their rates (resampled to `sampling_rate` when it differs), their durations
    and how many are cut to `max_seconds`."""
    if not files:
        return []
    probes = [probe_clip(f) for f in files]
    rates = Counter(rate for rate, _ in probes if rate)
    durations = [seconds for _, seconds in probes if seconds > 0]
    lines = ["rates: " + ", ".join(f"{rate:,} Hz: {n:,}" for rate, n in sorted(rates.items()))]
    other = sum(n for rate, n in rates.items() if sampling_rate and rate != sampling_rate)
    if other:
        lines[0] += f" ({other:,} resampled to {sampling_rate:,} Hz, the audio encoder's rate, when loaded)"
    if durations:
        lines.append(
            f"durations: {min(durations):.1f} to {max(durations):.1f} s, median {statistics.median(durations):.1f} s"
        )
    if max_seconds:
        long = sum(seconds > max_seconds for seconds in durations)
        if long:
            lines.append(
                f"{long:,} clip(s) longer than data.max_audio_seconds={max_seconds:g} are cut to their "
                f"first {max_seconds:g} s"
            )
    return lines


def spectrogram_image(path: Path, size: int = 96, sampling_rate: int = 16000):
    """A spectrogram of the clip's first seconds as a greyscale image (routing exemplars): power in dB over 25 ms
    Hann windows every 10 ms, low frequencies at the bottom, an 80 dB range below the clip's loudest bin."""
    from PIL import Image

    samples, _ = read_audio(path, sampling_rate)
    window, hop = int(0.025 * sampling_rate), int(0.010 * sampling_rate)
    samples = samples[: hop * 4 * size + window]
    if len(samples) < window:
        samples = np.pad(samples, (0, window - len(samples)))
    frames = np.lib.stride_tricks.sliding_window_view(samples, window)[::hop] * np.hanning(window)
    decibels = 10 * np.log10(np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-10).T[::-1]  # (frequency, time)
    decibels = np.maximum(decibels, decibels.max() - 80.0)  # an 80 dB range below the clip's loudest bin
    scaled = (255 * (decibels - decibels.min()) / max(float(np.ptp(decibels)), 1e-9)).astype(np.uint8)
    return Image.fromarray(scaled).convert("RGB").resize((size, size))
