"""A model's modality set: which modalities condition the prompted one, and the missing cases of its samples (the
sets of modalities a sample can lose, each with its own missing-aware prompts), read from a batch's
`<modality>_missing` flags (data/missing.py sets them)."""

from __future__ import annotations

import itertools
from typing import Optional, Sequence

import torch
from torch import Tensor


def missing_rows(batch: dict, modality: str) -> Optional[Tensor]:
    """(B,) bool: the samples of `batch` that lost `modality`; None for a batch of a complete split."""
    return batch.get(f"{modality}_missing")


def missing_cases(modality_set: Sequence[str]) -> list[tuple[str, ...]]:
    """The lost sets the missing-aware prompts learn one case each for, in case order: complete (nothing lost),
    then each modality lost alone in the set's order, then each pair lost (`itertools.combinations` order), and so
    on, up to every set that leaves at least one modality. For a pair: complete, the first lost, the second lost.
    A one-modality set keeps the lost-modality case it always had (never taken: a sample keeps its modality)."""
    sizes = range(1, max(len(modality_set), 2))
    return [(), *(lost for size in sizes for lost in itertools.combinations(modality_set, size))]


def missing_case(batch: dict, batch_size: int, device: torch.device, modality_set: Sequence[str]) -> Tensor:
    """(B,) long: each sample's missing case (`missing_cases`), from the `<modality>_missing` flags of every
    modality of the set (a sample may have lost several). ValueError for a sample that lost every modality of a set
    of two or more."""
    flags = [missing_rows(batch, m) for m in modality_set]
    if all(rows is None for rows in flags):
        return torch.zeros(batch_size, dtype=torch.long, device=device)
    code = torch.zeros(batch_size, dtype=torch.long, device=device)  # bit k set: modality k lost
    for k, rows in enumerate(flags):
        if rows is not None:
            code = code | (rows.to(device=device, dtype=torch.long) << k)
    index = {m: k for k, m in enumerate(modality_set)}
    case_of_code = torch.full((2 ** len(modality_set),), -1, dtype=torch.long)
    for case, lost in enumerate(missing_cases(modality_set)):
        case_of_code[sum(1 << index[m] for m in lost)] = case
    case = case_of_code.to(device)[code]
    if bool((case < 0).any()):  # only batches of splits that lose modalities reach this check
        raise ValueError(
            f"a sample lost every modality of {tuple(modality_set)} (rows {(case < 0).nonzero().flatten().tolist()}"
            "): a model needs at least one; keep one modality of every sample"
        )
    return case


def conditioning_modalities(modality_set: Sequence[str], prompted: str) -> tuple[str, ...]:
    """The modalities of the set that condition the `prompted` one: all the others, in the set's order."""
    if prompted not in modality_set:
        raise ValueError(f"{prompted!r} is not one of the modality set {tuple(modality_set)}")
    return tuple(m for m in modality_set if m != prompted)
