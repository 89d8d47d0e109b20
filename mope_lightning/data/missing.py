"""Samples that lose modalities: which ones, per split, seeded and fixed per sample (`data.missing`).

`data.missing.<split>.<modality>: r` removes that modality (text, image, audio, video, depth) of round(r · N) samples
of the split. `.sets: {"audio+video": r}` removes several modalities of round(r · N) samples at once (a set is named
by its modalities joined by "+", in any order; written in the order of `MODALITIES`). `.both` follows the protocol of
the missing-aware-prompts paper (Lee et al., CVPR 2023) on its pair, text and image: round(r · N) samples lose one of
the two, half of them their text and half their image; no sample loses both. An RGB-D segmentation split can lose
only its depth map (the conditioning modality; the image, which the mask belongs to, is never removed). The rates of
one split add up to at most 1: a sample is removed by one kind at most.

Which samples: every sample gets a rank from a hash of (`data.missing.seed`, its id), so the choice depends on the
sample alone, not on the order of a file, the epoch, the process or the DataLoader worker: every epoch and every DDP
rank removes the same modalities of the same samples. The kinds take the ranks in this order (`removals`): the single
modalities in the order of `MODALITIES` (image, text, audio, video, depth), then the sets by name, then `both`, which
alternates text and image down its ranks. A higher rate of one kind removes more samples and keeps the earlier ones
removed (nested, like the low-data subsets), so a robustness curve adds missing samples rather than redrawing them.
When the rounded counts add up to more than N (rates adding up to 1 on an odd N), the last kinds get the samples left.

A sample's lost set is a string (`missing_table`): "" (complete), one modality ("audio"), or a set ("audio+video");
`loses(lost, modality)` asks whether it holds a modality. What a removed modality becomes is the DataModule's and the
model's business (data/items.py, data/segmentation.py, models/classifier.py): a removed text is an empty text (its
tokens are the tokenizer's special tokens only); a removed image, audio clip, video or depth map is not read: a cached
feature is zeros, an image the blank image, a clip a short silent one, a video's frames zeros, a depth map zeros
(unknown depth) before its encoding; the model replaces the pooled feature by its learned missing embedding.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Optional, Sequence

from mope_lightning.data.options import MissingRates
from mope_lightning.errors import suggest

# What a sample can lose (models/registry.py MODALITIES, in the order removals are ranked and set names written)
MODALITIES = ("image", "text", "audio", "video", "depth")
BOTH = ("text", "image")  # the pair `both` removes one of (the MMP protocol), in the order it alternates
JOIN = "+"  # between the modalities of a set's name


class MissingRatesError(ValueError):
    """Rates `data.missing.<split>` cannot apply; `key` is the key under the split it is about ("sets.audio+video")."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}" if key else message)
        self.key, self.message = key, message


def loses(lost: str, modality: str) -> bool:
    """Whether a sample whose lost set is `lost` ("", "image", "audio+video") lost `modality`."""
    return modality in lost.split(JOIN)


def lost_modalities(lost: str) -> tuple[str, ...]:
    """The modalities of a lost set ("audio+video" -> ("audio", "video"); "" -> ())."""
    return tuple(lost.split(JOIN)) if lost else ()


def set_name(name: str) -> str:
    """The canonical name of a set of two or more modalities ("video+audio" -> "audio+video"); `MissingRatesError`
    for an unknown modality, one named twice, or a single one."""
    parts = name.split(JOIN)
    for part in parts:
        if part not in MODALITIES:
            raise MissingRatesError(
                f"sets.{name}",
                f"'{part}' is not a modality{suggest(part, MODALITIES)}; name a set by modalities of {', '.join(MODALITIES)} joined by "
                f"'{JOIN}', e.g. audio{JOIN}video",
            )
    repeated = sorted({p for p in parts if parts.count(p) > 1})
    if repeated:
        raise MissingRatesError(f"sets.{name}", f"names the {repeated[0]} twice; name each modality of a set once")
    if len(parts) < 2:
        raise MissingRatesError(
            f"sets.{name}", f"a set names two or more modalities; for the {name} alone use data.missing.<split>.{name}"
        )
    return JOIN.join(sorted(parts, key=MODALITIES.index))


def kind_name(kind: str) -> str:
    """A removal kind as the tables name it: a modality, "both", or a set's canonical name."""
    return kind if kind in MODALITIES or kind == "both" else set_name(kind)


def lost_by(kind: str) -> tuple[str, ...]:
    """The modalities samples of a removal kind (a modality, "both", a set) can lose."""
    return BOTH if kind == "both" else lost_modalities(kind_name(kind))


def rate_key(kind: str) -> str:
    """The key under `data.missing.<split>` that sets a removal kind's rate ("audio", "both", "sets.audio+video")."""
    return f"sets.{kind}" if JOIN in kind else kind


