"""The Python API: trained weights on their frozen encoders, predicting from raw texts, images and audio clips.

    import mope_lightning
    model = mope_lightning.from_pretrained("adapters/easy_vqa")      # adapter folder, .ckpt, or Hub repo id
    out = model.predict(texts=["what shape is this?"], images=["circle.png"])
    out.labels, out.probs, out.routing
    # a text-audio model: model.predict(texts=[...], audio=["clip.wav"])

The model applies its own tokenizer, image preprocessing and audio feature extractor (the ones it was trained
with), batches, and runs on the device it was moved to. Nothing here imports Lightning.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from PIL import Image
from torch import Tensor, nn

from mope_lightning.checkpoints import TrainedWeights, load_into, read_trained_weights
from mope_lightning.errors import MopeError
from mope_lightning.predictions import predicted_labels, probabilities


@dataclass
class Predictions:
    labels: list  # the predicted class name of each input (multi-label: the list of names above 0.5)
    probs: Tensor  # (N, classes) class probabilities, float32 on the CPU
    classes: list[str]  # the columns of `probs`
    routing: Optional[Tensor] = None  # (N, routed layers, experts) routing probabilities, for models with a router


class PretrainedModel:
    """A trained classifier with its preprocessing. Build it with `from_pretrained`."""

    def __init__(self, net: nn.Module, trained: TrainedWeights, data_cfg):
        from mope_lightning.data.features import eval_transform

        self.net = net.eval()
        self.trained = trained
        self.classes, self.task = list(trained.classes), trained.task
        self.max_text_length = data_cfg.get("max_text_length", 128)
        self.max_audio_seconds = data_cfg.get("max_audio_seconds")
        self.tokenizer = net.text.tokenizer if "text" in net.pair else None
        self.transform = eval_transform(net.image.data_config, data_cfg) if "image" in net.modalities() else None
        self.audio_preprocessor = net.audio.preprocessor if "audio" in net.modalities() else None

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: str | torch.device) -> "PretrainedModel":
        self.net.to(device)
        return self

    # --- inputs --------------------------------------------------------------------------------------------
    def _image(self, image: Any, i: int) -> Tensor:
        from mope_lightning.data.features import load_image

        if isinstance(image, (str, Path)):
            image = load_image(Path(image))
        elif isinstance(image, Tensor):
            if image.is_floating_point():  # already preprocessed, e.g. by `model.transform`
                return image
            image = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())  # uint8 (C, H, W)
        if not isinstance(image, Image.Image):
            raise MopeError(f"images[{i}]: {type(image).__name__}; give a PIL image, a file path or a tensor")
        return self.transform(image.convert("RGB"))

    def _audio(self, clip: Any, i: int):
        """Samples at the audio encoder's rate: a file is decoded and resampled; an array is taken as it is."""
        from mope_lightning.data.audio import load_clip

        rate = self.audio_preprocessor.sampling_rate
        if isinstance(clip, (str, Path)):
            return load_clip(Path(clip), rate, self.max_audio_seconds).numpy()
        if isinstance(clip, Tensor):
            clip = clip.detach().cpu().numpy()
        if getattr(clip, "ndim", 0) != 1 or not len(clip):
            raise MopeError(f"audio[{i}]: give a file path or a 1-D array of samples at {rate} Hz (mono)")
        return clip.astype("float32", copy=False)

    def preprocess(self, texts: Optional[Sequence[str]] = None, images: Optional[Sequence[Any]] = None,
                   audio: Optional[Sequence[Any]] = None) -> dict:
        """The batch the classifier reads: tokenized texts, preprocessed images and padded, normalised audio
        samples, on the model's device."""
        batch = {}
        if texts is not None:
            tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_text_length,
                                    return_tensors="pt")
            batch["input_ids"], batch["attention_mask"] = tokens["input_ids"], tokens["attention_mask"]
        if images is not None:
            batch["images"] = torch.stack([self._image(img, i) for i, img in enumerate(images)])
        if audio is not None:
            from mope_lightning.data.audio import pad_clips

            batch["audio"], batch["audio_mask"] = pad_clips(self.audio_preprocessor,
                                                            [self._audio(clip, i) for i, clip in enumerate(audio)])
        return {k: v.to(self.device) for k, v in batch.items()}

    def _check_inputs(self, texts, images, audio=None) -> int:
        given = {"text": texts, "image": images, "audio": audio}
        keyword = {"text": "texts", "image": "images", "audio": "audio"}
        reads = self.net.modalities()
        for modality in reads:
            if given[modality] is None:
                raise MopeError(f"predict: this model reads {' and '.join(reads)}; pass {keyword[modality]}=[...]")
        lengths = {keyword[m]: len(v) for m, v in given.items() if v is not None and m in reads}
        if len(set(lengths.values())) != 1:
            shown = " and ".join(f"{k} {n}" for k, n in lengths.items())
            raise MopeError(f"predict: the inputs differ in length ({shown}); give one of each per input")
        for i, text in enumerate(texts or []):
            if not isinstance(text, str) or not text.strip():
                raise MopeError(f"texts[{i}]: empty or not a string; give the text of each input")
        return next(iter(lengths.values()))

    # --- prediction ----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, texts: Optional[Sequence[str]] = None, images: Optional[Sequence[Any]] = None,
                batch_size: int = 64, audio: Optional[Sequence[Any]] = None) -> Predictions:
        """Class probabilities, labels and routing weights of each input (a text and an image, or a text and an audio
        clip). Images: PIL images, file paths, uint8 (C, H, W) tensors, or float tensors already preprocessed by
        `self.transform`. Audio: file paths, or 1-D float arrays of samples at the audio encoder's rate."""
        n = self._check_inputs(texts, images, audio)
        reads = self.net.modalities()
        probs, routing = [], []
        for start in range(0, n, batch_size):
            part = slice(start, start + batch_size)
            batch = self.preprocess(texts[part] if "text" in reads else None,
                                    images[part] if "image" in reads else None,
                                    audio[part] if "audio" in reads else None)
            out = self.net(batch)
            probs.append(probabilities(out.logits.float(), self.task).cpu())
            if out.routing is not None:
                routing.append(out.routing.float().cpu())
        probs = torch.cat(probs)
        return Predictions(predicted_labels(probs, self.classes, self.task), probs, self.classes,
                           torch.cat(routing) if routing else None)

    # --- sharing -------------------------------------------------------------------------------------------
    def trained_weights(self) -> TrainedWeights:
        t = self.trained
        return TrainedWeights(t.source, t.config, self.classes, self.task, self.net.backbone_record(),
                              self.net.trained_state_dict(), t.metrics)

    def save_pretrained(self, out: str | Path, overwrite: bool = False) -> Path:
        """Write the model's adapter folder (`adapter.safetensors`, `adapter_config.json`, `README.md`)."""
        from mope_lightning.adapters import write_adapter

        return write_adapter(out, self.trained_weights(), parameter_summary(self.net), overwrite)

    def push_to_hub(self, repo_id: str, private: Optional[bool] = None, token: Optional[str] = None) -> str:
        """Publish the model's adapter to the Hugging Face Hub; returns the commit URL."""
        from mope_lightning.adapters import push_to_hub

        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "adapter")
            return push_to_hub(folder, repo_id, private=private, token=token)


