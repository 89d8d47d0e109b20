"""MUStARD (Castro et al., ACL 2019): is an utterance from a TV show sarcastic? Text, audio and video of each
utterance.

Layout of the release (soujanyaporia/MUStARD; see data/README.md):

    sarcasm_data.json                  {"<id>": {"utterance", "speaker", "context", "context_speakers", "show",
                                                 "sarcasm"}, ...}: 690 utterances, 345 sarcastic
    split_indices.p                    5 (train, test) index arrays into the JSON's order: the speaker-dependent folds
    utterances_final/<id>.mp4          the released clips (mmsd_raw_data.zip); or <id>.wav (.flac, ...) extracted

The audio of an utterance is read from `<audio_folder>/<id>.<ext>` for the first extension that exists: a WAV,
FLAC or MP3 file, or the AAC track of the released MP4 clip itself (PyAV, data/audio.py), so the raw release needs no
preprocessing. With `data.media: video` the media is the video stream of `<video_folder>/<id>.mp4` instead (the
released clip; data/video.py samples `data.video_frames` frames of it), and with `data.media: [audio, video]` each
sample carries both (the same released clip read once for each stream, by default; the first listed is the primary
media, data/samples.py). Splits (`data.split`): `speaker_dependent` is fold `data.fold` of the shipped 5-fold
cross-validation (the paper's main setting, reported as the mean over the folds); `speaker_independent` holds out every FRIENDS
utterance as the test split (the paper's code, and PromptFuse's). `val` is a seeded hold-out of the training part,
stratified by label (`data.val_fraction`): the MoPE reference validates on its test split instead.

The text (`data.text`): `speaker` gives "SPEAKER: utterance" (the MoPE reference), `utterance` the utterance alone,
`context` the context lines with their speakers before it. Metrics: accuracy, AUROC and weighted F1 (the paper's
F-score is the weighted average of the two classes'). Each sample's speaker and show are attributes for routing
reports (which experts sarcasm from one speaker or one show is sent to).
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from mope_lightning.data.options import DataConfig
from mope_lightning.data.base import MultimodalDataModule
from mope_lightning.data.samples import Problem, Scan, SplitBuilder, stratified_holdout
from mope_lightning.data.text_files import read_json, read_text
from mope_lightning.errors import DataError

MUSTARD_CLASSES = ["not_sarcastic", "sarcastic"]
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".mp4")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi")
MEDIA = ("audio", "video")
SPLITS = ("speaker_dependent", "speaker_independent")
HELD_OUT_SHOW = "FRIENDS"  # the speaker-independent test split
TEXTS = ("speaker", "utterance", "context")


@dataclass
class MustardConfig(DataConfig):
    name: str = "mustard"
    root: Optional[str] = "data/mustard"
    split: str = "speaker_dependent"  # speaker_dependent (data.fold of split_indices.p) | speaker_independent
    fold: int = 0  # speaker_dependent: which of the 5 folds is the test split
    folds_file: str = "split_indices.p"  # the release's folds (a pickle of index arrays, read without running code)
    # audio | video | [audio, video]: which streams of each utterance the samples carry besides the text
    media: Any = "audio"
    audio_folder: str = "utterances_final"
    video_folder: str = "utterances_final"  # data.media with video: the release's clips, <id>.mp4
    text: str = "speaker"  # speaker ("SPEAKER: utterance") | utterance | context (context lines, then the utterance)
    val_fraction: float = 0.1
    split_seed: int = 0
    max_audio_seconds: Optional[float] = 20.0  # longer clips are cut to their first seconds (counted in the log)


class _IndexArrays(pickle.Unpickler):
    """Unpickles lists and tuples of numpy integer arrays and nothing else: a pickle names the functions it calls
    to rebuild its objects, and only numpy's array reconstruction is let through, so the file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which an index file never needs")
        return super().find_class(module, name)


def read_folds(path: Path) -> list[tuple[list[int], list[int]]]:
    """The (train, test) row indices of each fold from the release's pickle (or a JSON list of [train, test])."""
    if not path.is_file():
        raise DataError(
            f"{path}: folds file missing; data.split=speaker_dependent needs the release's "
            "split_indices.p (or set data.split=speaker_independent)"
        )
    try:
        if path.suffix == ".json":
            folds = json.loads(read_text(path))
        else:
            folds = _IndexArrays(io.BytesIO(path.read_bytes()), encoding="latin1").load()
        folds = [([int(i) for i in train], [int(i) for i in test]) for train, test in folds]
    except (pickle.UnpicklingError, json.JSONDecodeError, EOFError, TypeError, ValueError) as exc:
        raise DataError(
            f"{path}: not a list of (train, test) index arrays ({exc}); restore the release's file"
        ) from None
    return folds


