"""Input-pipeline throughput: samples/s per DataLoader worker process, against what one GPU would consume.

For the paper recipes (SNLI-VE, Food-101) and easy-VQA, beside the rate at which the paper configuration's training
step would consume samples on one GPU.

    python benchmarks/loader.py [--samples 1536|tiny] [--repeats 3] [--workers 0 1 2]
                                [--recipes snli_ve food101 easy_vqa] [--step-results benchmarks/results-quick.json]
                                [--out benchmarks/results-loader.json]

Each recipe's preprocessing is built by the project's own code from its experiment file (`image_pipeline`, the
transform the DataModule's loaders run: `data.randaugment` on the decoded image, then the encoder's resize, crop and
`data.image_mean`/`image_std` normalisation; the encoder's data config from its architecture, no weights read), and
each image is read by `LoadImage`, as in training. Inputs:
- snli_ve: JPEGs of 500x375 (Flickr30k's usual size), food101: JPEGs of 512x512. They are made from scikit-image's
  sample photographs (its data files, read with PIL; matplotlib's grace_hopper.jpg where scikit-image is not
  installed): a seeded random crop of the target's aspect ratio, a random flip, resized with Lanczos and saved at a
  random JPEG quality in 75-90, in a temporary folder removed afterwards;
- easy_vqa: its installed training images (64x64 PNG) and its preprocessing.

Loader paths, measured in the same run:
- "pil": decode with PIL, transform on the CPU, every epoch (`data.image_cache=false`);
- "cached": the decoded-image cache (data/image_cache.py, `data.image_cache=true`), built once per recipe into the
  temporary folder (its build time is reported): the workers read uint8 rows of the memory-mapped shard and, in
  training, run RandAugment on them (torchvision v2, after the resize); to-float and normalisation run on the whole
  batch on the device, so they are not in the workers' samples/s: their cost per sample, timed on CPU batches (the
  stand-in for the device), is reported beside it ("device_us_per_sample"; "host_us_per_sample" is the rest).

For every recipe, split (train, eval) and loader path, a DataLoader with the recipe's batch size reads `--samples`
samples (the files in turn, from the page cache: no disk
reads are timed) with 0 workers (in-process, the reference), 1 and 2 worker processes. The clock starts when the
first batches have arrived (worker start-up excluded) and stops at the last batch; the median of `--repeats` runs
is reported, as samples/s in all and per worker process. Each stage of the training pipeline (decode, augment,
resize/crop, to-float/normalise) is also timed on its own, in-process, as microseconds per sample.

The model's demand: FLOPs per training sample of the paper configuration (`step_flops` / batch of the `paper`/`mope`
case of `--step-results`, from `make bench-quick`) and the samples/s that implies at 30% and 40% of an H100 SXM's
dense bf16 peak; a paper recipe's loader cores per GPU are that rate over the samples/s of one worker process.
Results go into `--out` under "loader" and, in "ratios", the `loader_cores_*` keys (per path, before: pil, after:
cached) and `cached_over_pil_{train,eval}_per_worker` (SNLI-VE-like JPEGs; other keys are kept), with a
Markdown summary of the whole file beside it (same name, .md).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]

# Recipe -> its experiment file and the size of its generated JPEGs (None: the dataset's installed images).
RECIPES = {
    "snli_ve": {"experiment": "snli_ve.yaml", "size": (500, 375), "model": "paper"},
    "food101": {"experiment": "food101.yaml", "size": (512, 512), "model": "paper"},
    "easy_vqa": {"experiment": "easy_vqa.yaml", "size": None, "model": "default"},
}
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
)
QUALITY = (75, 90)
GPU = {"name": "NVIDIA H100 SXM", "dense_bf16_flops": 989e12}
FRACTIONS = (0.3, 0.4)
STAGES = ("decode", "augment", "resize_crop", "to_float_normalise")
SIZES = {
    "tiny": {"samples": 16, "files": 2, "batch_size": 2, "stage_samples": 4, "repeats": 1},
    "full": {"samples": 1536, "files": 64, "batch_size": None, "stage_samples": 256, "repeats": 3},
}
SEED = 0


# --- inputs ----------------------------------------------------------------------------------------------------------
def photographs() -> tuple[str, list[Path]]:
    """(where they come from, the photograph files): scikit-image's sample data files, found without importing
    scikit-image (its data folder is read with PIL), else matplotlib's sample photograph."""
    spec = importlib.util.find_spec("skimage")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(spec.submodule_search_locations[0]) / "data"
        files = [folder / name for name in SKIMAGE_PHOTOS if (folder / name).is_file()]
        if files:
            version = importlib.metadata.version("scikit-image")
            return f"scikit-image {version} sample data: {', '.join(f.stem for f in files)}", files
    import matplotlib

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return f"matplotlib {matplotlib.__version__} sample data: grace_hopper", [photo]


