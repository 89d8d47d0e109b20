"""mope_lightning: parameter-efficient multimodal fusion with a Mixture of Prompt Experts, on PyTorch Lightning."""

__version__ = "0.1.0"
