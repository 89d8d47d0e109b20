"""Adapters: the trained part of a model as a folder anyone can load without running code (cf. PEFT).

    DIR/adapter.safetensors   the trained tensors of the classifier (prompts, router with its frozen routing keys,
                              mapper, head); safetensors holds data only
    DIR/adapter_config.json   the resolved experiment config, class names, task, the backbone signature and
                              frozen-weight digests, parameter counts, test metrics when known, the package version
    DIR/README.md             a model card

The frozen encoders are not included: whoever loads the adapter rebuilds them from their source, and the digests
say whether they are the weights it was trained on. A folder is written under a temporary name and renamed when
complete, so an interrupted export leaves the earlier adapter or the new one, never a mix. Only an adapter mope
wrote is ever replaced (with overwrite=true), and only a folder that holds nothing else: a folder with other files in
it, or the checkpoint being exported, is refused (fileio.claim_output).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Optional, Sequence

from mope_lightning import __version__
from mope_lightning.weights.checkpoints import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    TrainedWeights,
    is_adapter,
    weights_from_checkpoint,
)
from mope_lightning.errors import CheckpointError, MopeError
from mope_lightning.fileio import claim_output, written_json

FORMAT = "mope_lightning.adapter"
FORMAT_VERSION = 1
ADAPTER_FILES = (ADAPTER_WEIGHTS, ADAPTER_CONFIG, "README.md")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def claim_adapter_folder(
    out: str | Path, overwrite: bool, inputs: Sequence[Optional[str | Path]] = (), key: str = "out"
) -> Path:
    """`out` checked as the place for an adapter folder (fileio.claim_output): new, empty, or holding only an adapter
    mope wrote (replaced with `overwrite`); never an input, never a folder with other files in it."""
    return claim_output(
        out,
        key,
        inputs=inputs,
        overwrite=overwrite,
        files=ADAPTER_FILES,
        earlier=_is_adapter,
        whole_folder=True,
        what="adapter",
        flag="overwrite",
    )


def _is_adapter(folder: Path) -> bool:
    return written_json(folder / ADAPTER_CONFIG, ("config",), format=FORMAT)


def write_adapter(
    out: str | Path,
    trained: TrainedWeights,
    parameters: Optional[dict] = None,
    overwrite: bool = False,
    key: str = "out",
) -> Path:
    """Write `trained` as an adapter folder `out`; an adapter mope wrote there before is replaced only with
    `overwrite`, and a folder holding anything else, or the weights being exported, is refused."""
    out = claim_adapter_folder(out, overwrite, [trained.source], key)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.{secrets.token_hex(6)}.tmp"
    staging.mkdir()
    try:
        _write_files(staging, trained, parameters)
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _write_files(folder: Path, trained: TrainedWeights, parameters: Optional[dict]) -> None:
    from safetensors.torch import save

    # Copies: safetensors refuses tensors that share storage, and wants them contiguous.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in trained.state.items()}
    (folder / ADAPTER_WEIGHTS).write_bytes(save(tensors, metadata={"format": "pt", "mope_lightning": __version__}))
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mope_lightning_version": __version__,
        "experiment": trained.config.get("experiment"),
        "task": trained.task,
        "classes": trained.classes,
        "backbones": trained.backbones,
        "parameters": parameters or {},
        "metrics": trained.metrics,
        "trained_from": Path(trained.source).name,
        "config": trained.config,
    }
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, default=str) + "\n")
    (folder / "README.md").write_text(model_card(config, sum(v.numel() for v in tensors.values())))
    for name in ADAPTER_FILES:
        with open(folder / name, "rb") as fh:
            os.fsync(fh.fileno())


def _swap_in(staging: Path, out: Path) -> None:
    if not out.exists() or not any(out.iterdir()):
        os.replace(staging, out)  # rename(2) replaces an empty folder in one step
        return
    retired = out.parent / f".{out.name}.{secrets.token_hex(6)}.old"
    os.replace(out, retired)
    os.replace(staging, out)
    # The earlier adapter's own files only (claim_adapter_folder saw nothing else); anything that appeared in the
    # folder meanwhile is kept in `retired`, never deleted.
    for name in ADAPTER_FILES:
        if (retired / name).is_file():
            os.unlink(retired / name)
    with contextlib.suppress(OSError):
        retired.rmdir()


def read_adapter(folder: str | Path) -> TrainedWeights:
    """The trained weights of an adapter folder; `CheckpointError` naming the file for anything malformed."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    config_path, weights_path = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{folder}: not an adapter folder (no {ADAPTER_CONFIG}); export one with "
            "`mope export EXP.yaml ckpt=PATH out=DIR`"
        ) from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{config_path}:{exc.lineno}: not valid JSON ({exc.msg}); export the adapter again"
        ) from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{config_path}: not UTF-8 text; export the adapter again") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{config_path}: not a mope_lightning adapter config (format is not '{FORMAT}')")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path}: adapter format {config['format_version']} is newer than this "
            f"mope_lightning ({__version__}) reads ({FORMAT_VERSION}); upgrade mope_lightning"
        )
    missing = [k for k in ("config", "classes", "task", "backbones") if k not in config]
    if missing:
        raise CheckpointError(f"{config_path}: missing {', '.join(missing)}; export the adapter again")
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: missing; the adapter folder is incomplete, export it again")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{weights_path}: truncated or not a safetensors file ({exc}); export the adapter again"
        ) from None
    return TrainedWeights(
        str(folder),
        config["config"],
        list(config["classes"]),
        config["task"],
        config["backbones"],
        state,
        dict(config.get("metrics") or {}),
    )


