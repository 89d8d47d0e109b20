"""`mope robustness EXP.yaml ckpt=PATH [out=DIR]`: one trained model tested with modalities missing, at several rates.

For every kind in `robustness.kinds` (a modality, `both`, or a set such as audio+video: data/missing.py) and rate in
`robustness.rates`, the test metrics are those of the test split with that kind at that rate
(`data.missing.test.<modality>`, `.both` or `.sets`; the other kinds at 0; rate 0, the complete test split, once
for all kinds). Without `robustness.kinds`, a model of N modalities is tested without each one, and for N >= 3
without each pair that leaves one (a text-image model: image, text, both; analysis/robustness_tables.py
`default_kinds`). The results go to `<out>/robustness.json` as they finish (a run stopped anywhere resumes from
there), then `robustness.md` (a table: kinds x rates) and `robustness.png` (the headline metric against the rate, a
line per kind). `out` defaults to the checkpoint's run directory.

The test split is run once complete, then once per distinct set of modalities the conditions remove from a sample,
with that set removed from every sample (a text-image model's default kinds: three passes, complete, every image
removed, every text removed), however many rates there are. In eval mode a sample's logits depend on that sample
alone, and data/missing.py removes fixed modalities of fixed samples whatever the rate, so each condition's logits
are, sample by sample, those of one of the passes; its metrics are computed from them (tests/test_missing.py checks
them against `mope test` with `data.missing.test` set). They agree to float rounding: a removed text changes the
padded length of its batch, and with it the shapes of the products (6e-8 in the logits of a tiny model), so a rank
metric such as AUROC may order samples whose scores tie to that precision the other way.

In a sweep file, `robustness: {rates: [...], kinds: [...]}` runs this after each fit; the sweep's results then hold
one column per condition (`missing/<kind>=<rate>/<metric>`, a set's kind by its canonical name: audio+video), with
mean ± std over seeds in summary.md, and `plot_robustness.png` draws each cell's curve.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from mope_lightning.config.checks import read_modalities
from mope_lightning.data.missing import MODALITIES, MissingRatesError, lost_by, missing_table, model_removals, rates_of
from mope_lightning.data.options import MissingRates
from mope_lightning.data.registry import dataset_class
from mope_lightning.errors import ConfigError, NonFiniteError
from mope_lightning.fileio import NewFolders, atomic_write, check_writable, claim_output, written_json
from mope_lightning.models.registry import SEGMENTATION
from mope_lightning.analysis.robustness_tables import (
    FILES,
    RESULTS,
    condition_name,
    conditions,
    default_kinds,
    robustness_kinds,
    finished,  # noqa: F401
    metric_of,  # noqa: F401
    robustness_figure,
    table_markdown,
)


def _out_dir(cfg: DictConfig, ckpt: str) -> Path:
    if cfg.robustness.out:
        return Path(cfg.robustness.out).expanduser()
    path = Path(ckpt)
    if path.parent.name == "checkpoints":
        return path.parent.parent
    raise ConfigError(
        "robustness.out: not set, and the checkpoint is not in a run directory's checkpoints/; pass out=DIR"
    )


def _claim(cfg: DictConfig, ckpt: str) -> Path:
    """The output folder, checked before any work (fileio.claim_output): not an input nor inside one, and its
    robustness files only mope's own, of this checkpoint (resumed) or, with overwrite=true, of another."""
    # overwrite=True: whether mope's own results there are resumed or replaced is `_read`'s call
    return claim_output(
        _out_dir(cfg, ckpt),
        "robustness.out",
        inputs=[ckpt],
        overwrite=True,
        files=FILES,
        earlier=lambda folder: written_json(folder / RESULTS, ("checkpoint", "metrics")),
        what="robustness report",
    )


def _read(path: Path, ckpt: str, overwrite: bool) -> dict:
    """The conditions already evaluated for `ckpt` (to resume); another checkpoint's results are not mixed in."""
    if not path.is_file() or overwrite:
        return {}
    stored = json.loads(path.read_text())  # a robustness report mope wrote (checked by `_claim`)
    metrics = stored["metrics"]
    if not isinstance(metrics, dict):
        raise ConfigError(
            f"{path}: its metrics are not a mapping, so it is not a robustness report mope wrote; "
            "choose another out=DIR"
        )
    if stored.get("checkpoint") != ckpt:
        raise ConfigError(
            f"{path}: holds the robustness of another checkpoint ({stored.get('checkpoint')}); pass "
            "another out=DIR, or overwrite=true to replace it"
        )
    return metrics


def _trainer(cfg: DictConfig):
    import lightning as L

    from mope_lightning.training.launch import SafeCheckpointIO

    t = OmegaConf.to_container(cfg.trainer, resolve=True)
    keep = {k: t[k] for k in ("accelerator", "precision", "limit_test_batches", "deterministic") if k in t}
    return L.Trainer(
        **keep,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        plugins=[SafeCheckpointIO()],
        use_distributed_sampler=False,
    )