def write_jpegs(folder: Path, sources: list[Path], size: tuple[int, int], count: int, seed: int) -> list[Path]:
    """`count` JPEGs of `size` (width, height): seeded crops of the target's aspect ratio from the photographs,
    flipped at random, resized with Lanczos, saved at a random quality in QUALITY."""
    from PIL import Image

    rng = random.Random(seed)
    photos = []
    for path in sources:
        with Image.open(path) as img:
            photos.append(img.convert("RGB"))
    width, height = size
    files = []
    for i in range(count):
        photo = photos[i % len(photos)]
        scale = min(photo.width / width, photo.height / height) * rng.uniform(0.8, 1.0)
        w, h = round(width * scale), round(height * scale)
        left, top = rng.randint(0, photo.width - w), rng.randint(0, photo.height - h)
        img = photo.crop((left, top, left + w, top + h)).resize(size, Image.LANCZOS)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        path = folder / f"{width}x{height}-{i:03d}.jpg"
        img.save(path, quality=rng.randint(*QUALITY))
        files.append(path)
    return files


def easy_vqa_images(count: int) -> list[Path]:
    from mope_lightning.data.datasets.easy_vqa import default_root

    return sorted((default_root() / "train" / "images").glob("*.png"))[:count]


def describe_files(files: list[Path]) -> dict:
    from PIL import Image

    with Image.open(files[0]) as img:
        size, kind = list(img.size), img.format
    return {
        "count": len(files),
        "format": kind,
        "size": size,
        "mean_kib": round(statistics.mean(f.stat().st_size for f in files) / 1024, 1),
    }


# --- the project's preprocessing -------------------------------------------------------------------------------------
def recipe_pipelines(name: str) -> tuple[dict, dict]:
    """(the recipe's `data` settings, {split: the transform its loaders run}), from its experiment file."""
    from mope_lightning.training.trainer_config import load_config
    from mope_lightning.data.features import image_pipeline
    from mope_lightning.models.encoder_factory import build_image_encoder

    cfg = load_config([ROOT / "experiments" / RECIPES[name]["experiment"]])
    image_config = build_image_encoder(cfg.model.image_encoder, weights=False).data_config
    return cfg.data, {
        split: image_pipeline(image_config, cfg.data, train=split == "train") for split in ("train", "eval")
    }


def cached_pool(data, transform, files: list[Path], folder: Path) -> tuple[object, float]:
    """(the recipe's images in the decoded-image cache, as its DataModule builds it (`PixelPools`), seconds the
    one-time build took)."""
    from mope_lightning.data.image_cache import pixel_pools

    start = time.perf_counter()
    data = data.copy()
    data.image_cache, data.num_workers = True, 0
    pools = pixel_pools(data, folder, {POOL: files}, transform, "fit")
    return pools, time.perf_counter() - start


POOL = "bench"  # the cached pool's name


def path_loaders(transform, pools, train: bool) -> dict:
    """Loader path -> (file -> what the loader's workers hand over). "pil": today's path, the model's float input;
    "cached": the decoded-image cache's uint8 pixels (augmented in training), made float on the device."""
    from mope_lightning.data.features import LoadImage

    return {"pil": LoadImage(transform), "cached": pools.loader(POOL, train)}


def flatten(transform) -> list:
    from mope_lightning.data.image_transforms import flatten as steps

    return steps(transform)


