"""Views of expert specialisation: the figures and scalars logged every validation epoch, and the routing report
`mope analyze` writes (heatmaps, exemplars, per-sample CSV, Markdown summary)."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from mope_lightning.data.audio import spectrogram_image
from mope_lightning.data.video import frame_strip
from mope_lightning.data.features import load_image
from mope_lightning.data.samples import Split
from mope_lightning.fileio import atomic_write, claim_output, written_json
from mope_lightning.models.pmoe import CARRIED
from mope_lightning.analysis.routing import (
    MAX_HEATMAP_VALUES,
    attribute_routing,
    exemplar_grid,
    expert_names,
    heatmap,
    layer_names,
    mutual_information,
    routing_summary,
    strongest,
    top_words,
)

# The files every report may hold; a report also draws <attribute>_expert.png per sample attribute.
REPORT_FILES = (
    "routing.json",
    "summary.md",
    "routing.csv",
    "layer_expert.png",
    "class_expert.png",
    "group_expert.png",
    "exemplars.png",
)


def claim_report_folder(out: str | Path, inputs: list, overwrite: bool, files=REPORT_FILES) -> Path:
    """`analyze.out` checked (fileio.claim_output): a folder, not an input nor inside one, whose files named like
    the report's are replaced only when they are a report mope wrote (its routing.json) and overwrite=true."""
    return claim_output(
        out,
        "out",
        inputs=inputs,
        overwrite=overwrite,
        files=files,
        earlier=lambda folder: written_json(folder / "routing.json", ("checkpoint", "split")),
        what="routing report",
    )


