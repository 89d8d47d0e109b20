"""What the tests share besides fixtures: the repository's paths, the tiny experiment config, and (datasets.py)
small copies of each dataset's native layout."""

from pathlib import Path

from mope_lightning.training.trainer_config import load_config

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "experiments"
DEFAULT_EXP = EXPERIMENTS / "easy_vqa.yaml"
TINY = EXPERIMENTS / "overlays" / "tiny.yaml"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def tiny_config(tmp_path: Path, *overrides: str):
    """The default experiment with the tiny overlay, writing only under `tmp_path`."""
    return load_config(
        [DEFAULT_EXP, TINY],
        [
            f"trainer.default_root_dir={tmp_path / 'runs'}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.train_images=40",
            "data.test_images=10",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            *overrides,
        ],
    )
