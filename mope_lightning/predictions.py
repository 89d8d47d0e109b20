"""From logits to labelled predictions: class probabilities, predicted class names, and the predictions CSV.

One definition for `mope predict` (a dataset split or new data) and the Python API: softmax over the classes
(single label), a sigmoid per class (multi-label, where every class above 0.5 is predicted, joined by `|` in CSV).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import IO, Sequence

from torch import Tensor


def probabilities(logits: Tensor, task: str) -> Tensor:
    return logits.sigmoid() if task == "multilabel" else logits.softmax(-1)


def predicted_labels(probs: Tensor, classes: Sequence[str], task: str) -> list:
    """The class name of each row (multi-label: the list of class names with probability > 0.5)."""
    if task == "multilabel":
        return [[c for c, p in zip(classes, row) if p > 0.5] for row in probs.tolist()]
    return [classes[i] for i in probs.argmax(-1).tolist()]


def write_predictions_csv(fh: IO, ids: Sequence, probs: Tensor, classes: Sequence[str], task: str) -> None:
    """A header `id, prediction, prob_<class>...`, then one row per input."""
    writer = csv.writer(fh)
    writer.writerow(["id", "prediction", *(f"prob_{c}" for c in classes)])
    for sample_id, label, row in zip(ids, predicted_labels(probs, classes, task), probs.tolist()):
        writer.writerow([sample_id, "|".join(label) if isinstance(label, list) else label, *(f"{p:.6f}" for p in row)])


def is_predictions_csv(path: Path) -> bool:
    """Whether `path` starts with the header `write_predictions_csv` writes: the predictions mope wrote before, which
    `predict.overwrite=true` may replace (and no other file)."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline(65536)
    except OSError:
        return False
    return first.startswith(b"id,prediction,prob_")
