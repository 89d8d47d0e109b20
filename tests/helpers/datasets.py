"""Small copies of each dataset's native layout, generated on the fly (images are solid colours with a stripe)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image

FOOD_CLASSES = ("apple_pie", "bibimbap", "waffles")
MMIMDB_GENRES = ("Drama", "Comedy", "Horror", "News")  # News is outside the 23-genre label set
SNLI_LABELS = ("entailment", "neutral", "contradiction")


def write_image(path: Path, seed: int, size: int = 48, fmt: str = "JPEG") -> Path:
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    for x in range(size // 4, size // 2):
        for y in range(size):
            img.putpixel((x, y), (255 - x * 3 % 255, y * 5 % 255, 128))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)
    return path


def make_food101(root: Path, train_per_class: int = 6, test_per_class: int = 2) -> Path:
    """images/{train,test}/<class>/<class>_<n>.jpg, texts_txt/<class>/<class>_<n>.txt, texts/{split}_titles.csv."""
    n = 0
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        rows = []
        for label in FOOD_CLASSES:
            for _ in range(count):
                name = f"{label}_{n}"
                write_image(root / "images" / split / label / f"{name}.jpg", n)
                text = root / "texts_txt" / label / f"{name}.txt"
                text.parent.mkdir(parents=True, exist_ok=True)
                text.write_text(f"Best {label.replace('_', ' ')} recipe #{n}: Easy, quick & DELICIOUS!")
                rows.append(f"{name}.jpg,{label.replace('_', ' ')} page {n},{label}")
                n += 1
        (root / "texts").mkdir(parents=True, exist_ok=True)
        (root / "texts" / f"{split}_titles.csv").write_text("\n".join(rows) + "\n")
    return root


def make_mmimdb(root: Path, per_split: dict | None = None) -> Path:
    """split.json and dataset/<id>.json + <id>.jpeg; every movie has Drama or Comedy, some also Horror or News."""
    per_split = per_split or {"train": 8, "dev": 3, "test": 3}
    split_ids, n = {}, 0
    for split, count in per_split.items():
        split_ids[split] = []
        for _ in range(count):
            movie = f"{n:07d}"
            genres = [MMIMDB_GENRES[n % 2]] + ([MMIMDB_GENRES[2 + n % 2]] if n % 3 == 0 else [])
            meta = {
                "title": f"Movie {n}",
                "genres": genres,
                "year": [1994, "2003", None, "n/a"][n % 4],
                "plot": [f"A short plot {n}.", f"A much longer plot of movie number {n}, with more words."],
            }
            (root / "dataset").mkdir(parents=True, exist_ok=True)
            (root / "dataset" / f"{movie}.json").write_text(json.dumps(meta))
            write_image(root / "dataset" / f"{movie}.jpeg", n)
            split_ids[split].append(movie)
            n += 1
    (root / "split.json").write_text(json.dumps(split_ids))
    return root


def make_snli_ve(root: Path, per_split: dict | None = None, image_dir: str = "Flickr30K/flickr30k_images") -> Path:
    """snli_ve_{train,dev,test}.jsonl (both spellings of the image id) and the Flickr30k images they name."""
    per_split = per_split or {"train": 9, "dev": 3, "test": 3}
    n = 0
    for split, count in per_split.items():
        lines = []
        for _ in range(count):
            image_id = str(1000 + n // 3)  # three hypotheses per image, as in SNLI-VE
            record = {
                "gold_label": SNLI_LABELS[n % 3],
                "sentence1": "A caption.",
                "sentence2": f"Hypothesis {n}.",
                "pairID": f"{split}-{n}",
            }
            if n % 2:
                record["Flikr30kID"] = f"{image_id}.jpg"  # the older generator's misspelt field, with .jpg
            else:
                record["Flickr30K_ID"] = image_id
            lines.append(json.dumps(record))
            write_image(root / image_dir / f"{image_id}.jpg", int(image_id))
            n += 1
        (root / f"snli_ve_{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def make_mmbt(root: Path, multilabel: bool = False) -> Path:
    """MMBT/MoPE's format: {train,dev,test}.jsonl with text/label/img, and labels.txt."""
    labels = ["cat", "dog", "fish"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.txt").write_text("\n".join(labels) + "\n")
    n = 0
    for split, count in (("train", 9), ("dev", 3), ("test", 3)):
        lines = []
        for _ in range(count):
            label = [labels[n % 3], labels[(n + 1) % 3]] if multilabel else labels[n % 3]
            write_image(root / "images" / f"{n}.jpg", n)
            lines.append(
                json.dumps({"id": f"s{n}", "text": f"a photo of thing {n}", "label": label, "img": f"images/{n}.jpg"})
            )
            n += 1
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def make_hateful_memes(root: Path, per_split: dict | None = None) -> Path:
    """img/<id>.png and {train,dev_seen,test_seen}.jsonl lines {id, img, label, text}; labels alternate 0, 1."""
    per_split = per_split or {"train": 12, "dev_seen": 4, "test_seen": 4}
    n = 0
    for split, count in per_split.items():
        lines = []
        for _ in range(count):
            meme = f"{n + 10000:05d}"
            write_image(root / "img" / f"{meme}.png", n, fmt="PNG")
            lines.append(
                json.dumps(
                    {
                        "id": meme,
                        "img": f"img/{meme}.png",
                        "label": n % 2,
                        "text": f"caption number {n} {'love' if n % 2 == 0 else 'hate'}",
                    }
                )
            )
            n += 1
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


MUSTARD_SHOWS = ("FRIENDS", "BBT", "GOLDENGIRLS")


def write_wav(path: Path, seed: int, seconds: float = 0.5, rate: int = 16000, channels: int = 1) -> Path:
    """A PCM WAV of a tone and noise (16-bit), written with the standard library."""
    import wave

    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    signal = 0.3 * np.sin(2 * np.pi * (200 + 40 * (seed % 7)) * t) + 0.05 * rng.standard_normal(len(t))
    frames = np.repeat((signal * 32767).astype("<i2")[:, None], channels, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames.tobytes())
    return path


def write_mp4_audio(path: Path, seed: int, seconds: float = 0.5, rate: int = 22050) -> Path:
    """An MP4 with one AAC audio track (as the released MUStARD clips carry), encoded with PyAV."""
    import av
    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * (300 + 10 * seed) * t)).astype(np.float32)[None, :]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


