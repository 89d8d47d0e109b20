"""Routing statistics of MoPE's experts (or pMoE's dispatcher) and the figures that show expert specialisation.

`RoutingStats` is a torchmetrics `Metric`: every process accumulates its own samples and torchmetrics sums (or
concatenates) the states across processes when `compute()` is called, so the statistics are those of the whole
split under DDP. `compute()` returns plain tensors; the drawing functions turn them into matplotlib figures.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

# Attributes with more values than this (ids, years) get no heatmap, which would be unreadable: their MI still counts.
MAX_HEATMAP_VALUES = 40

STOPWORDS = set(
    """a an the is are was were be been of in on at to for from by with and or not no does do did
it its this that there what which who how image contain contains shape color colour any some as into than""".split()
)


class RoutingStats(Metric):
    """Routing probabilities of an evaluation pass, per layer, expert, class and sample.

    `update(probs, labels, index)` takes the routing probabilities (B, layers, experts), the labels (B,) class
    indices or (B, classes) multi-hot, and each sample's row index in its split.
    """

    full_state_update = False

    def __init__(self, num_layers: int, num_experts: int, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.add_state("prob_sum", torch.zeros(num_layers, num_experts), dist_reduce_fx="sum")
        self.add_state("entropy_sum", torch.zeros(num_layers), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("class_prob_sum", torch.zeros(num_classes, num_layers, num_experts), dist_reduce_fx="sum")
        self.add_state("class_count", torch.zeros(num_classes), dist_reduce_fx="sum")
        self.add_state("sample_index", [], dist_reduce_fx="cat")
        self.add_state("sample_routing", [], dist_reduce_fx="cat")

    def update(self, probs: Tensor, labels: Tensor, index: Tensor) -> None:
        p = probs.detach().float()
        self.prob_sum += p.sum(0)
        self.entropy_sum += -(p * p.clamp_min(1e-12).log()).sum(-1).sum(0)
        self.count += p.shape[0]
        onehot = F.one_hot(labels.long(), self.num_classes).float() if labels.dim() == 1 else labels.float()
        self.class_prob_sum += torch.einsum("bc,blk->clk", onehot, p)
        self.class_count += onehot.sum(0)
        self.sample_index.append(index.detach().long())
        self.sample_routing.append(p)

    def compute(self) -> dict[str, Tensor]:
        count = self.count.clamp_min(1)
        layer_expert = self.prob_sum / count
        class_expert = self.class_prob_sum / self.class_count.clamp_min(1)[:, None, None]
        return {
            "layer_expert": layer_expert,  # (layers, experts) mean routing probability
            "class_expert": class_expert,  # (classes, layers, experts) mean routing probability per class
            "class_count": self.class_count,
            "entropy": self.entropy_sum / count,  # (layers,) mean per-sample routing entropy (nats)
            "max_load": layer_expert.max(-1).values,  # (layers,) share of the busiest expert
            "sample_index": _cat(self.sample_index),
            "sample_routing": _cat(self.sample_routing),
        }


def _cat(state) -> Tensor:
    """A "cat" state: a list of tensors on one process, one tensor once synchronised across processes."""
    if isinstance(state, Tensor):
        return state
    return dim_zero_cat(state) if state else torch.zeros(0)


COLLAPSED_BITS = 1e-3  # entropy of the expert choice below which a layer counts as collapsed


def mutual_information(
    class_expert: Tensor, class_count: Tensor, groups: Optional[list[list[int]]] = None
) -> tuple[Tensor, Tensor]:
    """Soft mutual information between expert and class (or class group), per layer, in bits, and relative to its
    maximum min(H(expert), H(class)). For single-label data; classes may be merged into `groups`.

    A layer whose router sends (nearly) everything to one expert, H(expert) below `COLLAPSED_BITS`, gets relative
    MI 0: its expert choice carries no information, and the ratio of two rounding-sized numbers would be noise."""
    joint = class_expert.double() * class_count.double()[:, None, None]  # (C, L, K) expected routing mass
    if groups is not None:
        joint = torch.stack([joint[g].sum(0) for g in groups])
    joint = joint / joint.sum(dim=(0, 2), keepdim=True).clamp_min(1e-12)
    p_class = joint.sum(-1, keepdim=True)  # (C, L, 1)
    p_expert = joint.sum(0, keepdim=True)  # (1, L, K)
    ratio = joint / (p_class * p_expert).clamp_min(1e-300)
    info = (joint * ratio.clamp_min(1e-300).log2()).sum(dim=(0, 2)).clamp_min(0.0)
    entropy = lambda p: -(p * p.clamp_min(1e-300).log2()).sum(dim=(0, 2))  # noqa: E731
    bound = torch.minimum(entropy(p_class), entropy(p_expert))
    relative = torch.where(bound > COLLAPSED_BITS, info / bound.clamp_min(COLLAPSED_BITS), 0.0).clamp(0.0, 1.0)
    return info.to(class_expert.dtype), relative.to(class_expert.dtype)


def attribute_routing(
    sample_routing: Tensor, sample_index: Tensor, values: Sequence[Sequence[str]]
) -> tuple[list[str], Tensor, Tensor, int]:
    """Mean routing per value of a sample attribute: (the values, (V, layers, experts) mean routing, (V,) sample
    weight, the number of samples whose value is unknown).

    `values[r]` lists the values of split row r; `sample_index` gives each routed sample's row. A sample with several
    values (a film's genres) counts 1/n towards each, so every sample weighs the same in the mutual information;
    one without a value is left out and counted. The per-sample routing is gathered from every process (a "cat"
    state), so this is exact under DDP too."""
    rows = sample_index.long().tolist()
    names = sorted({v for r in rows for v in values[r]})
    slot = {v: i for i, v in enumerate(names)}
    weights = torch.zeros(len(rows), len(names), dtype=torch.float64)
    unknown = 0
    for n, r in enumerate(rows):
        if not values[r]:
            unknown += 1
        for v in values[r]:
            weights[n, slot[v]] += 1.0 / len(values[r])
    routing = sample_routing.double().reshape(len(rows), -1)
    mass = (weights.T @ routing).reshape(len(names), *sample_routing.shape[1:])
    count = weights.sum(0)
    mean = mass / count.clamp_min(1e-12)[:, None, None]
    return names, mean.to(sample_routing.dtype), count.to(sample_routing.dtype), unknown


def top_words(texts: Sequence[str], n: int = 5) -> list[str]:
    words = Counter(w for t in texts for w in re.findall(r"[a-z]+", t.lower()) if w not in STOPWORDS and len(w) > 1)
    return [w for w, _ in words.most_common(n)]


def _figure(rows: int, cols: int, row_chars: int = 8, col_chars: int = 8):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Room for the cells, the row labels beside them and the 45-degree column labels below (pMoE's are long).
    width = max(4.0, 1.2 + 0.75 * cols + 0.07 * max(row_chars - 8, 0))
    height = 1.0 + 0.45 * rows + 0.05 * max(col_chars - 8, 0)
    return plt.subplots(figsize=(width, height), dpi=100)


def heatmap(values: Tensor, row_labels: Sequence[str], col_labels: Sequence[str], title: str):
    """A labelled heatmap with the values written in the cells."""
    fig, ax = _figure(
        len(row_labels), len(col_labels), max(map(len, row_labels), default=0), max(map(len, col_labels), default=0)
    )
    draw_heatmap(fig, ax, values, row_labels, col_labels, title)
    fig.tight_layout()
    return fig


def draw_heatmap(
    fig, ax, values: Tensor, row_labels: Sequence[str], col_labels: Sequence[str], title: str, fontsize: int = 10
) -> None:
    """Draw a labelled heatmap, the values written in the cells, on the axes `ax` of `fig`."""
    values = values.detach().float().cpu()
    image = ax.imshow(values.numpy(), cmap="viridis", vmin=0.0, aspect="auto")
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=45, ha="right")
    ax.set_yticks(range(len(row_labels)), row_labels)
    ax.set_title(title, fontsize=fontsize)
    if values.numel() <= 400:
        high = values.max().item()
        for (r, c), v in zip(
            [(r, c) for r in range(values.shape[0]) for c in range(values.shape[1])], values.flatten().tolist()
        ):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color="black" if v > 0.6 * high else "w")
    fig.colorbar(image, ax=ax, fraction=0.04)


def exemplar_grid(
    images_per_expert: dict[int, list], words_per_expert: dict[int, list[str]], title: str, names: Sequence[str]
):
    """One row per expert: its most strongly routed images, titled with its name and the frequent words of their
    texts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    experts = sorted(images_per_expert)
    cols = max((len(v) for v in images_per_expert.values()), default=1)
    fig, axes = plt.subplots(len(experts), cols, figsize=(1.3 * cols, 1.5 * len(experts)), dpi=100, squeeze=False)
    for row, expert in enumerate(experts):
        for col in range(cols):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(images_per_expert[expert]):
                ax.imshow(images_per_expert[expert][col])
        axes[row][0].set_title(f"{names[expert]}: {' '.join(words_per_expert[expert])}", fontsize=8, loc="left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def layer_names(num_layers: int) -> list[str]:
    return [f"layer {i}" for i in range(num_layers)]


def expert_names(num_experts: int) -> list[str]:
    return [f"expert {k}" for k in range(num_experts)]


def strongest(sample_routing: Tensor, expert: int, n: int) -> list[int]:
    """Positions of the `n` samples routed most strongly to `expert` (layer-averaged routing)."""
    weights = sample_routing.mean(1)[:, expert]
    return weights.topk(min(n, len(weights))).indices.tolist()


def routing_summary(stats: dict[str, Tensor]) -> dict[str, float]:
    """Scalars to log: per-layer entropy (relative to log K) and busiest-expert share."""
    num_experts = stats["layer_expert"].shape[1]
    out = {}
    for i, (h, load) in enumerate(zip(stats["entropy"].tolist(), stats["max_load"].tolist())):
        out[f"entropy/layer_{i:02d}"] = h / math.log(num_experts) if num_experts > 1 else 0.0
        out[f"max_load/layer_{i:02d}"] = load
    return out
