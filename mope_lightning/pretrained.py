"""The Python API: trained weights on their frozen encoders, predicting from raw texts, images and audio clips.

    import mope_lightning
    model = mope_lightning.from_pretrained("adapters/easy_vqa")      # adapter folder, .ckpt, or Hub repo id
    out = model.predict(texts=["what shape is this?"], images=["circle.png"])
    out.labels, out.probs, out.routing
    # a text-audio model: model.predict(texts=[...], audio=["clip.wav"])
    # a segmentation model: model.predict(images=[...]).masks, one (H, W) map of class indices per image


The model applies its own tokenizer, image preprocessing and audio feature extractor (the ones it was trained
with), batches, and runs on the device it was moved to. Every argument is checked before any model work
(api_arguments.py): a `TypeError` or `ValueError` names the argument. Nothing here imports Lightning.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from mope_lightning.api_arguments import (
    check_batch_size,
    check_clip,
    check_depth,
    check_device,
    check_flag,
    check_image,
    check_inputs,
    check_path,
    check_repo_id,
    check_samples,
    check_strings,
    check_text,
    check_video,
    reject_unknown,
)
from mope_lightning.weights.adapters import read_trained_weights
from mope_lightning.weights.checkpoints import TrainedWeights, load_into
from mope_lightning.errors import ArgumentValueError, DataError
from mope_lightning.inference import PADDED_PER_BATCH, Distinct, overlaps, prefetched
from mope_lightning.mask_predictions import original_size_masks, slide_output
from mope_lightning.models.registry import SEGMENTATION
from mope_lightning.predictions import predicted_labels, probabilities


@dataclass
class Predictions:
    labels: list  # the predicted class name of each input (multi-label: the list of names above 0.5)
    probs: Tensor  # (N, classes) class probabilities, float32 on the CPU
    classes: list[str]  # the columns of `probs`
    routing: Optional[Tensor] = None  # (N, routed layers, experts) routing probabilities, for models with a router


@dataclass
class SegmentationPredictions:
    masks: list[Tensor]  # per image, its (H, W) class indices (int64, on the CPU) at the image's original size
    classes: list[str]  # the class of each index
    routing: Optional[Tensor] = None  # (N, routed layers, experts) routing probabilities, for models with a router


class PretrainedModel:
    """A trained classifier with its preprocessing. Build it with `from_pretrained`."""

    def __init__(self, net: nn.Module, trained: TrainedWeights, data_cfg):
        self.net = net.eval()
        self.trained = trained
        self.classes, self.task = list(trained.classes), trained.task
        self.dense = self.task == SEGMENTATION  # predictions are masks at each image's original size
        self.slide, self.seg_stride = False, data_cfg.get("seg_stride")  # sliding-window masks (data.seg_eval)
        self.max_text_length = data_cfg.get("max_text_length", 128)
        self.max_audio_seconds = data_cfg.get("max_audio_seconds")
        self.tokenizer = net.text.tokenizer if "text" in net.modality_set else None
        self.transform = self._image_transform(data_cfg) if "image" in net.modalities() else None
        # The shape of a preprocessed image, which a float tensor given as an image must have.
        self.image_shape = tuple(self.transform(Image.new("RGB", (1, 1))).shape) if self.transform else None
        self.audio_preprocessor = net.audio.preprocessor if "audio" in net.modalities() else None
        self.depth_transform = self._depth_transform(data_cfg) if "depth" in net.modalities() else None
        self.load_video = self._video_loader(data_cfg) if "video" in net.modalities() else None

    def _video_loader(self, data_cfg):
        """A clip's `data.video_frames` frames, each through evaluation's preprocessing of the frame encoder."""
        from mope_lightning.data.features import eval_transform
        from mope_lightning.data.video import LoadVideo

        return LoadVideo(eval_transform(self.net.video.data_config, data_cfg), data_cfg.get("video_frames", 8))

    def _image_transform(self, data_cfg):
        """Evaluation's image preprocessing: a classifier's (resize and centre crop), or a segmenter's (resized
        whole, or to a short side S for sliding windows: data/seg_transforms.py)."""
        if self.dense:
            from mope_lightning.data.seg_transforms import EvalImage, geometry, slide_eval

            geo = geometry(self.net.image_input_config(), data_cfg)
            self.slide = slide_eval(data_cfg, geo)
            return EvalImage(geo, self.slide)
        from mope_lightning.data.features import eval_transform

        return eval_transform(self.net.image_input_config(), data_cfg)

    def _depth_transform(self, data_cfg):
        """Evaluation's depth preprocessing (data/depth.py): millimetres to the depth encoder's normalised input at
        the image's working size."""
        from mope_lightning.data.depth import DepthEncoding
        from mope_lightning.data.seg_transforms import EvalDepth, geometry

        config = self.net.depth.data_config
        encoding = DepthEncoding(data_cfg.get("depth_max_mm", 10000), config["mean"], config["std"])
        return EvalDepth(geometry(self.net.image_input_config(), data_cfg), encoding, self.slide)

    def _depth(self, depth: Path | np.ndarray, i: int) -> Tensor:
        """One checked depth map (`check_depth`) as the depth encoder's input; a file is read as data/depth.py
        reads the dataset's (16-bit, millimetres), and a bad one names `depth[i]`."""
        from mope_lightning.data.depth import read_depth

        if isinstance(depth, Path):
            try:
                depth = read_depth(depth)
            except DataError as exc:
                raise ArgumentValueError(f"depth[{i}]: {exc}") from None
        return self.depth_transform(depth)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: str | torch.device) -> "PretrainedModel":
        self.net.to(check_device("device", device))
        return self

    # --- inputs --------------------------------------------------------------------------------------------
    def _image(self, image: Path | Image.Image | Tensor, i: int) -> tuple[Tensor, tuple[int, int]]:
        """One checked image (`check_image`) as the encoder's input, and its original (height, width) (a preprocessed
        tensor's own); a file that does not decode names `images[i]`."""
        from mope_lightning.data.features import load_image

        if isinstance(image, Tensor) and image.is_floating_point():  # already preprocessed, e.g. by `model.transform`
            return image.detach().to("cpu", torch.float32), tuple(image.shape[-2:])
        try:
            if isinstance(image, Path):
                image = load_image(image)
            elif isinstance(image, Tensor):  # uint8 (C, H, W)
                pixels = image.detach().cpu().permute(1, 2, 0).numpy()
                image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
            return self.transform(image.convert("RGB")), (image.height, image.width)
        except DataError as exc:  # its message names the file and what to do
            raise ArgumentValueError(f"images[{i}]: {exc}") from None
        except (OSError, ValueError) as exc:  # a truncated file behind a lazily read image, a mode PIL cannot convert
            raise ArgumentValueError(
                f"images[{i}]: cannot read it as an RGB image ({exc}); give an image in a mode "
                "PIL converts to RGB (RGB, RGBA, L, P, ...)"
            ) from None

    def _video(self, clip: Path, i: int) -> Tensor:
        try:
            return self.load_video(clip)
        except DataError as exc:  # its message names the file and what is wrong with it
            raise ArgumentValueError(f"video[{i}]: {exc}") from None

    def _audio(self, clip: Path | np.ndarray, i: int) -> np.ndarray:
        """One checked clip (`check_clip`): a file is decoded and resampled to the encoder's rate, and its samples
        checked as an array's are; an array is already float32 at that rate."""
        from mope_lightning.data.audio import load_clip

        if not isinstance(clip, Path):
            return clip
        rate = self.audio_preprocessor.sampling_rate
        try:
            samples = load_clip(clip, rate, self.max_audio_seconds).numpy()
        except DataError as exc:
            raise ArgumentValueError(f"audio[{i}]: {exc}") from None
        check_samples(f"audio[{i}]", samples, self.net.audio.shortest_input, rate, source=clip)
        return samples

    def _check_inputs(
        self, texts: Any, images: Any, audio: Any, depth: Any = None, video: Any = None
    ) -> dict[str, list]:
        """The elements of each modality the model reads, checked (api_arguments.py) before any model work."""
        checks = {
            "text": check_text,
            "image": lambda i, image: check_image(i, image, self.image_shape),
            "audio": lambda i, clip: check_clip(
                i, clip, self.net.audio.shortest_input, self.audio_preprocessor.sampling_rate
            ),
            "depth": check_depth,
            "video": check_video,
        }
        given = {"text": texts, "image": images, "audio": audio, "depth": depth, "video": video}
        return check_inputs(self.net.modalities(), given, checks)

    def _batch(self, modality: str, values: Sequence, indices: Sequence[int]) -> dict[str, Tensor]:
        """The batch entries of one modality's checked inputs, on the CPU; `indices` number them for messages."""
        if modality == "text":
            tokens = self.tokenizer(
                list(values), padding=True, truncation=True, max_length=self.max_text_length, return_tensors="pt"
            )
            return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
        from mope_lightning.data.segmentation import pad_images

        if modality == "image":
            pixels, sizes = zip(*(self._image(image, i) for image, i in zip(values, indices)))
            if not self.dense:
                return {"images": torch.stack(pixels)}
            # each image's original size, at which its mask is predicted; sliding windows' images differ in size
            images, image_size = pad_images(list(pixels))
            return {"images": images, "image_size": image_size, "mask_size": torch.tensor(sizes, dtype=torch.long)}
        if modality == "depth":
            depth, _ = pad_images([self._depth(depth, i) for depth, i in zip(values, indices)])
            return {"depth": depth}
        if modality == "video":
            return {"video": torch.stack([self._video(clip, i) for clip, i in zip(values, indices)])}
        from mope_lightning.data.audio import pad_clips

        audio, mask = pad_clips(self.audio_preprocessor, [self._audio(clip, i) for clip, i in zip(values, indices)])
        return {"audio": audio, "audio_mask": mask}

    def _to_device(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}

    def preprocess(
        self,
        texts: Optional[Sequence[str]] = None,
        images: Optional[Sequence[Any]] = None,
        audio: Optional[Sequence[Any]] = None,
        depth: Optional[Sequence[Any]] = None,
        video: Optional[Sequence[Any]] = None,
    ) -> dict:
        """The batch the classifier reads: tokenized texts, preprocessed images, depth maps and video frames, and
        padded, normalised audio samples, on the model's device. The inputs are checked as `predict` checks them."""
        inputs = self._check_inputs(texts, images, audio, depth, video)
        batch = {}
        for modality, values in inputs.items():
            batch.update(self._batch(modality, values, range(len(values))))
        return self._to_device(batch)

    # --- prediction ----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(
        self,
        texts: Optional[Sequence[str]] = None,
        images: Optional[Sequence[Any]] = None,
        batch_size: int = 64,
        audio: Optional[Sequence[Any]] = None,
        depth: Optional[Sequence[Any]] = None,
        video: Optional[Sequence[Any]] = None,
        **unknown,
    ) -> Predictions | SegmentationPredictions:
        """Class probabilities, labels and routing weights of each input (a text and an image, or a text and an audio
        clip); for a segmentation model, the mask of each image (`SegmentationPredictions`): its class indices at the
        image's original size (a preprocessed float tensor's: the model's input size).

        Each modality the model reads is one list with one element per input, all of one length (one input: a list
        of one; a lone str, image or clip is refused, never taken as one input). Texts: non-empty str. Images: PIL
        images, file paths, uint8 (C, H, W) tensors with 1, 3 or 4 channels, or float tensors already preprocessed
        by `self.transform`; or one (N, C, H, W) tensor. Audio: file paths, or 1-D float arrays or tensors of samples
        at the audio encoder's rate; or one (N, samples) array. Depth (RGB-D segmenters): 16-bit depth PNG paths or
        (H, W) arrays in millimetres, one per image. Video: file paths (their `data.video_frames` frames sampled as
        in training). Every argument is checked before any model work:
        `TypeError` or `ValueError` naming the argument (and the index of a bad element).

        Inputs given more than once (one image for many questions, as a path, the same object, or equal pixels) are
        preprocessed once per batch, and the conditioning encoder runs once per distinct image or text per call
        (audio clips: per batch, whose padding their feature sees; inference.py); the next batch is preprocessed
        while the model runs on this one."""
        reject_unknown("predict", unknown, ("texts", "images", "audio", "depth", "video", "batch_size"))
        batch_size = check_batch_size(batch_size)
        inputs = self._check_inputs(texts, images, audio, depth, video)
        n = len(next(iter(inputs.values())))
        reused = () if self.net.training else self.net.batch_feature_modalities()
        # Prompted texts are tokenized per batch, as before: padding to the batch's longest keeps every result.
        distinct = {m: Distinct(values) for m, values in inputs.items() if m in reused or m != "text"}
        features: dict[str, dict[int, Tensor]] = {m: {} for m in reused}  # distinct input -> feature, until last read
        probs, masks, routing = [], [], []
        spans = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
        prepare = functools.partial(self._prepare, inputs, distinct, reused)
        with contextlib.closing(prefetched(lambda b: prepare(*spans[b]), len(spans), overlaps(self.device))) as ready:
            for (start, stop), (batch, new) in zip(spans, ready):
                batch = self._to_device(batch)
                for m in reused:
                    batch[f"{m}_features"] = self._features(m, distinct[m], features[m], new[m], start, stop)
                out = slide_output(self.net, batch, self.seg_stride) if self.slide else self.net(batch)
                if self.dense:
                    logits = [x.float() for x in out.logits] if self.slide else out.logits.float()  # slide: per image
                    masks += original_size_masks(logits, batch["mask_size"], batch["images"].shape[-2:])
                else:
                    probs.append(probabilities(out.logits.float(), self.task).cpu())
                if out.routing is not None:
                    routing.append(out.routing.float().cpu())
        if self.dense:
            return SegmentationPredictions(masks, self.classes, torch.cat(routing) if routing else None)
        probs = torch.cat(probs)
        return Predictions(
            predicted_labels(probs, self.classes, self.task),
            probs,
            self.classes,
            torch.cat(routing) if routing else None,
        )

    def _prepare(
        self, inputs: dict[str, list], distinct: dict[str, Distinct], reused: tuple[str, ...], start: int, stop: int
    ) -> tuple[dict[str, Tensor], dict[str, tuple[dict, Optional[Tensor]]]]:
        """The CPU work of samples [start, stop), run ahead in a thread: (the batch entries of the modalities read
        as they are; for each reused modality, the encoder inputs of the distinct inputs to encode here, with each
        sample's position among them where they are the batch's own, or None where features outlive the batch)."""
        batch, new = {}, {}
        for m, values in inputs.items():
            d = distinct.get(m)
            if d is None:  # prompted texts: tokenized per batch as before, padded to the batch's longest
                batch.update(self._batch(m, values[start:stop], range(start, stop)))
            elif m in reused and m not in PADDED_PER_BATCH:
                new[m] = (self._distinct_batch(m, values, d, d.first_seen(start, stop)), None)
            else:  # each distinct input of the batch preprocessed once, then given to each of its samples
                here, position = d.within(start, stop)
                once, position = self._distinct_batch(m, values, d, here), torch.from_numpy(position)
                if m in reused:
                    new[m] = (once, position)
                else:
                    batch.update({k: v[position] for k, v in once.items()})
        return batch, new

    def _distinct_batch(self, modality: str, values: list, distinct: Distinct, inputs: Sequence[int]) -> dict:
        """The batch entries of distinct inputs (numbers in `distinct`), named in messages by their first sample."""
        firsts = [distinct.first[j] for j in inputs]
        return self._batch(modality, [values[i] for i in firsts], firsts) if firsts else {}

    def _features(
        self,
        modality: str,
        distinct: Distinct,
        kept: dict[int, Tensor],
        new: tuple[dict[str, Tensor], Optional[Tensor]],
        start: int,
        stop: int,
    ) -> Tensor:
        """The pooled `modality` feature of samples [start, stop). The encoder runs on the distinct inputs `new`
        holds: the batch's own, given to each sample by position; or those first seen here, whose features are
        `kept` until their last sample."""
        encoder_inputs, position = new
        if position is not None:
            return self.net.features(modality, self._to_device(encoder_inputs))[position.to(self.device)]
        if encoder_inputs:
            kept.update(
                zip(distinct.first_seen(start, stop), self.net.features(modality, self._to_device(encoder_inputs)))
            )
        rows = distinct.rows[start:stop]
        feats = torch.stack([kept[j] for j in rows])
        for j in distinct.last_read_before(np.unique(rows), stop):
            del kept[j]
        return feats

    # --- sharing -------------------------------------------------------------------------------------------
    def trained_weights(self) -> TrainedWeights:
        t = self.trained
        return TrainedWeights(
            t.source,
            t.config,
            self.classes,
            self.task,
            self.net.backbone_record(),
            self.net.trained_state_dict(),
            t.metrics,
        )

    def save_pretrained(self, out: str | Path, overwrite: bool = False) -> Path:
        """Write the model's adapter folder (`adapter.safetensors`, `adapter_config.json`, `README.md`)."""
        check_path("out", out, "the adapter folder to write")
        check_flag("overwrite", overwrite)
        from mope_lightning.weights.adapters import write_adapter

        return write_adapter(out, self.trained_weights(), parameter_summary(self.net), overwrite)

    def push_to_hub(self, repo_id: str, private: Optional[bool] = None, token: Optional[str] = None) -> str:
        """Publish the model's adapter to the Hugging Face Hub; returns the commit URL."""
        from mope_lightning.weights.adapters import push_to_hub

        check_repo_id("repo_id", repo_id)
        if private is not None:
            check_flag("private", private)
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
        net = build_model(cfg.model, len(trained.classes), task=trained.task)
    load_into(net, trained, classes_check)
    return PretrainedModel(net, trained, cfg.data)