def transform_stages(transform) -> list[tuple[str, list]]:
    """The transform's steps grouped into STAGES after decoding: everything from the first to-tensor step on converts
    and normalises, resizes and crops before it are "resize_crop", any other step before them "augment"."""
    groups: list[tuple[str, list]] = []
    converting = False
    for step in flatten(transform):
        kind = type(step).__name__
        converting = converting or "ToTensor" in kind
        stage = (
            "to_float_normalise" if converting else "resize_crop" if "Resize" in kind or "Crop" in kind else "augment"
        )
        if groups and groups[-1][0] == stage:
            groups[-1][1].append(step)
        elif any(stage == seen for seen, _ in groups):
            raise ValueError(f"the {stage} steps of {transform} are not contiguous; time them as one stage")
        else:
            groups.append((stage, [step]))
    return groups


# --- measurements ----------------------------------------------------------------------------------------------------
class RepeatedFiles:
    """`samples` items: the files in turn through `load` (a Dataset for DataLoader)."""

    def __init__(self, files: list[Path], samples: int, load):
        self.files, self.samples, self.load = files, samples, load

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, i: int):
        return self.load(self.files[i % len(self.files)])


WORKER_TIMEOUT_S = 120  # seconds a DataLoader waits for one batch before it raises


def loader_rate(load, files: list[Path], samples: int, batch_size: int, workers: int) -> float:
    """Samples/s of a DataLoader after its warm-up: the first batches (each worker's first, plus as many again)
    are left out, so worker start-up is not timed."""
    import torch
    from torch.utils.data import DataLoader

    warmup = max(1, 2 * workers)
    samples = max(samples, (warmup + 2) * batch_size)
    torch.manual_seed(SEED)
    # A timeout, so that a worker that stops answering fails the benchmark instead of hanging it (seen once with
    # workers forked from a pytest-xdist worker, whose other threads fork leaves behind)
    loader = DataLoader(
        RepeatedFiles(files, samples, load),
        batch_size=batch_size,
        num_workers=workers,
        drop_last=True,
        timeout=WORKER_TIMEOUT_S if workers else 0,
    )
    arrivals = [time.perf_counter() for _ in loader]
    return (len(arrivals) - warmup) * batch_size / (arrivals[-1] - arrivals[warmup - 1])


def stage_times(transform, files: list[Path], samples: int) -> dict[str, float]:
    """Microseconds per sample of each stage (None where the transform has none), each timed on its own over the
    previous stage's outputs."""
    import torch
    from torchvision.transforms import Compose

    from mope_lightning.data.features import load_image

    torch.manual_seed(SEED)
    paths = [files[i % len(files)] for i in range(samples)]
    start = time.perf_counter()
    items = [load_image(p) for p in paths]
    out = {"decode": (time.perf_counter() - start) / samples * 1e6}
    for stage, steps in transform_stages(transform):
        run = Compose(steps)
        start = time.perf_counter()
        items = [run(x) for x in items]
        out[stage] = (time.perf_counter() - start) / samples * 1e6
    return {stage: round(out[stage], 1) if stage in out else None for stage in STAGES}  # None: no such step


def cached_stage_times(pools, train: bool, files: list[Path], samples: int, batch_size: int) -> dict[str, float]:
    """Microseconds per sample of the cached path's stages: "decode" reads a row of the memory-mapped shard,
    "augment" is RandAugment on uint8 (training), no "resize_crop" (done once, when the cache is built), and
    "to_float_normalise" runs on whole batches (`DevicePixels`, on the CPU here: the stand-in for the device)."""
    import torch

    torch.manual_seed(SEED)
    read, paths = pools.loader(POOL, train=False), [files[i % len(files)] for i in range(samples)]
    start = time.perf_counter()
    items = [read.row(p) for p in paths]
    out = {"decode": (time.perf_counter() - start) / samples * 1e6}
    if train and pools.augment is not None:
        start = time.perf_counter()
        items = [pools.augment(x) for x in items]
        out["augment"] = (time.perf_counter() - start) / samples * 1e6
    chw = [torch.from_numpy(x).permute(2, 0, 1) for x in items]
    batches = [torch.stack(chw[i : i + batch_size]) for i in range(0, samples, batch_size)]
    start = time.perf_counter()
    for batch in batches:
        pools.device({"images": batch})
    out["to_float_normalise"] = (time.perf_counter() - start) / samples * 1e6
    return {stage: round(out[stage], 1) if stage in out else None for stage in STAGES}