def parameter_summary(net: nn.Module) -> dict:
    counts = net.parameter_counts()
    return {k: counts[k] for k in ("trainable", "frozen", "total", "trainable_percent") if k in counts}


def build_pretrained(cfg, trained: TrainedWeights, classes_check: Optional[list[str]] = None) -> PretrainedModel:
    """The classifier `cfg.model` describes, with `trained` loaded (fit checked), and `cfg.data`'s preprocessing."""
    from mope_lightning.models import build_model

    # Seeded as `mope fit` builds it, so that random-init encoders (tests, `pretrained: false`) are rebuilt equal;
    # the caller's random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(trained.config.get("seed", 0))
        net = build_model(cfg.model, len(trained.classes))
    load_into(net, trained, classes_check)
    return PretrainedModel(net, trained, cfg.data)


def from_pretrained(source: str | os.PathLike, device: str | torch.device = "cpu", overrides: Sequence[str] = (),
                    revision: Optional[str] = None, cache_dir: Optional[str] = None,
                    token: Optional[str] = None) -> PretrainedModel:
    """Load trained weights and rebuild their frozen encoders.

    Args:
        source: an adapter folder (`mope export`), a `.ckpt` written by `mope fit`, or a Hugging Face Hub repo id
            holding an adapter (downloaded only when `source` is not a local path).
        device: where the model runs.
        overrides: `key=value` changes to the stored config, e.g. `model.text_encoder.name=/local/bert` when an
            encoder lives elsewhere on this machine (its weights must still match the adapter's digests).
        revision, cache_dir, token: for the Hub.
    """
    from mope_lightning.adapters import download_adapter, is_repo_id
    from mope_lightning.config import stored_config

    source = str(source)
    if is_repo_id(source):
        path = download_adapter(source, revision=revision, cache_dir=cache_dir, token=token)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise MopeError(f"{source}: no such adapter folder or checkpoint file (nor a Hub repo id 'org/name')")
    trained = read_trained_weights(path)
    cfg = stored_config(trained.config, overrides, source=str(path))
    return build_pretrained(cfg, trained).to(device)


__all__ = ["PretrainedModel", "Predictions", "from_pretrained"]