def media_setting(value) -> tuple[str, ...]:
    """The media `data.media` names (a name, or a list of different names), in its order; a `DataError` naming the
    setting when it names another or one twice."""
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, Sequence) else [value]
    for name in names:
        if name not in MEDIA:
            raise DataError(f"data.media: '{name}' is not one of {', '.join(MEDIA)}; e.g. data.media=[audio,video]")
    if not names or len(set(names)) != len(names):
        raise DataError(
            f"data.media: {names} must name one or more of {', '.join(MEDIA)}, each once; e.g. data.media=[audio,video]"
        )
    return tuple(names)


class MustardDataModule(MultimodalDataModule):
    """MUStARD: text, audio and video of 690 utterances, sarcastic or not; headline metric: validation weighted F1."""

    config_class = MustardConfig
    media = "audio"
    num_classes = len(MUSTARD_CLASSES)
    monitor = "val/f1_weighted"

    def __init__(self, cfg):
        self._media = media_setting(cfg.get("media", "audio"))  # the samples' media files, the primary first
        self.media = self._media[0]
        super().__init__(cfg)

    @classmethod
    def provided_modalities(cls) -> tuple[str, ...]:
        return ("text", *MEDIA)  # which of the media the samples carry is data.media's choice

    @property
    def media_modalities(self) -> tuple[str, ...]:
        return self._media

    def load_hint(self, modalities: list[str]) -> str:
        wanted = [*self._media, *(m for m in modalities if m not in self._media)]
        return (
            f"data.media is [{', '.join(self._media)}]; set data.media=[{','.join(wanted)}] to load the "
            f"{' and '.join(modalities)} too"
        )

    @property
    def root(self) -> Path:
        return Path(self.cfg.root).expanduser()

    def read_classes(self) -> list[str]:
        return list(MUSTARD_CLASSES)

    def image_folders(self) -> list[Path]:
        return [self.root]

    def source_files(self) -> list[Path]:
        files = [self.root / "sarcasm_data.json"]
        return files + ([self.root / self.cfg.folds_file] if self.cfg.split == "speaker_dependent" else [])

    def split_source(self, split: str) -> str:
        annotations = self.root / "sarcasm_data.json"
        if split == "val":
            return f"{annotations} (data.val_fraction of the training part held out)"
        if self.cfg.split == "speaker_independent":
            return f"{annotations} ({'the' if split == 'test' else 'all but the'} {HELD_OUT_SHOW} utterances)"
        return f"{annotations} ({split} part of fold {self.cfg.fold} in {self.root / self.cfg.folds_file})"

    def scan(self) -> Scan:
        c = self.cfg
        if c.split not in SPLITS:
            raise DataError(f"data.split: '{c.split}' is not one of {', '.join(SPLITS)}")
        if c.text not in TEXTS:
            raise DataError(f"data.text: '{c.text}' is not one of {', '.join(TEXTS)}")
        entries = self._read_entries()
        builder, problems = SplitBuilder("clips"), []
        rows: list[int] = []  # JSON position of each sample in the builder
        for position, (clip_id, entry) in enumerate(entries):
            where = f"{self.root / 'sarcasm_data.json'}:entry {clip_id}"
            sample = self._sample(clip_id, entry)
            if isinstance(sample, str):
                problems.append(Problem(str(self.root / "sarcasm_data.json"), f"entry {clip_id}", sample))
                continue
            text, label, media = sample
            builder.add(
                clip_id,
                text,
                label,
                media[self.media],
                where,
                attributes=_attributes(entry),
                other_media={m: media[m] for m in self._media[1:]},
            )
            rows.append(position)
        everything = builder.build()
        train_rows, test_rows, note = self._split_rows(entries, rows)
        kept, held = stratified_holdout([everything.labels[r] for r in train_rows], c.val_fraction, c.split_seed)
        splits = {
            "train": everything.subset([train_rows[r] for r in kept]),
            "val": everything.subset([train_rows[r] for r in held]),
            "test": everything.subset(test_rows),
        }
        notes = [
            note,
            f"val = {len(held)} utterances held out of the training part, stratified by label (seed {c.split_seed})",
        ]
        return Scan(splits, builder.pools(), problems, notes)

    def _read_entries(self) -> list[tuple[str, dict]]:
        path = self.root / "sarcasm_data.json"
        if not path.is_file():
            raise DataError(
                f"{self.root}: no MUStARD dataset here (missing sarcasm_data.json); set data.root to a "
                "folder with sarcasm_data.json and utterances_final/ (see data/README.md)"
            )
        data = read_json(path)
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected a JSON object of utterances keyed by clip id")
        return list(data.items())

    def _sample(self, clip_id: str, entry) -> tuple[str, int, dict[str, Path]] | str:
        """(text, label, its file of each of the media) of one entry, or what is wrong with it."""
        if not isinstance(entry, dict):
            return f"{entry!r} is not an object with utterance, speaker and sarcasm"
        utterance, sarcasm = entry.get("utterance"), entry.get("sarcasm")
        if not isinstance(utterance, str) or not utterance.strip():
            return "empty or missing 'utterance'"
        if not isinstance(sarcasm, bool):
            return f"'sarcasm' is {sarcasm!r}, not true or false"
        files = {}
        for media in self._media:
            folder, extensions = (
                (self.cfg.video_folder, VIDEO_EXTENSIONS)
                if media == "video"
                else (self.cfg.audio_folder, AUDIO_EXTENSIONS)
            )
            found = next((p for ext in extensions if (p := self.root / folder / f"{clip_id}{ext}").is_file()), None)
            if found is None:
                return (
                    f"no {media} for utterance {clip_id!r}: none of {folder}/{clip_id}{{{','.join(extensions)}}} exists"
                )
            files[media] = found
        return self._text(entry, utterance), int(sarcasm), files

    def _text(self, entry: dict, utterance: str) -> str:
        speaker = str(entry.get("speaker") or "").strip()
        said = f"{speaker}: {utterance}" if speaker else utterance
        if self.cfg.text == "utterance":
            return utterance
        if self.cfg.text == "speaker":
            return said
        context = entry.get("context") or []
        speakers = entry.get("context_speakers") or []
        lines = [f"{s}: {line}" if s else str(line) for line, s in zip(context, [*speakers, *[""] * len(context)])]
        return " ".join([*lines, said])

    def _split_rows(self, entries: list, rows: list[int]) -> tuple[list[int], list[int], str]:
        """Sample rows (into the built split) of the training part and of the test split, and a note."""
        c = self.cfg
        if c.split == "speaker_independent":
            shows = [str((entries[p][1] or {}).get("show", "")).upper() for p in rows]
            test = [r for r, show in enumerate(shows) if show == HELD_OUT_SHOW]
            train = [r for r, show in enumerate(shows) if show != HELD_OUT_SHOW]
            return (
                train,
                test,
                (f"speaker-independent split: the {len(test)} {HELD_OUT_SHOW} utterances are the test split"),
            )
        folds = read_folds(self.root / c.folds_file)
        if not 0 <= c.fold < len(folds):
            raise DataError(f"data.fold: {c.fold}, but {self.root / c.folds_file} has folds 0..{len(folds) - 1}")
        train_positions, test_positions = folds[c.fold]
        out_of_range = [i for i in (*train_positions, *test_positions) if not 0 <= i < len(entries)]
        if out_of_range:
            raise DataError(
                f"{self.root / c.folds_file}: fold {c.fold} points at entry {out_of_range[0]}, but "
                f"sarcasm_data.json has {len(entries)}; use the folds file of this release"
            )
        row_of = {p: r for r, p in enumerate(rows)}  # entries with problems have no row
        return (
            [row_of[p] for p in train_positions if p in row_of],
            [row_of[p] for p in test_positions if p in row_of],
            f"speaker-dependent split: fold {c.fold} of {len(folds)} ({c.folds_file})",
        )


def _attributes(entry: dict) -> dict[str, list[str]]:
    """What routing reports group utterances by: who says it and in which show (empty where the entry lacks it)."""
    speaker, show = str(entry.get("speaker") or "").strip(), str(entry.get("show") or "").strip()
    return {"speaker": [speaker] if speaker else [], "show": [show.upper()] if show else []}