class RoutingView:
    """Routing statistics of one pass over a split, with the split's texts, media files (images or audio clips, shown
    as spectrograms) and class names."""

    def __init__(
        self,
        stats: dict[str, Tensor],
        split: Split,
        files: Optional[list[Path]],
        classes: list[str],
        groups: Optional[dict[str, list[int]]],
        multilabel: bool,
        labels: Optional[tuple[list[str], list[str]]] = None,
        media: str = "image",
        attributes: Optional[list[str]] = None,
    ):
        layers, experts = stats["layer_expert"].reshape(-1, stats["class_expert"].shape[-1]).shape
        # torchmetrics squeezes one-element results (one routed layer, one class, one sample): restore the shapes
        stats = {
            **stats,
            "layer_expert": stats["layer_expert"].reshape(layers, experts),
            "class_expert": stats["class_expert"].reshape(len(classes), layers, experts),
            "entropy": stats["entropy"].reshape(layers),
            "max_load": stats["max_load"].reshape(layers),
            "class_count": stats["class_count"].reshape(len(classes)),
            "sample_index": stats["sample_index"].reshape(-1),
            "sample_routing": stats["sample_routing"].reshape(-1, layers, experts),
        }
        self.stats, self.split, self.files, self.classes = stats, split, files, classes
        self.groups, self.multilabel, self.media = groups, multilabel, media
        self.attribute_names = attributes  # the sample attributes to relate routing to; None: all
        # Row and column names: "layer i" and "expert k" for MoPE; (expert model, layer) and candidates for pMoE.
        self.layer_labels, self.expert_labels = labels or (layer_names(layers), expert_names(experts))

    @property
    def num_experts(self) -> int:
        return self.stats["layer_expert"].shape[1]

    @functools.cached_property
    def attributes(self) -> dict[str, tuple[list[str], Tensor, Tensor, int]]:
        """Per sample attribute of the split (image shape, genre, ...): its values, the mean routing per value
        (values, layers, experts), the weight of each value and the number of samples without one. Computed once
        per view: the scalars, figures, JSON and summary of one validation all read it."""
        s = self.stats
        attributes = {
            k: v for k, v in self.split.attributes.items() if self.attribute_names is None or k in self.attribute_names
        }
        # single-label data has the class's own statistics (class_expert, mi_class); multi-label data gets its
        # labels as an attribute
        if self.multilabel and self.attribute_names is None:
            labels = [[self.classes[c] for c in label] for label in self.split.labels]
            if labels not in attributes.values():  # a segmented image's labels are its `classes` attribute
                attributes["labels"] = labels
        return {
            name: attribute_routing(s["sample_routing"], s["sample_index"], values)
            for name, values in sorted(attributes.items())
            if len(s["sample_index"])
        }

    def specialization(self) -> dict[str, Tensor]:
        """Mutual information between expert and class (and class group; single-label data), and between expert
        and each sample attribute, per layer."""
        out = {}
        for name, (_, value_expert, value_count, _) in self.attributes.items():
            if len(value_count) > 1:
                out.update(
                    zip((f"mi_{name}_bits", f"mi_{name}_relative"), mutual_information(value_expert, value_count))
                )
        if self.multilabel or self.classes_present() < 2:  # one class: MI is 0 whatever the routing
            return out
        s = self.stats
        out.update(zip(("mi_class_bits", "mi_class_relative"), mutual_information(s["class_expert"], s["class_count"])))
        if self.groups and sum(bool(s["class_count"][idx].sum()) for idx in self.groups.values()) > 1:
            grouped = mutual_information(s["class_expert"], s["class_count"], list(self.groups.values()))
            out.update(zip(("mi_group_bits", "mi_group_relative"), grouped))
        return out

    def classes_present(self) -> int:
        return int((self.stats["class_count"] > 0).sum())

    def scalars(self) -> dict[str, float]:
        out = {f"routing/{k}": v for k, v in routing_summary(self.stats).items()}
        for key, values in self.specialization().items():
            out[f"routing/{key}"] = values.mean().item()
        return out

    def figures(self, exemplars: int = 8) -> dict[str, object]:
        s, experts = self.stats, self.expert_labels
        present = s["class_count"] > 0
        figs = {
            "layer_expert": heatmap(
                s["layer_expert"], self.layer_labels, experts, "mean routing probability per layer"
            ),
            "class_expert": heatmap(
                s["class_expert"][present].mean(1),
                [c for c, p in zip(self.classes, present.tolist()) if p],
                experts,
                "mean routing probability per class (averaged over layers)",
            ),
        }
        if self.groups:
            counts = s["class_count"]
            rows = [
                (s["class_expert"][idx] * counts[idx, None, None]).sum(0).mean(0) / counts[idx].sum().clamp_min(1)
                for idx in self.groups.values()
            ]
            figs["group_expert"] = heatmap(
                torch.stack(rows), list(self.groups), experts, "mean routing probability per class group"
            )
        for name, (values, value_expert, _, _) in self.attributes.items():
            if len(values) <= MAX_HEATMAP_VALUES:
                figs[f"{name}_expert"] = heatmap(
                    value_expert.mean(1), values, experts, f"mean routing probability per {name} (averaged over layers)"
                )
        if exemplars and len(s["sample_index"]) and self.files is not None:  # None: pixels streamed from shards
            figs["exemplars"] = self.exemplar_figure(exemplars)
        return figs

    def exemplars(self, n: int) -> dict[int, tuple[list[int], list[str]]]:
        """For each expert: the split rows routed most strongly to it, and the frequent words of their texts."""
        out = {}
        for expert in range(self.num_experts):
            rows = [int(self.stats["sample_index"][i]) for i in strongest(self.stats["sample_routing"], expert, n)]
            out[expert] = (rows, top_words([self.split.texts[r] for r in rows]))
        return out

    def exemplar_figure(self, n: int):
        chosen = self.exemplars(n)
        images = {
            k: [_thumbnail(self.files[self.split.media_index[r]], self.media) for r in rows]
            for k, (rows, _) in chosen.items()
        }
        return exemplar_grid(
            images,
            {k: words for k, (_, words) in chosen.items()},
            "samples routed most strongly to each expert (layer-averaged)",
            self.expert_labels,
        )

    def dispatch_path(self) -> list[dict]:
        """pMoE's path of experts (the paper's Fig. 2): per (expert, layer), the candidate prompt set its dispatcher
        weights most on average over the split, and that weight; empty for a model that routes prompt experts."""
        if not self.expert_labels or self.expert_labels[0] != CARRIED:
            return []
        weights, chosen = self.stats["layer_expert"].max(dim=1)
        return [
            {"layer": row, "chosen": self.expert_labels[k], "weight": round(w, 4)}
            for row, k, w in zip(self.layer_labels, chosen.tolist(), weights.tolist())
        ]

    def to_json(self) -> dict:
        keep = ("layer_expert", "entropy", "max_load", "class_count")
        out = {k: self.stats[k].tolist() for k in keep}
        out.update(layer_labels=self.layer_labels, expert_labels=self.expert_labels)
        if self.dispatch_path():
            out["dispatch_path"] = self.dispatch_path()
        out.update({k: v.tolist() for k, v in self.specialization().items()})
        out["attributes"] = {
            name: {
                "values": values,
                "routing": value_expert.mean(1).tolist(),
                "weight": value_count.tolist(),
                "unknown": unknown,
            }
            for name, (values, value_expert, value_count, unknown) in self.attributes.items()
        }
        return out


