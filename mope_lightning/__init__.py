"""mope_lightning: parameter-efficient multimodal fusion with a Mixture of Prompt Experts, on PyTorch Lightning.

Python API (imported on first use, so that `mope --help` stays quick):
    from_pretrained(source)      an adapter folder, a .ckpt or a Hub repo id -> a model that predicts raw inputs
    push_to_hub(folder, repo_id) publish an exported adapter folder
"""

__version__ = "0.1.0"

_API = {
    "from_pretrained": "mope_lightning.pretrained",
    "PretrainedModel": "mope_lightning.pretrained",
    "Predictions": "mope_lightning.pretrained",
    "SegmentationPredictions": "mope_lightning.pretrained",
    "push_to_hub": "mope_lightning.weights.adapters",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'mope_lightning' has no attribute '{name}'")