ON_DEVICE = {"cached": ("to_float_normalise",)}  # stages a path runs on the batch on the device, not in the loader


def measure_split(
    load,
    stages: dict,
    files: list[Path],
    size: dict,
    batch_size: int,
    workers: list[int],
    repeats: int,
    on_device: tuple = (),
) -> dict:
    rates: dict[int, list[float]] = {w: [] for w in workers}
    for _ in range(repeats):
        for w in workers:
            rates[w].append(loader_rate(load, files, size["samples"], batch_size, w))
    by_workers = {}
    for w, runs in rates.items():
        median = statistics.median(runs)
        by_workers[str(w)] = {
            "samples_per_s": round(median, 1),
            "per_worker_samples_per_s": round(median / max(w, 1), 1),
            "runs_samples_per_s": [round(r, 1) for r in runs],
        }
    total = sum(v for v in stages.values() if v is not None)
    host = sum(v for k, v in stages.items() if v is not None and k not in on_device)
    return {
        "workers": by_workers,
        "stages_us_per_sample": stages,
        "stages_sum_us_per_sample": round(total, 1),
        "stages_share": {k: round(v / total, 3) for k, v in stages.items() if v is not None},
        "stages_on_device": list(on_device),
        "host_us_per_sample": round(host, 1),
        "device_us_per_sample": round(total - host, 1),
    }


def measure_recipe(name: str, files: list[Path], size: dict, workers: list[int], repeats: int, folder: Path) -> dict:
    data, pipelines = recipe_pipelines(name)
    batch_size = size["batch_size"] or data.batch_size
    pools, build_s = cached_pool(data, pipelines["eval"], files, folder)
    out = {
        "experiment": f"experiments/{RECIPES[name]['experiment']}",
        "model": RECIPES[name]["model"],
        "images": describe_files(files),
        "batch_size": batch_size,
        "randaugment": list(data.randaugment) if data.get("randaugment") else None,
        "transforms": {split: [repr(step) for step in flatten(t)] for split, t in pipelines.items()},
        "paths": {},
        "cache": {
            "files": len(files),
            "build_s": round(build_s, 3),
            "shape": list(pools.images[POOL].shape[1:]),
            "dtype": "uint8",
        },
    }
    for split, transform in pipelines.items():
        train = split == "train"
        for path, load in path_loaders(transform, pools, train).items():
            print(f"{name} {split} {path} ...", flush=True)
            stages = (
                cached_stage_times(pools, train, files, size["stage_samples"], batch_size)
                if path == "cached"
                else stage_times(transform, files, size["stage_samples"])
            )
            out["paths"].setdefault(path, {})[split] = measure_split(
                load, stages, files, size, batch_size, workers, repeats, ON_DEVICE.get(path, ())
            )
    return out


# --- demand ----------------------------------------------------------------------------------------------------------
def model_demand(step_results: Path) -> dict:
    """FLOPs per training sample of the paper configuration and the samples/s one GPU would consume."""
    try:
        results = json.loads(step_results.read_text())
        case = next(r for r in results["results"] if r["config"] == "paper" and r["case"] == "mope")
        flops = case["step_flops"] / case["batch"]
    except (OSError, ValueError, KeyError, TypeError, StopIteration, ZeroDivisionError) as exc:
        raise SystemExit(
            f"{step_results}: no paper/mope case with step_flops and batch ({type(exc).__name__}); "
            "run `make bench-quick` or give --step-results a step benchmark's results"
        ) from None
    return {
        "source": f"{step_results.name}: config paper, case mope, step_flops / batch ({case['batch']})",
        "flops_per_sample": flops,
        "gpu": GPU["name"],
        "gpu_dense_bf16_flops": GPU["dense_bf16_flops"],
        "samples_per_s": {str(f): round(f * GPU["dense_bf16_flops"] / flops) for f in FRACTIONS},
    }


