"""Samples that lose a modality: which ones, per split, seeded and fixed per sample (`data.missing`).

`data.missing.<split>.image: r` removes the image of round(r · N) samples of the split, `.text` their text, and
`.both` follows the protocol of the missing-aware-prompts paper (Lee et al., CVPR 2023): round(r · N) samples lose a
modality, half of them their text and half their image; no sample loses both. `.depth` removes the depth map of
round(r · N) samples of an RGB-D segmentation split (the conditioning modality; its image, which the mask belongs
to, is never removed). The kinds of one split add up to at most 1.

Which samples: every sample gets a rank from a hash of (`data.missing.seed`, its id), so the choice depends on the
sample alone, not on the order of a file, the epoch, the process or the DataLoader worker: every epoch and every DDP
rank removes the same modality of the same samples. The lowest ranks lose their image (`image`), the next their text
(`text`), then the depth maps (`depth`), then `both` alternates text and image down the ranks. A higher rate of one kind removes more samples and
keeps the earlier ones removed (nested, like the low-data subsets), so a robustness curve adds missing samples
rather than redrawing them.

What a removed modality becomes is the DataModule's and the model's business (data/base.py, models/classifier.py):
a removed text is an empty text (its tokens are the tokenizer's special tokens only); a removed image is not read
at all; a removed depth map is not read either, it is zeros (unknown depth) before its encoding
(data/segmentation.py).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Optional, Sequence

MISSABLE = ("text", "image")  # what a sample can lose; a missing-aware prompt's case is 1 + this index (0: none)
KINDS = ("image", "text", "depth", "both")  # the removal kinds of `data.missing.<split>`, in rank order


def lost_by(kind: str) -> tuple[str, ...]:
    """The modalities samples of a removal kind ("image", "text", "depth", "both") can lose."""
    return MISSABLE if kind == "both" else (kind,)


def _rank_key(seed: int, sample_id: str) -> bytes:
    return hashlib.blake2b(f"{seed}\0{sample_id}".encode(), digest_size=8).digest()


def missing_table(ids: Sequence[str], rates, seed: int = 0) -> Optional[list[str]]:
    """Per sample, the modality it loses ("text", "image", "depth") or "" (complete); None when the rates remove
    nothing.

    `rates` has `image`, `text`, `both` and optionally `depth` (a `MissingRates` config node or anything with those
    attributes)."""
    n = len(ids)
    counts = {kind: round(float(getattr(rates, kind, 0.0)) * n) for kind in KINDS}
    if not any(counts.values()):
        return None
    order = sorted(range(n), key=lambda i: (_rank_key(seed, ids[i]), i))
    lost = [""] * n
    kinds = ["image"] * counts["image"] + ["text"] * counts["text"] + ["depth"] * counts["depth"]
    kinds += [("text", "image")[k % 2] for k in range(counts["both"])]
    for row, kind in zip(order, kinds):
        lost[row] = kind
    return lost


def describe(table: Optional[list[str]]) -> str:
    """'1,234 of 4,000 lose their image, 20 their text' (or '' for a complete split)."""
    if not table:
        return ""
    counts = Counter(table)
    lost = ("image", "text", "depth")
    parts = [f"{counts[m]:,} their {m}" for m in lost if counts[m]]
    return f"{sum(counts[m] for m in lost):,} of {len(table):,} samples lose a modality: " + ", ".join(parts)
