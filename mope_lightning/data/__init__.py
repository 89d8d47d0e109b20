"""DataModules by name (`data.name`). Each declares its own config dataclass (`config_class`)."""

from mope_lightning.data.base import ImageTextDataModule, ImageTextDataset, Split, TokenizingCollate
from mope_lightning.data.easy_vqa import EasyVQADataModule

DATAMODULES: dict[str, type[ImageTextDataModule]] = {
    "easy_vqa": EasyVQADataModule,
}

__all__ = ["DATAMODULES", "EasyVQADataModule", "ImageTextDataModule", "ImageTextDataset", "Split",
           "TokenizingCollate"]