def read_trained_weights(path: str | Path) -> TrainedWeights:
    """Trained weights from a `.ckpt` file or an exported adapter folder."""
    return read_adapter(path) if is_adapter(path) else weights_from_checkpoint(path)


def recorded_test_metrics(ckpt_path: str | Path) -> dict[str, float]:
    """The test metrics `mope fit` recorded for this checkpoint (its run's fit_metrics.json), if it tested it."""
    ckpt_path = Path(ckpt_path)
    record = ckpt_path.parent.parent / "fit_metrics.json"
    try:
        summary = json.loads(record.read_text())
    except (OSError, ValueError):
        return {}
    tested = summary.get("tested_weights")
    if not isinstance(tested, str) or not Path(tested).exists() or not Path(tested).samefile(ckpt_path):
        return {}
    return {k: float(v) for k, v in summary.get("metrics", {}).items() if k.startswith("test/")}


def model_card(config: dict, num_values: int) -> str:
    """README.md of an adapter: what it is, what it was trained on, how it scored, how to load it."""
    cfg, params = config["config"], config.get("parameters") or {}
    model, data = cfg["model"], cfg.get("data", {})
    encoders = {m: f"{model[f'{m}_encoder']['library']} `{model[f'{m}_encoder']['name']}`" for m in ("text", "image")}
    metrics = config.get("metrics") or {}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())) or "not recorded with this checkpoint"
    trainable = (
        f"{params['trainable']:,} trainable of {params['total']:,} parameters ({params['trainable_percent']:.2f}%)"
        if params
        else f"{num_values:,} trained values"
    )
    classes = config["classes"]
    return f"""---
library_name: mope_lightning
tags: [mope, multimodal, prompt-tuning, adapter]
---
# {config.get("experiment")}: a mope_lightning adapter

The trained part ({model["fusion"]} fusion: prompts, router, mapper, head) of a classifier whose frozen
{model["prompted"]} encoder is prompted, conditioned on the other modality. Text encoder: {encoders["text"]};
image encoder: {encoders["image"]}. The frozen encoders are not included: they are rebuilt from their source
when the adapter loads, and checked against the weight digests in `adapter_config.json`.

- Trained on: `{data.get("name")}` ({config["task"]}, {len(classes)} classes: {", ".join(map(str, classes[:20]))}
  {"..." if len(classes) > 20 else ""})
- Test metrics: {shown}
- Size: {trainable}
- Trained from: `{config.get("trained_from")}` with mope_lightning {config.get("mope_lightning_version")}; the
  resolved experiment config is in `adapter_config.json`

## Use

```python
import mope_lightning

model = mope_lightning.from_pretrained("PATH_OR_HUB_ID")
out = model.predict(texts=["what shape is in the image?"], images=["image.png"])
print(out.labels, out.probs)
```

```bash
mope predict experiments/{config.get("experiment")}.yaml ckpt=PATH predict.input=rows.jsonl predict.out=preds.csv
mope test experiments/{config.get("experiment")}.yaml ckpt=PATH data.root=...
```
"""


def is_repo_id(source: str) -> bool:
    return bool(_REPO_ID.match(source)) and not Path(source).expanduser().exists()


def download_adapter(
    repo_id: str, revision: Optional[str] = None, cache_dir: Optional[str] = None, token: Optional[str] = None
) -> Path:
    """The local folder of an adapter on the Hugging Face Hub (downloaded once, then read from the hub cache)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                repo_id, revision=revision, cache_dir=cache_dir, token=token, allow_patterns=list(ADAPTER_FILES)
            )
        )
    except LocalEntryNotFoundError as exc:
        raise MopeError(
            f"{repo_id}: not in the Hugging Face cache and the Hub cannot be reached "
            f"({str(exc).splitlines()[0]}); download it where the Hub is reachable, or pass a local "
            "adapter folder"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise MopeError(f"{repo_id}: cannot download from the Hugging Face Hub ({str(exc).splitlines()[0]})") from None


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    private: Optional[bool] = None,
    token: Optional[str] = None,
    commit_message: str = "Upload mope_lightning adapter",
) -> str:
    """Publish an exported adapter folder to the Hugging Face Hub; returns the commit URL."""
    from huggingface_hub import HfApi

    read_adapter(folder)  # only a complete, readable adapter is published
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), allow_patterns=list(ADAPTER_FILES), commit_message=commit_message
    )
    return str(getattr(info, "commit_url", info))