def _refuse_segmentation(cfg: DictConfig) -> None:
    """The passes here line up per-sample logits of one shape; a segmentation model's are grids of each image's
    size, so its robustness is `mope test` per rate."""
    if dataset_class(cfg.data).task == SEGMENTATION:
        raise ConfigError(
            f"robustness: {cfg.data.name} is a segmentation dataset, whose robustness this command does not "
            "evaluate; run `mope test EXP.yaml ckpt=PATH data.missing.test.depth=RATE` for each rate (it logs "
            "test/miou)"
        )


def _check_model(cfg: DictConfig, net, kinds: list[str]) -> None:
    """Refuse, before evaluating anything, kinds that remove modalities the model lacks or every modality it reads,
    and a model that cannot run without a modality some kind removes."""
    modalities = tuple(cfg.model.modalities)
    foreign = sorted({m for kind in kinds for m in lost_by(kind)} - set(modalities), key=MODALITIES.index)
    if foreign:
        raise ConfigError(
            f"robustness.kinds: removing the {' and '.join(foreign)} needs a model that reads it; this "
            f"one reads {' and '.join(modalities)}, so use robustness.kinds=[{','.join(default_kinds(modalities))}]"
        )
    reads, reader = read_modalities(cfg.model), f"model.fusion={cfg.model.fusion}"
    for kind in kinds:
        try:
            model_removals(rates_of(kind, 1.0), modalities, reads, reader)
        except MissingRatesError as exc:
            raise ConfigError(f"robustness.kinds: {kind}: {exc.message}") from None
    for modality in sorted({m for kind in kinds for m in lost_by(kind)}, key=MODALITIES.index):
        problem = net.missing_problem(modality)
        if problem:
            raise ConfigError(f"robustness.kinds: {problem}")


class PassOutputs(NamedTuple):
    """What one run of the test split gave, per sample (ordered by its row in the split): row, logits and target;
    and the sizes of its batches."""

    rows: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    batch_sizes: list[int]


def _test_pass(cfg: DictConfig, module, trainer, lost: str) -> tuple[list[str], PassOutputs]:
    """The test split's ids and per-sample outputs with the modalities `lost` ("image", "audio+video") removed from
    every sample, or with every sample complete ("")."""
    from mope_lightning.training.datamodule import datamodule as build_datamodule

    data = OmegaConf.merge(cfg.data, {})
    data.missing.test = rates_of(lost, 1.0) if lost else MissingRates()
    datamodule = build_datamodule(data)
    datamodule.attach(module.net.input_spec())
    print(
        f"[mope] robustness: test split with {f'every {lost} missing' if lost else 'every sample complete'}", flush=True
    )
    captured = []

    def capture(net, args, output):
        batch = args[0]
        captured.append(
            (batch["index"].cpu(), output.logits.detach().float().cpu(), module._targets(batch["labels"]).cpu())
        )

    handle = module.net.register_forward_hook(capture)
    try:
        trainer.test(module, datamodule=datamodule, verbose=False)
    finally:
        handle.remove()
    rows, logits, targets = (torch.cat(parts) for parts in zip(*captured))
    order = rows.argsort()  # by row in the split, so that the passes line up sample by sample
    sizes = [len(part[0]) for part in captured]
    return list(datamodule.splits["test"].ids), PassOutputs(rows[order], logits[order], targets[order], sizes)


def _lost_per_sample(ids: list[str], rows: torch.Tensor, kind: str, rate: float, seed: int) -> list[str]:
    """Per evaluated sample, the modalities it loses in condition (kind, rate): "", "image", "audio+video"..."""
    table = missing_table(ids, rates_of(kind, rate), seed) if kind != "none" else None
    return [table[i] if table else "" for i in rows.tolist()]


def _condition_metrics(
    passes: dict[str, PassOutputs], lost: list[str], task: str, classes: list[str], kind: str, rate: float
) -> tuple[dict[str, float], list[str]]:
    """The test metrics of one condition, from each sample's logits in the pass that removed what it loses, and a
    note for each metric left out as undefined on the test split (AUROC when it holds one class)."""
    from mope_lightning.training.lit_module import defined_metrics, make_metrics

    complete = passes[""]
    logits = complete.logits.clone()
    for removed, outputs in passes.items():
        if removed:
            chosen = torch.tensor([m == removed for m in lost])
            logits[chosen] = outputs.logits[chosen]
    metrics = make_metrics(task, len(classes))
    # Batch by batch as in the test step (the test loader is sequential): torchmetrics decides per update whether
    # its inputs are logits or probabilities (multi-label F1), so one update of everything could decide otherwise.
    sizes = complete.batch_sizes
    for batch_logits, batch_targets in zip(logits.split(sizes), complete.targets.split(sizes)):
        metrics.update(batch_logits, batch_targets)
    found, (values, notes) = {}, defined_metrics(metrics, classes)
    for metric, value in values.items():
        value = float(value)
        if not math.isfinite(value):
            raise NonFiniteError(
                f"robustness: test/{metric} is {value} with {kind} missing at {rate:g}; the model "
                "diverged or its weights are broken"
            )
        found[condition_name(kind, rate, metric)] = value
    return found, notes