def _thumbnail(path: Path, media: str = "image", size: int = 96):
    if media == "audio":
        return spectrogram_image(path, size)
    if media == "video":
        return frame_strip(path, size)
    img = load_image(path)  # files, and rows of a .npz array (MedMNIST)
    img.thumbnail((size, size))
    return img


def write_report(view: RoutingView, out: Path, header: dict, exemplars: int = 8) -> None:
    """Heatmaps (PNG), exemplars (PNG), per-sample routing (CSV) and a Markdown summary, into `out`."""
    import matplotlib.pyplot as plt

    figures = view.figures(exemplars)
    # The names are known now (an attribute's heatmap among them): none may be a file mope did not write. The
    # command checked overwrite=true before any work where an earlier report was here.
    claim_report_folder(out, [], True, [*REPORT_FILES, *(f"{name}.png" for name in figures)])
    out.mkdir(parents=True, exist_ok=True)
    # routing.json first: it marks the folder as a report of mope's, which a later overwrite=true may replace.
    atomic_write(out / "routing.json", lambda fh: json.dump({**header, **view.to_json()}, fh, indent=1))
    for name, fig in figures.items():
        atomic_write(out / f"{name}.png", lambda fh, f=fig: f.savefig(fh, format="png"), binary=True)
        plt.close(fig)
    atomic_write(out / "routing.csv", lambda fh: _write_csv(view, fh))
    atomic_write(out / "summary.md", lambda fh: fh.write(_summary(view, header, exemplars)))  # last: a complete report


def _write_csv(view: RoutingView, fh) -> None:
    routing, rows = view.stats["sample_routing"], view.stats["sample_index"].tolist()
    layers, experts = routing.shape[1], routing.shape[2]
    writer = csv.writer(fh)
    writer.writerow(
        [
            "id",
            "label",
            *(f"mean_e{k}" for k in range(experts)),
            *(f"l{i}_e{k}" for i in range(layers) for k in range(experts)),
        ]
    )
    for pos, row in sorted(enumerate(rows), key=lambda t: t[1]):
        label = view.split.labels[row]
        names = "|".join(view.classes[c] for c in (label if isinstance(label, list) else [label]))
        weights = routing[pos]
        writer.writerow(
            [
                view.split.ids[row],
                names,
                *(f"{v:.5f}" for v in weights.mean(0).tolist()),
                *(f"{v:.5f}" for v in weights.flatten().tolist()),
            ]
        )


