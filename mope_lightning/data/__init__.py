"""Datasets: the DataModules by name (`DATAMODULES`, data/registry.py) and what they are built from. Nothing here
imports Lightning: training/datamodule.py adds Lightning's hooks to these classes.

The names below are imported on first use, so that the modules inference needs (data.features, data.audio,
data.samples) load without the dataset readers (`from_pretrained` imports them)."""

import importlib

_HOMES = {
    "DATAMODULES": "registry",
    "MMBTDataModule": "registry",
    "MultimodalDataModule": "base",
    "MultimodalDataset": "base",
    "BatchCollate": "base",
    "EasyVQADataModule": "datasets.easy_vqa",
    "Food101DataModule": "datasets.food101",
    "HatefulMemesDataModule": "datasets.hateful_memes",
    "JsonlDataModule": "datasets.jsonl",
    "SNLIVEDataModule": "datasets.jsonl",
    "MMIMDBDataModule": "datasets.mmimdb",
    "MustardDataModule": "datasets.mustard",
    "Problem": "samples",
    "Scan": "samples",
    "Split": "samples",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
