"""`from_pretrained(...).predict` throughput: this tree's code against an earlier commit's, in one run.

    python benchmarks/predict.py [--samples 512] [--repeats 5] [--batch-size 64] [--old-ref 4d2fb14]
                                 [--out benchmarks/results-loader.json]

Two worker processes load the same adapter (the default experiment, MiniLM-L6 prompted, conditioned on MobileNetV2;
its untrained initial weights, since throughput does not depend on their values): one imports this tree's
mope_lightning, the other the package as it was at `--old-ref` (extracted with `git archive`), through PYTHONPATH.
They take turns on each case, in alternating order, so both see the same machine; each is timed after a warm-up,
and the median of the repeats is reported. The new code is also timed with the preprocessing thread switched off
(`inference.PREFETCH = False`), which separates what deduplication gives from what the overlap gives.

Cases, each given as file paths (decoded by predict) and as PIL images loaded one per input (distinct objects, equal
pixels where questions share an image, as a caller reading rows would make them):
- pairs: the first `--samples` easy-VQA test questions, about 10 per image;
- unique: one question for each of the first `--samples` test images (at most the split's 1,000): nothing to share,
  so the cost of finding repeats (hashing in-memory images) shows here.

Both workers' class probabilities for every case are compared: the largest absolute difference is reported, and
the run fails if it exceeds 1e-5. The results go into `--out` under "predict", with the ratios under "ratios"
(`api_predict_new_over_old`: the lower of the two pairs cases, new over old samples/s); other keys of an existing
file are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
OLD_REF = "4d2fb14"  # main before issue 36's inference changes: every input through the conditioning encoder
CASES = ("pairs_pil", "pairs_paths", "unique_pil", "unique_paths")
TOLERANCE = 1e-5


# --- worker: one code version, answering one JSON command per stdin line -------------------------------------------
def easy_vqa_inputs(kind: str, samples: int) -> tuple[list[str], list[Path]]:
    from mope_lightning.data.datasets.easy_vqa import default_root

    folder = default_root() / "test"
    questions = json.loads((folder / "questions.json").read_text())
    if kind == "unique":
        first_of_image = {}
        for q in questions:
            first_of_image.setdefault(q[2], q)
        questions = list(first_of_image.values())
    questions = questions[:samples]
    return [q[0] for q in questions], [folder / "images" / f"{q[2]}.png" for q in questions]


def load_cases(samples: int) -> dict:
    from PIL import Image

    cases = {}
    for kind in ("pairs", "unique"):
        texts, paths = easy_vqa_inputs(kind, samples)
        images = []
        for path in paths:
            with Image.open(path) as img:
                images.append(img.convert("RGB"))
        cases[f"{kind}_pil"], cases[f"{kind}_paths"] = (texts, images), (texts, paths)
    return cases


def worker(adapter: str, samples: int, batch_size: int) -> None:
    import torch

    import mope_lightning

    model = mope_lightning.from_pretrained(adapter)
    cases = load_cases(samples)
    print(json.dumps({"package": mope_lightning.__file__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if "prefetch" in command:  # only the new code has the setting (None: decided by the machine)
            from mope_lightning import inference

            inference.PREFETCH = command["prefetch"]
        texts, images = cases[command["case"]]
        n = command.get("samples", len(texts))
        start = time.perf_counter()
        out = model.predict(texts=texts[:n], images=images[:n], batch_size=batch_size)
        seconds = time.perf_counter() - start
        if command.get("save"):
            torch.save(out.probs, command["save"])
        print(json.dumps({"seconds": seconds, "samples": n}), flush=True)


# --- parent ----------------------------------------------------------------------------------------------------------
class Worker:
    def __init__(self, package_root: Path, adapter: Path, samples: int, batch_size: int):
        env = {**os.environ, "PYTHONPATH": str(package_root)}
        self.process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                str(adapter),
                "--samples",
                str(samples),
                "--batch-size",
                str(batch_size),
            ],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = self._reply()
        if not Path(self.info["package"]).resolve().is_relative_to(package_root.resolve()):
            raise SystemExit(
                f"the worker for {package_root} imported {self.info['package']}: PYTHONPATH lost to "
                "another installation"
            )

    def _reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"a worker ended (status {self.process.wait()}); see its output above")
        return json.loads(line)

    def run(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def write_adapter(folder: Path) -> Path:
    from sharing import build

    return build("default").save_pretrained(folder)


def extract_old(ref: str, into: Path) -> Path:
    archive = into / "old.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), ref, "mope_lightning"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "old", filter="data")
    return into / "old"


def measure(workers: dict[str, tuple[Worker, dict]], repeats: int) -> dict:
    """{variant: {case: [seconds of each repeat]}}, the variants taking turns in an order that alternates."""
    names = list(workers)
    for worker, extra in workers.values():  # warm-up: first-call costs (allocator, lazy imports) out of the timings
        for case in CASES:
            worker.run(case=case, samples=64, **extra)
    times: dict = {name: {case: [] for case in CASES} for name in names}
    for r in range(repeats):
        for case in CASES:
            for name in names if r % 2 == 0 else names[::-1]:
                worker, extra = workers[name]
                times[name][case].append(worker.run(case=case, **extra)["seconds"])
                print(f"repeat {r + 1}/{repeats} {case:<13} {name:<16} {times[name][case][-1]:.3f} s", flush=True)
    return times


def compare_predictions(workers: dict[str, tuple[Worker, dict]], folder: Path) -> dict[str, float]:
    import torch

    differences = {}
    for case in CASES:
        probs = {}
        for name, (worker, extra) in workers.items():
            worker.run(case=case, save=str(folder / f"{name}-{case}.pt"), **extra)
            probs[name] = torch.load(folder / f"{name}-{case}.pt")
        differences[case] = max(float((p - probs["old"]).abs().max()) for name, p in probs.items() if name != "old")
    return differences


def summarise(times: dict, samples: dict[str, int]) -> dict:
    out = {}
    for name, cases in times.items():
        out[name] = {}
        for case, seconds in cases.items():
            median = statistics.median(seconds)
            out[name][case] = {
                "median_s": round(median, 3),
                "min_s": round(min(seconds), 3),
                "max_s": round(max(seconds), 3),
                "samples_per_s": round(samples[case] / median, 1),
            }
    return out


def update_results(path: Path, section: dict, ratios: dict, name: str = "predict") -> None:
    """Merge a benchmark's section (`name`) and ratios into `path`, keeping every other key, and replace it
    atomically."""
    from mope_lightning.fileio import atomic_write

    results = json.loads(path.read_text()) if path.is_file() else {}
    results[name] = section
    results.setdefault("ratios", {}).update(ratios)
    atomic_write(path, lambda fh: fh.write(json.dumps(results, indent=2) + "\n"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--old-ref", default=OLD_REF, help="the commit whose mope_lightning is the old path")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results-loader.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.worker:  # its mope_lightning comes from PYTHONPATH
        return worker(ns.worker, ns.samples, ns.batch_size)
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # this tree's package, and sharing.py's model
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        adapter = write_adapter(tmp / "adapter")
        old = Worker(extract_old(ns.old_ref, tmp), adapter, ns.samples, ns.batch_size)
        new = Worker(ROOT, adapter, ns.samples, ns.batch_size)
        workers = {"old": (old, {}), "new": (new, {"prefetch": None}), "new_no_overlap": (new, {"prefetch": False})}
        try:
            samples = {case: len(easy_vqa_inputs(case.split("_")[0], ns.samples)[0]) for case in CASES}
            times = measure(workers, ns.repeats)
            differences = compare_predictions(workers, tmp)
        finally:
            old.close()
            new.close()
    results = summarise(times, samples)
    ratio = {
        case: round(results["new"][case]["samples_per_s"] / results["old"][case]["samples_per_s"], 2) for case in CASES
    }
    section = {
        "command": " ".join(["python benchmarks/predict.py", *sys.argv[1:]]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "threads": new.info["threads"],
        "old_ref": ns.old_ref,
        "samples": samples,
        "repeats": ns.repeats,
        "batch_size": ns.batch_size,
        "results": results,
        "new_over_old": ratio,
        "max_abs_prob_difference": differences,
        "identical_to_1e-5": max(differences.values()) <= TOLERANCE,
    }
    ratios = {
        "api_predict_new_over_old": min(ratio["pairs_pil"], ratio["pairs_paths"]),
        "api_predict_new_over_old_unique": min(ratio["unique_pil"], ratio["unique_paths"]),
    }
    update_results(Path(ns.out), section, ratios)
    print(json.dumps({"new_over_old": ratio, "max_abs_prob_difference": differences}, indent=2))
    print(f"written {ns.out}")
    if not section["identical_to_1e-5"]:
        raise SystemExit(f"the new path's probabilities differ from the old path's by more than {TOLERANCE}")


if __name__ == "__main__":
    main()
