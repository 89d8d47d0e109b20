"""The low-data protocol: a seeded, stratified, nested subset of the train split (validation and test untouched).

`data.train_fraction: f` keeps round(f · N) training samples; `data.shots_per_class: k` keeps k samples of every
class. Both draw from one seeded order of the training samples (`data.subset_seed`), so with one seed a smaller
subset is contained in a larger one: a data-scaling curve adds samples rather than redrawing them.

The order is stratified by label: within each label group (the class; for multi-label data, the set of labels) the
samples are shuffled and each gets its quantile in the group, (rank + u) / n with one random offset u per group;
sorting every sample by its quantile interleaves the groups so that any prefix holds each group in proportion
(within one sample). For multi-label data `shots_per_class` walks that order and keeps a sample while one of its
labels has fewer than k samples.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Optional, Sequence

import torch

from mope_lightning.data.samples import Split
from mope_lightning.errors import DataError


def _group(label) -> object:
    return tuple(sorted(label)) if isinstance(label, (list, tuple)) else label


def stratified_order(labels: Sequence, seed: int) -> list[int]:
    """Every row index once, in a seeded order whose every prefix is stratified by label group."""
    gen = torch.Generator().manual_seed(seed)
    groups: dict = defaultdict(list)
    for row, label in enumerate(labels):
        groups[_group(label)].append(row)
    keyed = []
    for key in sorted(groups, key=repr):
        rows = groups[key]
        offset = torch.rand(1, generator=gen).item()
        for rank, i in enumerate(torch.randperm(len(rows), generator=gen).tolist()):
            keyed.append(((rank + offset) / len(rows), rows[i]))
    return [row for _, row in sorted(keyed)]


def _per_class(labels: Sequence, order: list[int], shots: int, classes: list[str]) -> list[int]:
    counts = Counter(c for label in labels for c in (label if isinstance(label, (list, tuple)) else [label]))
    rarest = min(range(len(classes)), key=lambda c: counts.get(c, 0))
    if counts.get(rarest, 0) < shots:
        raise DataError(
            f"data.shots_per_class={shots}: class '{classes[rarest]}' has only {counts.get(rarest, 0)} "
            f"training sample(s); use at most {counts.get(rarest, 0)}, or data.train_fraction"
        )
    kept, taken = [], Counter()
    for row in order:
        label = labels[row]
        members = label if isinstance(label, (list, tuple)) else [label]
        if any(taken[c] < shots for c in members):
            kept.append(row)
            taken.update(members)
    return kept


def training_subset(
    split: Split, classes: list[str], fraction: float = 1.0, shots: Optional[int] = None, seed: int = 0
) -> tuple[Split, str]:
    """The kept rows of `split` (in their original order) and a note saying what was kept."""
    if fraction >= 1.0 and shots is None:
        return split, ""
    if fraction < 1.0 and shots is not None:
        raise DataError(f"data.train_fraction={fraction} and data.shots_per_class={shots}: set one of them")
    order = stratified_order(split.labels, seed)
    if shots is not None:
        rows, how = _per_class(split.labels, order, shots, classes), f"data.shots_per_class={shots}"
    else:
        rows, how = order[: max(1, round(fraction * len(split)))], f"data.train_fraction={fraction:g}"
    note = (
        f"train subset: {len(rows):,} of {len(split):,} samples ({how}, data.subset_seed={seed}, stratified by "
        "label, nested across sizes)"
    )
    return split.subset(sorted(rows)), note