def _evaluate_conditions(cfg: DictConfig, module, todo: list[tuple[str, float]], save) -> None:
    """Evaluate the conditions `todo` with one pass over the test split per distinct lost set they use (complete
    first, then each set removed from every sample, in rank order: image, text, ..., then sets), calling
    `save(metrics)` as soon as a condition's passes are done."""
    trainer, todo = _trainer(cfg), list(todo)
    if not todo:
        return
    passes: dict[str, PassOutputs] = {}
    ids, passes[""] = _test_pass(cfg, module, trainer, "")
    lost_of = {c: _lost_per_sample(ids, passes[""].rows, *c, cfg.data.missing.seed) for c in todo}
    noted: set[str] = set()
    for lost in needed_passes(lost_of.values()):
        if lost not in passes:
            _, passes[lost] = _test_pass(cfg, module, trainer, lost)
        for condition in [c for c in todo if set(lost_of[c]) <= set(passes)]:
            found, notes = _condition_metrics(passes, lost_of[condition], module.task, module.classes, *condition)
            for note in sorted(set(notes) - noted):  # the test split's classes are the same in every condition
                print(f"[mope] note: robustness: test/{note}", flush=True)
            noted.update(notes)
            save(found)
            todo.remove(condition)


def needed_passes(lost_per_condition) -> list[str]:
    """The passes over the test split that conditions need, given each one's lost set per sample: complete ("")
    first, then each lost set some sample has, single modalities in rank order (image, then text, as the text-image
    passes always ran), then sets by name."""
    lost = {m for per_sample in lost_per_condition for m in per_sample} - {""}
    return ["", *sorted(lost, key=lambda m: (len(lost_by(m)), MODALITIES.index(m) if m in MODALITIES else 0, m))]


def evaluate(cfg: DictConfig) -> Path:
    """Evaluate `cfg.ckpt` at every condition; write robustness.json, .md and .png into the output folder."""
    from mope_lightning.training.build import resolve_ckpt

    ckpt, _ = resolve_ckpt(cfg)
    if ckpt is None:
        raise ConfigError("robustness needs ckpt=PATH: the checkpoint (or adapter folder) to evaluate")
    _refuse_segmentation(cfg)
    r = cfg.robustness
    kinds = robustness_kinds(r.kinds if r.kinds is not None else default_kinds(cfg.model.modalities))
    todo = conditions(list(r.rates), kinds)
    out = _claim(cfg, ckpt)
    results = _read(out / RESULTS, ckpt, r.overwrite)
    with NewFolders() as created:  # a robustness run that fails leaves no empty folder behind
        created.expect(out)
        check_writable(out, "robustness.out")
        _evaluate_into(cfg, ckpt, out, kinds, todo, results)
    print(
        f"[mope] robustness of {ckpt}\n  table                    {out / 'robustness.md'}\n"
        f"  plot                     {out / 'robustness.png'}",
        flush=True,
    )
    return out


def _evaluate_into(cfg: DictConfig, ckpt: str, out: Path, kinds: list[str], todo: list, results: dict) -> None:
    from mope_lightning.weights.adapters import read_trained_weights
    from mope_lightning.weights.checkpoints import load_into
    from mope_lightning.training.build import build

    r = cfg.robustness
    module, datamodule = build(cfg)
    _check_model(cfg, module.net, kinds)
    load_into(module.net, read_trained_weights(ckpt), datamodule.classes)
    todo = [
        (kind, rate)
        for kind, rate in todo
        if not any(name.startswith(condition_name(kind, rate, "")) for name in results)
    ]

    def save(found: dict[str, float]) -> None:
        results.update(found)
        record = {"checkpoint": ckpt, "experiment": cfg.experiment, "metrics": results}
        atomic_write(out / RESULTS, lambda fh: json.dump(record, fh, indent=1))

    _evaluate_conditions(cfg, module, todo, save)
    metric = datamodule.monitor.removeprefix("val/")
    atomic_write(out / "robustness.md", lambda fh: fh.write(table_markdown(results, r.rates, kinds, metric, ckpt)))
    figure = robustness_figure({cfg.experiment: {k: (v, None) for k, v in results.items()}}, r.rates, kinds, metric)
    _save(figure, out / "robustness.png")


def _save(fig, path: Path) -> Optional[Path]:
    import matplotlib.pyplot as plt

    if fig is None:
        return None
    written = atomic_write(path, lambda fh: fig.savefig(fh, format="png"), binary=True)
    plt.close(fig)
    return written


def main(cfg: DictConfig) -> int:
    evaluate(cfg)
    return 0
