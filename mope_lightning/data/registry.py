"""DataModules by name (`data.name`). Each declares its own config dataclass (`config_class`), which the config
schema (mope_lightning/config/schema.py) looks up here when it reads `data.name`: config imports the datasets, never the
reverse. Each also says which modalities its samples hold (`provided_modalities()`: the text and an image or
audio clip, or an image alone), known without reading the data."""

from mope_lightning.data.base import MultimodalDataModule
from mope_lightning.data.datasets.ade20k import ADE20KDataModule
from mope_lightning.data.datasets.cub200 import CUB200DataModule
from mope_lightning.data.datasets.easy_vqa import EasyVQADataModule
from mope_lightning.data.datasets.easy_vqa_seg import EasyVQASegDataModule
from mope_lightning.data.datasets.flowers102 import Flowers102DataModule
from mope_lightning.data.datasets.food101 import Food101DataModule
from mope_lightning.data.datasets.hateful_memes import HatefulMemesDataModule
from mope_lightning.data.datasets.imagefolder import ImageFolderDataModule
from mope_lightning.data.datasets.jsonl import JsonlDataModule, MMBTConfig, SNLIVEDataModule
from mope_lightning.data.datasets.kvasir_seg import KvasirSegDataModule
from mope_lightning.data.datasets.nyudv2 import NYUDv2DataModule
from mope_lightning.data.datasets.medmnist import MedMNISTDataModule
from mope_lightning.data.datasets.mmimdb import MMIMDBDataModule
from mope_lightning.data.datasets.mustard import MustardDataModule
from mope_lightning.data.datasets.shards import ShardsDataModule
from mope_lightning.data.datasets.tuxpaint import TuxPaintDataModule
from mope_lightning.data.datasets.vtab import VTABDataModule


class MMBTDataModule(JsonlDataModule):
    """MMBT/MoPE's preprocessed format ({train,val,test}.jsonl with text/label/img, and labels.txt)."""

    config_class = MMBTConfig


DATAMODULES: dict[str, type[MultimodalDataModule]] = {
    "easy_vqa": EasyVQADataModule,
    "food101": Food101DataModule,
    "hateful_memes": HatefulMemesDataModule,
    "mmimdb": MMIMDBDataModule,
    "mustard": MustardDataModule,
    "snli_ve": SNLIVEDataModule,
    "tuxpaint": TuxPaintDataModule,
    "mmbt": MMBTDataModule,
    "jsonl": JsonlDataModule,
    # image classification (images only, no text: `provided_modalities()` is ("image",))
    "imagefolder": ImageFolderDataModule,
    "vtab": VTABDataModule,
    "cub200": CUB200DataModule,
    "flowers102": Flowers102DataModule,
    "medmnist": MedMNISTDataModule,
    # semantic segmentation (`task = "segmentation"`, images only; data/datasets/segmentation_base.py)
    "ade20k": ADE20KDataModule,
    "kvasir_seg": KvasirSegDataModule,
    "nyudv2": NYUDv2DataModule,
    "easy_vqa_seg": EasyVQASegDataModule,
}


def dataset_class(data_cfg) -> type[MultimodalDataModule]:
    """The class that reads `data`: the dataset's own, or with `data.shards` the one that streams the dataset from
    the shards `mope shards` wrote (data/shards.py)."""
    return ShardsDataModule if data_cfg.get("shards") else DATAMODULES[data_cfg.name]
