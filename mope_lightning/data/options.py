"""The options every dataset has (`DataConfig`, the `data:` section of a config); each dataset module subclasses it
with its own. Plain dataclasses: the config schema (mope_lightning/config/schema.py) imports them, never the reverse."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from omegaconf import MISSING


@dataclass
class MissingRates:
    """What share of one split's samples lose a modality, or a set of them (data/missing.py). The shares add up to at
    most 1: each sample is removed by one of them at most."""

    image: float = 0.0  # this share of samples lose their image
    text: float = 0.0  # this share lose their text
    audio: float = 0.0  # this share lose their audio clip
    video: float = 0.0  # this share lose their video
    depth: float = 0.0  # this share lose their depth map (RGB-D segmentation: a blank, unknown depth instead)
    both: float = 0.0  # this share lose one of text and image: half their text, half their image (the MMP protocol)
    # shares that lose several modalities at once, by the set's modalities joined by "+": {"audio+video": 0.3}
    sets: Dict[str, float] = field(default_factory=dict)


@dataclass
class MissingConfig:
    """Samples with a missing modality, per split: seeded and fixed per sample (the same in every epoch and
    process), at exactly the requested rates."""

    train: MissingRates = field(default_factory=MissingRates)
    val: MissingRates = field(default_factory=MissingRates)
    test: MissingRates = field(default_factory=MissingRates)
    seed: int = 0


@dataclass
class DataConfig:
    """Options every DataModule has. Datasets subclass this with their own options."""

    name: str = MISSING
    root: Optional[str] = None  # dataset directory; see data/README.md
    batch_size: int = 32  # per device
    eval_batch_size: Optional[int] = None  # default: 2 x batch_size
    num_workers: int = 0
    pin_memory: Optional[bool] = None  # default: true when training on a GPU
    persistent_workers: bool = True  # only when num_workers > 0
    prefetch_factor: Optional[int] = None  # batches each worker loads ahead; default: 4 with a GPU, else torch's 2
    max_text_length: int = 128  # tokens; longer texts are truncated
    video_frames: int = 8  # video: frames sampled uniformly from each clip (a shorter clip repeats frames)
    image_size: Optional[int] = None  # default: the image encoder's own input size
    crop_pct: Optional[float] = None  # default: the image encoder's own; 1.0 keeps the whole image
    crop_mode: Optional[str] = None  # center (resize the shorter side) | squash (resize to a square); default: own
    image_mean: Optional[List[float]] = None  # default: the image encoder's own normalisation
    image_std: Optional[List[float]] = None
    randaugment: Optional[List[int]] = None  # [num_ops, magnitude]: RandAugment on training images, e.g. [2, 7]
    cache_features: bool = True  # cache frozen, unprompted encoders' features once per distinct input
    cache_dir: str = "data/cache"
    # Decode each image once into uint8 shards under cache_dir, normalise batches on the device (data/image_cache.py):
    # true | false | null (default: true for training that reads pixels). It moves RandAugment after the resize.
    image_cache: Optional[bool] = None
    # Stream the dataset from the WebDataset shards `mope shards` wrote (a folder or http(s) URL) instead of reading
    # its files (data/shards.py); shuffle_buffer: samples each loader worker shuffles among, on top of shard order
    shards: Optional[str] = None
    shuffle_buffer: int = 1000
    on_bad_sample: str = "fail"  # fail | skip: what to do with samples that have a problem (see check-data)
    check_images: bool = True  # decode every image in full once when the dataset index is built (kept with it)
    # The low-data protocol (data/subsets.py): a seeded, label-stratified subset of the train split, nested across
    # sizes for one seed; validation and test are untouched. Set at most one of the two sizes.
    train_fraction: float = 1.0  # keep round(f x N) training samples, 0 < f <= 1
    shots_per_class: Optional[int] = None  # keep this many training samples of every class
    subset_seed: int = 0
    # Samples that lose modalities (data/missing.py), e.g. data.missing.test.image=0.7
    missing: MissingConfig = field(default_factory=MissingConfig)