def _summary(view: RoutingView, header: dict, exemplars: int) -> str:
    s = view.stats
    lines = (
        ["# Routing report", ""]
        + [f"- {k}: {v}" for k, v in header.items()]
        + [
            f"- samples: {len(s['sample_index'])}",
            f"- routed layers: {s['layer_expert'].shape[0]}, experts: {view.num_experts}",
            "",
        ]
    )
    spec = view.specialization()
    if "mi_class_bits" in spec:
        lines += [
            "## Specialisation",
            "",
            "Soft mutual information between the expert a sample is routed to and its class, in bits, and "
            "relative to its maximum min(H(expert), H(class)) (0: routing ignores the class, or one expert takes "
            "every sample; 1: the expert determines the class group or vice versa).",
            "",
        ]
        cols = ["layer", "entropy (nats)", "busiest expert share", "MI class (bits)", "MI class (relative)"]
        if "mi_group_bits" in spec:
            cols += ["MI group (bits)", "MI group (relative)"]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for i in range(s["layer_expert"].shape[0]):
            cells = [
                view.layer_labels[i],
                f"{s['entropy'][i]:.3f}",
                f"{s['max_load'][i]:.3f}",
                f"{spec['mi_class_bits'][i]:.3f}",
                f"{spec['mi_class_relative'][i]:.3f}",
            ]
            if "mi_group_bits" in spec:
                cells += [f"{spec['mi_group_bits'][i]:.3f}", f"{spec['mi_group_relative'][i]:.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
        mean = [f"mean relative MI with the class: **{spec['mi_class_relative'].mean():.3f}**"]
        if "mi_group_relative" in spec:
            mean.append(f"with the class group: **{spec['mi_group_relative'].mean():.3f}**")
        lines += ["", "; ".join(mean) + ".", ""]
    elif not view.multilabel:
        only = [c for c, n in zip(view.classes, s["class_count"].tolist()) if n]
        lines += [
            "## Specialisation",
            "",
            f"Not measured: the samples are all of one class ({', '.join(only)}), and "
            "the mutual information between expert and class is 0 whatever the routing.",
            "",
        ]
    lines += _attribute_lines(view, spec)
    lines += _path_lines(view)
    lines += [
        "## Experts",
        "",
        f"Top words of the {exemplars} samples routed most strongly to each expert "
        "(layer-averaged); their images are in exemplars.png.",
        "",
    ]
    for expert, (rows, words) in view.exemplars(exemplars).items():
        labels = [
            view.classes[c]
            for r in rows
            for c in (view.split.labels[r] if isinstance(view.split.labels[r], list) else [view.split.labels[r]])
        ]
        shown = f"words: {', '.join(words)}; " if words else ""  # image-only samples have no words
        lines.append(
            f"- {view.expert_labels[expert]}: load {s['layer_expert'][:, expert].mean():.3f}; "
            f"{shown}labels: {', '.join(f'{c} x{n}' for c, n in _counts(labels))}"
        )
    lines += [
        "",
        "Files: "
        + ", ".join(
            f"`{f}`"
            for f in (
                "layer_expert.png",
                "class_expert.png",
                "group_expert.png",
                "exemplars.png",
                "routing.csv",
                "routing.json",
            )
        ),
    ]
    return "\n".join(lines) + "\n"


def _path_lines(view: RoutingView) -> list[str]:
    """pMoE's dispatch path: the table of (expert, layer) rows, the candidate set each takes most, and all weights."""
    path = view.dispatch_path()
    if not path:
        return []
    sets = view.expert_labels
    lines = [
        "## Dispatch path",
        "",
        f"Per expert and layer, the mean dispatch weight of each candidate prompt set over the split ({CARRIED}: "
        "the expert's own prompts from its previous layer) and the set weighted most, in bold.",
        "",
        "| expert layer | " + " | ".join(sets) + " |",
        "|" + "---|" * (len(sets) + 1),
    ]
    for i, step in enumerate(path):
        cells = [f"{w:.3f}" for w in view.stats["layer_expert"][i].tolist()]
        chosen = sets.index(step["chosen"])
        cells[chosen] = f"**{cells[chosen]}**"
        lines.append(f"| {step['layer']} | " + " | ".join(cells) + " |")
    return lines + [""]


def _attribute_lines(view: RoutingView, spec: dict[str, Tensor]) -> list[str]:
    attributes = view.attributes
    if not attributes:
        return []
    lines = [
        "## Routing by sample attribute",
        "",
        "Soft mutual information between the expert and each attribute of the samples (averaged over layers), "
        "relative to its maximum, and in bits; the heatmaps are `<attribute>_expert.png`.",
        "",
        "| attribute | values | samples without one | MI (relative) | MI (bits) |",
        "|---|---|---|---|---|",
    ]
    for name, (values, _, _, unknown) in attributes.items():
        relative, bits = spec.get(f"mi_{name}_relative"), spec.get(f"mi_{name}_bits")
        shown = f"{relative.mean():.3f} | {bits.mean():.3f}" if relative is not None else "- | -"
        lines.append(f"| {name} | {len(values)} | {unknown} | {shown} |")
    return lines + [""]


def _counts(items: list[str]) -> list[tuple[str, int]]:
    from collections import Counter

    return Counter(items).most_common()