def cores_per_gpu(recipes: dict, demand: dict) -> dict:
    """Per paper recipe, path and split: loader processes one GPU needs, from one worker's samples/s."""
    out = {}
    for name, recipe in recipes.items():
        if recipe["model"] != "paper":  # the demand is the paper configuration's
            continue
        for path, splits in recipe["paths"].items():
            for split, result in splits.items():
                out.setdefault(name, {}).setdefault(path, {})[split] = {
                    fraction: round(rate / per_worker(result), 1) for fraction, rate in demand["samples_per_s"].items()
                }
    return out


def loader_ratios(cores: dict, recipes: dict) -> dict:
    """Loader cores per GPU of each paper recipe's training path, and the cached path's samples/s per worker over
    the PIL path's (host-side work per sample) on SNLI-VE-like JPEGs."""
    ratios = {
        f"loader_cores_h100_{round(float(f) * 100)}pct_{path}_{split}_{name}": n
        for name, paths in cores.items()
        for path, splits in paths.items()
        for split, by_fraction in splits.items()
        if split == "train"
        for f, n in by_fraction.items()
    }
    snli = recipes.get("snli_ve")
    for split in ("train", "eval") if snli else ():
        pil, cached = (per_worker(snli["paths"][path][split]) for path in ("pil", "cached"))
        ratios[f"cached_over_pil_{split}_per_worker"] = round(cached / pil, 2)
    return ratios


def per_worker(result: dict) -> float:
    """Samples/s of one worker process (in-process where the run had no worker)."""
    return result["workers"].get("1", result["workers"].get("0"))["per_worker_samples_per_s"]