def from_pretrained(
    source: str | os.PathLike,
    device: str | torch.device = "cpu",
    overrides: Sequence[str] = (),
    revision: Optional[str] = None,
    cache_dir: Optional[str] = None,
    token: Optional[str] = None,
) -> PretrainedModel:
    """Load trained weights and rebuild their frozen encoders.

    Args:
        source: an adapter folder (`mope export`), a `.ckpt` written by `mope fit`, or a Hugging Face Hub repo id
            holding an adapter (downloaded only when `source` is not a local path).
        device: where the model runs.
        overrides: `key=value` changes to the stored config, e.g. `model.text_encoder.name=/local/bert` when an
            encoder lives elsewhere on this machine (its weights must still match the adapter's digests).
        revision, cache_dir, token: for the Hub.

    Raises `TypeError` or `ValueError` naming the argument for a source or device of the wrong type or value (a
    local path that does not exist, a CUDA device this machine lacks), or overrides given as one str.
    """
    from mope_lightning.weights.adapters import download_adapter, is_repo_id
    from mope_lightning.config.model import stored_config

    check_path("source", source, "an adapter folder, a .ckpt file or a Hub repo id 'org/name'")
    device = check_device("device", device)
    overrides = check_strings("overrides", overrides, "key=value changes")
    source = str(source)
    if is_repo_id(source):
        path = download_adapter(source, revision=revision, cache_dir=cache_dir, token=token)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise ArgumentValueError(
                f"source: {source}: no such adapter folder or checkpoint file (nor a Hub repo id 'org/name')"
            )
    trained = read_trained_weights(path)
    cfg = stored_config(trained.config, overrides, source=str(path))
    return build_pretrained(cfg, trained).to(device)


__all__ = ["PretrainedModel", "Predictions", "SegmentationPredictions", "from_pretrained"]