def removals(rates) -> list[tuple[str, float]]:
    """The kinds `rates` removes (each with its rate > 0), in rank order: the modalities, the sets by their canonical
    name, `both`. `rates` is a `MissingRates` config node or anything with its attributes (`sets` optional);
    `MissingRatesError` for a set name `set_name` refuses, a rate outside [0, 1], or rates adding up to more than 1."""
    found = [(m, _rate(m, getattr(rates, m, 0.0))) for m in MODALITIES]
    sets: dict[str, float] = {}
    for name, rate in dict(getattr(rates, "sets", None) or {}).items():
        canonical = set_name(str(name))
        if canonical in sets:
            raise MissingRatesError(f"sets.{name}", f"names the same set as {canonical}; give each set once")
        sets[canonical] = _rate(f"sets.{name}", rate)
    found += sorted(sets.items()) + [("both", _rate("both", getattr(rates, "both", 0.0)))]
    if sum(rate for _, rate in found) > 1 + 1e-9:  # 0.1 + 0.2 + 0.7 is 1.0000000000000002 in floats
        first = ("image", "text", "both")  # always shown, as before sets and the other modalities existed
        shown = [f"{k} {r:g}" for k, r in sorted(found, key=lambda kr: kr[0] not in first) if k in first or r]
        raise MissingRatesError(
            "",
            " + ".join(shown) + " is more than 1; a sample is removed by one kind at most, so the shares add up "
            "to 1 at most",
        )
    return [(kind, rate) for kind, rate in found if rate]


def _rate(key: str, value) -> float:
    try:
        rate = float(value or 0.0)
    except (TypeError, ValueError):
        raise MissingRatesError(key, f"must be a number in [0, 1], got {value!r}") from None
    if not 0 <= rate <= 1:
        raise MissingRatesError(key, f"must be in [0, 1], got {rate:g}")
    return rate


def model_removals(rates, modalities: Sequence[str], reads: Sequence[str], reader: str) -> list[tuple[str, float]]:
    """`removals(rates)`, checked against a model of `modalities` that reads `reads` from a batch (`reader` names it
    in messages, e.g. "model.fusion=text_only"): each kind removes modalities the model has, `both` needs a pair,
    and no sample loses every modality the model reads (it would have no input)."""
    found = removals(rates)
    for kind, _ in found:
        key, lost = rate_key(kind), lost_by(kind)
        if kind == "both" and len(modalities) > 2:
            raise MissingRatesError(
                key,
                f"the MMP protocol removes one modality of a pair (half the text, half the image), and "
                f"model.modalities is {list(modalities)}; give the share of each modality "
                f"(data.missing.<split>.{'/'.join(modalities)}) or of a set (data.missing.<split>.sets)",
            )
        if not set(lost) <= set(modalities):
            raise MissingRatesError(
                key,
                f"removes the {(' or ' if kind == 'both' else ' and ').join(lost)} of samples, but model.modalities "
                f"is {list(modalities)}; remove only modalities the model has",
            )
        sample_loses = [(m,) for m in BOTH] if kind == "both" else [lost]  # `both`: a sample loses one of the two
        if any(set(reads) <= set(removed) for removed in sample_loses):
            if len(reads) == 1:
                why = f"reads the {reads[0]} alone, so a sample without it has no input; use a fusion that reads both "
                why += f"modalities, or remove no {reads[0]}"
            else:
                why = f"reads the {' and '.join(reads)}, all of which this removes, so such a sample has no input; "
                why += "remove fewer modalities at once"
            raise MissingRatesError(key, f"{reader} {why}")
    return found


def rates_of(kind: str, rate: float) -> MissingRates:
    """The rates of one removal kind (a modality, "both", a set) at `rate`, the others at 0."""
    kind = kind_name(kind)
    return MissingRates(sets={kind: rate}) if JOIN in kind else MissingRates(**{kind: rate})


def _rank_key(seed: int, sample_id: str) -> bytes:
    return hashlib.blake2b(f"{seed}\0{sample_id}".encode(), digest_size=8).digest()


def missing_table(ids: Sequence[str], rates, seed: int = 0) -> Optional[list[str]]:
    """Per sample, the set of modalities it loses ("" complete, "image", "audio+video"); None when the rates remove
    nothing. `MissingRatesError` (a ValueError) for rates that cannot apply (see `removals`)."""
    n = len(ids)
    counts = [(kind, round(rate * n)) for kind, rate in removals(rates)]
    if not any(count for _, count in counts):
        return None
    order = sorted(range(n), key=lambda i: (_rank_key(seed, ids[i]), i))
    kinds: list[str] = []
    for kind, count in counts:
        kinds += [BOTH[k % 2] for k in range(count)] if kind == "both" else [kind] * count
    lost = [""] * n
    for row, kind in zip(order, kinds):  # zip: the last kinds get what is left when rounding exceeds n
        lost[row] = kind
    return lost


def describe(table: Optional[list[str]]) -> str:
    """'1,234 of 4,000 samples lose a modality: 1,000 their image, 234 their audio+video' ('' for a complete split)."""
    if not table:
        return ""
    counts = Counter(lost for lost in table if lost)
    order = [m for m in MODALITIES if counts[m]] + sorted(lost for lost in counts if JOIN in lost)
    parts = [f"{counts[lost]:,} their {lost}" for lost in order]
    return f"{sum(counts.values()):,} of {len(table):,} samples lose a modality: " + ", ".join(parts)