# --- report ----------------------------------------------------------------------------------------------------------
def markdown(results: dict) -> str:
    lines = ["# Loader and predict benchmarks", "", "Generated by benchmarks/loader.py from results-loader.json.", ""]
    loader = results.get("loader")
    if loader:
        lines += loader_markdown(loader)
    predict = results.get("predict")
    if predict:
        lines += [
            f"## predict (`{predict['command']}`)",
            "",
            f"{predict['machine']}, {predict['threads']} threads, batch {predict['batch_size']}, "
            f"old code {predict['old_ref']}; samples/s, median of {predict['repeats']}.",
            "",
            "| case | " + " | ".join(predict["results"]) + " | new / old |",
            "|---|" + "---|" * (len(predict["results"]) + 1),
        ]
        for case, ratio in predict["new_over_old"].items():
            cells = [str(variant[case]["samples_per_s"]) for variant in predict["results"].values()]
            lines.append(f"| {case} | " + " | ".join(cells) + f" | {ratio} |")
        lines.append("")
    lines += ["## ratios", "", "| key | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in results.get("ratios", {}).items()]
    return "\n".join(lines) + "\n"


def loader_markdown(loader: dict) -> list[str]:
    machine, demand = loader["machine"], loader["demand"]
    workers = loader["workers"]
    lines = [
        f"## loader (`{loader['command']}`)",
        "",
        f"{machine.get('cpu_model', machine['processor'])}, {machine['cpus']} CPUs, torch {machine['torch']}; "
        f"{loader['samples']} samples per run, median of {loader['repeats']}; JPEGs from "
        f"{loader['photographs']}.",
        "",
        "Samples/s per worker process (0 workers: in-process, the reference); the stages, timed on their own "
        "in-process, in microseconds per sample, and their sums in the loader (host) and on the batch on the "
        "device (the cached path's to-float and normalisation, timed on CPU batches).",
        "",
        "| recipe | split | path | "
        + " | ".join(f"{w} worker{'s' * (w != 1)}" for w in workers)
        + " | "
        + " | ".join(STAGES)
        + " | host | device |",
        "|---|---|---|" + "---|" * (len(workers) + len(STAGES) + 2),
    ]
    for name, recipe in loader["recipes"].items():
        for path, splits in recipe["paths"].items():
            for split, result in splits.items():
                rates = [str(result["workers"][str(w)]["per_worker_samples_per_s"]) for w in workers]
                stages = [str(result["stages_us_per_sample"][s] or "-") for s in STAGES]
                sums = [str(result.get(k, "-")) for k in ("host_us_per_sample", "device_us_per_sample")]
                lines.append(f"| {name} | {split} | {path} | " + " | ".join(rates + stages + sums) + " |")
    lines += [""] + [
        f"Decoded-image cache of {name}: {recipe['cache']['files']} files of "
        f"{'x'.join(map(str, recipe['cache']['shape']))} uint8, built in {recipe['cache']['build_s']} s."
        for name, recipe in loader["recipes"].items()
        if "cache" in recipe
    ]
    lines += [
        "",
        f"Demand: {demand['flops_per_sample'] / 1e9:.1f} GFLOP per training sample ({demand['source']}); "
        f"one {demand['gpu']} at "
        + ", ".join(
            f"{float(f):.0%} of its dense bf16 peak consumes {n} samples/s" for f, n in demand["samples_per_s"].items()
        )
        + ".",
        "",
        "| recipe | path | split | " + " | ".join(f"cores at {float(f):.0%}" for f in demand["samples_per_s"]) + " |",
        "|---|---|---|" + "---|" * len(demand["samples_per_s"]),
    ]
    for name, paths in loader["cores_per_gpu"].items():
        for path, splits in paths.items():
            for split, by_fraction in splits.items():
                lines.append(
                    f"| {name} | {path} | {split} | " + " | ".join(str(n) for n in by_fraction.values()) + " |"
                )
    return lines + [""]


def write_results(out: Path, section: dict, ratios: dict) -> None:
    from mope_lightning.fileio import atomic_write
    from predict import update_results

    try:
        update_results(out, section, ratios, name="loader")
    except ValueError as exc:
        raise SystemExit(f"{out}: not a JSON results file ({exc}); fix it or give another --out") from None
    text = markdown(json.loads(out.read_text()))
    atomic_write(out.with_suffix(".md"), lambda fh: fh.write(text))


# --- main ------------------------------------------------------------------------------------------------------------
def sample_size(text: str) -> dict:
    if text in SIZES:
        return {"name": text, **SIZES[text]}
    try:
        samples = int(text)
    except ValueError:
        samples = 0
    if samples <= 0:
        raise argparse.ArgumentTypeError(
            f"'{text}' is neither a positive number of samples nor one of {', '.join(SIZES)}"
        )
    return {**SIZES["full"], "name": str(samples), "samples": samples}


def positive(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive whole number")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # this tree's package; bench.py's and predict.py's helpers
    import torch

    from bench import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--samples",
        type=sample_size,
        default=sample_size("full"),
        help="samples per run: a number, 'full' (1536) or 'tiny' (16, 2 files each: a smoke test)",
    )
    parser.add_argument("--repeats", type=positive, help="runs per case, the median reported (default: 3; tiny: 1)")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        choices=range(0, 65),
        metavar="N",
        help="DataLoader worker processes (0: in-process)",
    )
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--step-results", type=Path, default=ROOT / "benchmarks" / "results-quick.json")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results-loader.json")
    ns = parser.parse_args(argv)
    size, repeats = ns.samples, ns.repeats or ns.samples["repeats"]
    demand = model_demand(ns.step_results)
    torch.set_num_threads(1)  # the in-process reference on one core, as each worker process runs
    source, sources = photographs()
    recipes = {}
    with tempfile.TemporaryDirectory(prefix="mope-loader-bench-") as tmp:
        for name in ns.recipes:
            shape = RECIPES[name]["size"]
            files = (
                write_jpegs(Path(tmp), sources, shape, size["files"], SEED) if shape else easy_vqa_images(size["files"])
            )
            recipes[name] = measure_recipe(name, files, size, ns.workers, repeats, Path(tmp) / f"cache-{name}")
    section = {
        "command": " ".join(["python benchmarks/loader.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine("cpu"),
        "photographs": source,
        "jpeg_quality": list(QUALITY),
        "seed": SEED,
        "samples": size["samples"],
        "repeats": repeats,
        "workers": ns.workers,
        "recipes": recipes,
        "demand": demand,
    }
    section["cores_per_gpu"] = cores_per_gpu(recipes, demand)
    ratios = loader_ratios(section["cores_per_gpu"], recipes)
    write_results(ns.out, section, ratios)
    print(json.dumps({"cores_per_gpu": section["cores_per_gpu"], "ratios": ratios}, indent=2))
    print(f"written {ns.out} and {ns.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
