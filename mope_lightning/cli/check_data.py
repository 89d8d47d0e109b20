"""`mope check-data`: what a dataset holds and every problem found in it; exit status 1 when there are problems."""

from __future__ import annotations

from omegaconf import DictConfig

from mope_lightning.data.audio import describe_clips
from mope_lightning.data.missing import describe as describe_missing
from mope_lightning.data.registry import dataset_class
from mope_lightning.data.samples import pool_modalities
from mope_lightning.data.subsets import training_subset
from mope_lightning.data.video import describe_videos


def check_data(cfg: DictConfig) -> tuple[str, int]:
    """A report of the dataset `cfg` points at (split sizes, label counts, images decoded, notes, every sample
    problem, counted by kind) and the number of problems. Structural problems (missing folders or split files, no
    labels) raise `DataError`."""
    from collections import Counter

    datamodule = dataset_class(cfg.data)(cfg.data)
    scan = datamodule.index()
    lines = [f"[mope] check-data {cfg.data.name}: {len(datamodule.classes)} classes"]
    kinds = pool_modalities(scan.splits.values(), scan.pools, datamodule.media)
    several = len(datamodule.media_modalities) > 1
    nouns = {m: f"{m} clips" if several else "images" if m == "image" else "clips" for m in datamodule.media_modalities}
    for name, split in scan.splits.items():
        files = "  ".join(f"{len(set(js)):>8,} {nouns[kinds[pool]]}" for pool, js in split.pool_indices())
        lines.append(f"  {name:<6} {len(split):>9,} samples  {files}")
        shown = ", ".join(f"{cls} {n}" for cls, n in datamodule.label_counts(split).most_common())
        per = " (images per class)" if datamodule.task == "segmentation" else ""
        lines.append(f"         labels{per}: {shown}")
    for media, noun in nouns.items():  # one summary per media
        lines += _media_summary(cfg, scan, [pool for pool, kind in kinds.items() if kind == media], media, noun)
    train, subset = training_subset(
        scan.splits["train"],
        datamodule.classes,
        cfg.data.train_fraction,
        cfg.data.shots_per_class,
        cfg.data.subset_seed,
    )
    lines += [f"  note: {note}" for note in [*scan.notes, subset] if note]
    lines += _attribute_summary(scan.splits)
    tables = datamodule.missing_tables({**scan.splits, "train": train})
    lines += [
        f"  missing ({name}): {describe_missing(table)} (data.missing.{name}, seed {cfg.data.missing.seed})"
        for name, table in tables.items()
        if table
    ]
    kinds = Counter(problem.kind for problem in scan.problems)
    names = {
        "record": "in the records",
        "image": "unreadable images",
        "audio": "unreadable audio clips",
        "video": "unreadable video clips",
        "duplicate": "ids repeated within a split",
        "overlap": "val/test samples also in train",
    }
    by_kind = ", ".join(f"{n} {names.get(kind, kind)}" for kind, n in kinds.items())
    lines.append(
        f"  problems: {len(scan.problems)}" + (f" ({by_kind})" if scan.problems else " (the dataset is clean)")
    )
    lines += [f"    {problem}" for problem in scan.problems]
    return "\n".join(lines), len(scan.problems)


def _media_summary(cfg: DictConfig, scan, pools: list[str], media: str, noun: str) -> list[str]:
    """How many files of `media` (in `pools`) decoded, and what loading does to its clips."""
    digests = [d for pool in pools for d in scan.digests.get(pool, [])]
    lines = [
        f"  {noun}: {sum(map(bool, digests)):,} decoded in full, {digests.count(''):,} unreadable"
        if scan.digests
        else f"  {noun}: not decoded (data.check_images=false: unreadable ones go unnoticed)"
    ]
    if media == "audio":  # the rate the clips are resampled to is the audio encoder's, named at fit
        files = sorted({f for pool in pools for f in scan.pools[pool]})
        lines += [f"  audio {line}" for line in describe_clips(files, None, cfg.data.get("max_audio_seconds"))]
    if media == "video":  # the index's probes of the clips that decoded
        probes = [probe for pool in pools for probe in scan.probes.get(pool, [])]
        lines += [f"  video {line}" for line in describe_videos(probes, cfg.data.video_frames)]
    return lines


def _attribute_summary(splits: dict) -> list[str]:
    """One line per sample attribute (for routing analysis): its values and how many samples lack one."""
    names = sorted({name for split in splits.values() for name in split.attributes})
    lines = []
    for name in names:
        columns = [split.attributes.get(name, [[]] * len(split)) for split in splits.values()]
        values = sorted({v for column in columns for row in column for v in row})
        unknown = sum(not row for column in columns for row in column)
        shown = ", ".join(values[:8]) + (f", ... ({len(values)} in all)" if len(values) > 8 else "")
        lines.append(f"  attribute {name}: {shown}; {unknown:,} sample(s) without one")
    return lines


def main(cfg: DictConfig) -> int:
    report, problems = check_data(cfg)
    print(report)
    return 1 if problems else 0