def make_mustard(root: Path, count: int = 30) -> Path:
    """sarcasm_data.json, utterances_final/<id>.wav (one .mp4 clip, one 44.1 kHz stereo WAV) and split_indices.p
    (5 folds of numpy index arrays, pickled as the release ships them)."""
    import pickle

    import numpy as np

    data = {}
    for n in range(count):
        clip_id = f"{n // 10 + 1}_{n}"
        data[clip_id] = {
            "utterance": f"Oh great, another line number {n}.",
            "speaker": ["SHELDON", "CHANDLER"][n % 2],
            "context": [f"context {n} a", f"context {n} b"],
            "context_speakers": ["LEONARD", "PENNY"],
            "show": MUSTARD_SHOWS[n % 3],
            "sarcasm": n % 2 == 1,
        }
        clips = root / "utterances_final"
        if n == 3:
            write_mp4_audio(clips / f"{clip_id}.mp4", n)
        elif n == 4:
            write_wav(clips / f"{clip_id}.wav", n, rate=44100, channels=2)
        else:
            write_wav(clips / f"{clip_id}.wav", n, seconds=0.3 + 0.05 * (n % 5))
    (root / "sarcasm_data.json").write_text(json.dumps(data, indent=2))
    order = np.random.default_rng(0).permutation(count)
    folds = [(np.sort(np.setdiff1d(order, part)), np.sort(part)) for part in np.array_split(order, 5)]
    (root / "split_indices.p").write_bytes(pickle.dumps(folds))
    return root
