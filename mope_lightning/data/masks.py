"""Segmentation masks: the label of unlabelled pixels, shared by the readers, the loss and the metrics."""

IGNORE_INDEX: int = 255
