"""What the tests share besides fixtures: the repository's paths, the tiny experiment config, and (datasets.py)
small copies of each dataset's native layout."""

from pathlib import Path

from mope_lightning.training.trainer_config import load_config

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "experiments"
DEFAULT_EXP = EXPERIMENTS / "easy_vqa.yaml"
TINY = EXPERIMENTS / "overlays" / "tiny.yaml"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def run_dirs(tmp_path: Path) -> list[str]:
    """Overrides that keep a run's outputs and caches under `tmp_path`, with no progress bar or model summary."""
    return [
        f"trainer.default_root_dir={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]


# A dataset's tiny fit: two optimiser steps, loading in the test's own process
FAST = ("data.num_workers=0", "trainer.max_steps=2")
# The default experiment's tiny data: 40 train and 10 test images of easy-VQA, with their questions
TINY_DATA = ("data.train_images=40", "data.test_images=10")


def tiny_config(tmp_path: Path, *overrides: str):
    """The default experiment with the tiny overlay, writing only under `tmp_path`."""
    return load_config([DEFAULT_EXP, TINY], [*run_dirs(tmp_path), *TINY_DATA, *overrides])
