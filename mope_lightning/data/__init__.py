"""Datasets: the DataModules by name (`DATAMODULES`, data/registry.py) and what they are built from.

The names below are imported on first use: the DataModules are Lightning's, and the modules that inference needs
(data.features, data.audio, data.samples) must load without Lightning (`from_pretrained` imports them)."""

import importlib

_HOMES = {
    "DATAMODULES": "registry", "MMBTDataModule": "registry",
    "MultimodalDataModule": "base", "MultimodalDataset": "base", "BatchCollate": "base",
    "EasyVQADataModule": "easy_vqa", "Food101DataModule": "food101", "HatefulMemesDataModule": "hateful_memes",
    "JsonlDataModule": "jsonl", "SNLIVEDataModule": "jsonl", "MMIMDBDataModule": "mmimdb",
    "MustardDataModule": "mustard", "Problem": "samples", "Scan": "samples", "Split": "samples",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
