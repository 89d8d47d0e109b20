"""Video clips written with PyAV for the tests: MP4 clips with an H.264 video stream and an AAC audio track (as the
released MUStARD clips carry), and clips with each problem the dataset index names. `make_mustard_video` is a
MUStARD copy whose utterances are such clips."""

from fractions import Fraction
from pathlib import Path

from helpers.datasets import make_mustard


def _frame(rng, width: int, height: int, pix_fmt: str):
    import av

    pixels = rng.integers(0, 256, (height, width, 3), dtype="uint8")
    return av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format=pix_fmt)


def _audio_stream(container, rate: int = 16000):
    """An AAC track, added before any packet is written (the container's header lists every stream)."""
    stream = container.add_stream("aac", rate=rate)
    stream.layout = "mono"
    return stream


def _add_audio(container, stream, seconds: float, seed: int) -> None:
    import av
    import numpy as np

    rate = stream.rate
    t = np.arange(max(int(seconds * rate), 1024)) / rate
    frame = av.AudioFrame.from_ndarray(
        (0.3 * np.sin(2 * np.pi * (300 + 10 * seed) * t)).astype(np.float32)[None, :], format="flt", layout="mono"
    )
    frame.sample_rate, frame.pts = rate, 0
    for packet in [*stream.encode(frame), *stream.encode(None)]:
        container.mux(packet)


def write_clip(path: Path, seed: int, frames: int = 12, size=(32, 24), rate: int = 10, audio: bool = True) -> Path:
    """An MP4 of `frames` random frames of `size` (width, height) at `rate` fps (H.264), with an AAC track."""
    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = *size, "yuv420p"
        sound = _audio_stream(container) if audio else None
        for _ in range(frames):
            for packet in video.encode(_frame(rng, *size, "yuv420p")):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if sound is not None:
            _add_audio(container, sound, frames / rate, seed)
    return path


def write_no_frames(path: Path) -> Path:
    """A Matroska clip (under any name) whose video stream holds no frame, beside an AAC track."""
    import av

    with av.open(str(path), "w", format="matroska") as container:
        video = container.add_stream("mjpeg", rate=10)
        video.width, video.height, video.pix_fmt = 32, 24, "yuvj420p"
        _add_audio(container, _audio_stream(container), 0.5, 0)
    return path


def write_rate_zero(path: Path, frames: int = 3) -> Path:
    """A Matroska clip whose frames all carry one timestamp and whose stream states no rate: a frame rate of 0."""
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="matroska") as container:
        video = container.add_stream("mjpeg")
        video.width, video.height, video.pix_fmt = 32, 24, "yuvj420p"
        video.time_base = video.codec_context.time_base = Fraction(1, 1000)
        video.codec_context.framerate = Fraction(0, 1)
        for i in range(frames):
            frame = _frame(rng, 32, 24, "yuvj420p")
            frame.pts, frame.time_base = i, Fraction(1, 1000)
            for packet in video.encode(frame):
                packet.pts = packet.dts = 0
                packet.duration = 0
                container.mux(packet)
    return path


def write_varying_size(path: Path) -> Path:
    """A Matroska clip of MJPEG frames, the first three 32x24 and the next three 48x40, in one video stream."""
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="matroska") as container:
        video = container.add_stream("mjpeg", rate=10)
        video.width, video.height, video.pix_fmt = 32, 24, "yuvj420p"
        larger = av.CodecContext.create("mjpeg", "w")
        larger.width, larger.height, larger.pix_fmt, larger.time_base = 48, 40, "yuvj420p", Fraction(1, 10)
        for i in range(6):
            codec = video if i < 3 else larger
            frame = _frame(rng, codec.width, codec.height, "yuvj420p")
            frame.pts, frame.time_base = i, Fraction(1, 10)
            for packet in codec.encode(frame):
                packet.stream, packet.pts, packet.dts, packet.time_base = video, i, i, Fraction(1, 10)
                container.mux(packet)
    return path


def make_mustard_video(root: Path, count: int = 30) -> Path:
    """A MUStARD copy (make_mustard's annotations and folds) whose utterances_final/<id>.mp4 are video clips with
    sound: 4 to 16 frames of 32x24 at 10 fps, so that some are shorter than the default 8 sampled frames."""
    make_mustard(root, count)
    clips = root / "utterances_final"
    for old in clips.iterdir():
        old.unlink()
    for n in range(count):
        write_clip(clips / f"{n // 10 + 1}_{n}.mp4", n, frames=4 + 3 * (n % 5))
    return root
