"""Lightning callbacks named in the config's `callbacks:` list, as LightningCLI writes them:

    callbacks:
      - class_path: lightning.pytorch.callbacks.EarlyStopping
        init_args: {monitor: val/acc, mode: max, patience: 3}

A class is looked up only among Lightning's callbacks (`lightning.pytorch.callbacks`, also spelled
`pytorch_lightning.callbacks`, a submodule of it, or the bare class name) and this package's
(`mope_lightning.training.callbacks`): a config never imports code of its own choosing. Every entry is built once when the
config loads, so a wrong class, argument or value stops before anything else is built; the Trainer gets fresh ones.
Lightning's own rules for a Trainer's callbacks (one state per state key, one progress bar) are checked then too,
against the checkpoints mope_lightning adds itself (`fit_checkpoints`).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Optional

from mope_lightning.errors import ConfigError, suggest

if TYPE_CHECKING:  # Lightning is imported when a callback is built, not with the config
    from lightning.pytorch.callbacks import Callback

# class_path prefix -> the module whose public names are looked up
NAMESPACES = {
    "lightning.pytorch.callbacks": "lightning.pytorch.callbacks",
    "pytorch_lightning.callbacks": "lightning.pytorch.callbacks",
    "mope_lightning.training.callbacks": "mope_lightning.training.callbacks",
    "mope_lightning.callbacks": "mope_lightning.training.callbacks",
}  # their home before issue 37
# Added by mope_lightning to every run that needs them (training/build.py build_trainer); a second copy would double their work.
BUILT_IN = {
    "Timer": "trainer.max_time sets the time limit",
    "LearningRateMonitor": "learning rates are logged",
    "RoutingMonitor": "routing is logged at every validation",
    "RNGState": "random states are checkpointed",
    "FiniteLoss": "a non-finite loss stops training",
    "FinalWeights": "last.ckpt is written at the end",
    "PredictionWriter": "mope predict writes predictions",
    "MaskWriter": "mope predict writes segmentation masks",
    "RoutingReport": "mope analyze writes the report",
}


def _lookup(class_path: str, where: str):
    import importlib

    from lightning.pytorch.callbacks import Callback

    prefix, _, name = class_path.rpartition(".")
    module = next((mod for ns, mod in NAMESPACES.items() if prefix == ns or prefix.startswith(ns + ".")), None)
    if module is None and prefix == "":
        module = NAMESPACES["lightning.pytorch.callbacks"]  # a bare name: Lightning's
    if module is None:
        raise ConfigError(
            f"{where}: class_path '{class_path}' is outside the allowed callbacks; a config only names "
            f"Lightning's callbacks (lightning.pytorch.callbacks.*) or mope_lightning.training.callbacks.*"
        )
    namespace = importlib.import_module(module)
    found = getattr(namespace, name, None)
    if not (inspect.isclass(found) and issubclass(found, Callback)) or name.startswith("_"):
        known = sorted(
            n
            for n, v in vars(namespace).items()
            if inspect.isclass(v) and issubclass(v, Callback) and not n.startswith("_")
        )
        raise ConfigError(
            f"{where}: class_path '{class_path}': {module} has no callback '{name}'"
            f"{suggest(name, known)}; known: {', '.join(known)}"
        )
    if name in BUILT_IN:
        raise ConfigError(f"{where}: {name} is added by mope_lightning itself ({BUILT_IN[name]}); remove the entry")
    return found


def resolve_callbacks(entries: list[Any], source: str) -> list:
    """The callbacks `entries` describe, built; any problem is one `ConfigError` naming the entry."""
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    callbacks = []
    for i, entry in enumerate(entries):
        where = f"{source}: callbacks[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("class_path"), str):
            raise ConfigError(f"{where}: expected {{class_path: ..., init_args: {{...}}}}, got {entry!r}")
        unknown = set(entry) - {"class_path", "init_args"}
        if unknown:
            raise ConfigError(
                f"{where}: unknown field(s) {', '.join(sorted(unknown))}; an entry has class_path and init_args"
            )
        cls = _lookup(entry["class_path"], where)
        init_args = entry.get("init_args") or {}
        if not isinstance(init_args, dict):
            raise ConfigError(f"{where}: init_args must be a mapping of argument names to values, got {init_args!r}")
        name = cls.__name__
        try:
            inspect.signature(cls).bind(**init_args)
        except TypeError as exc:
            params = [p for p in inspect.signature(cls).parameters if p not in ("args", "kwargs")]
            wrong = next((a for a in init_args if a not in params), None)
            hint = suggest(wrong, params) if wrong else ""
            raise ConfigError(
                f"{where} ({name}): init_args do not fit {name}: {exc}{hint}; it takes {', '.join(params)}"
            ) from None
        try:
            callbacks.append(cls(**init_args))
        except (ValueError, TypeError, MisconfigurationException) as exc:
            raise ConfigError(
                f"{where} ({name}): {name} refused init_args {init_args}: {str(exc).splitlines()[0]}"
            ) from None
    return callbacks


def fit_checkpoints(checkpoint: Any, monitor: Optional[str]) -> dict[str, Callback]:
    """The ModelCheckpoints a fit gets from the `checkpoint` section, by what they keep: the best weights by
    `monitor` (left out when the monitor is not known yet), and last.ckpt."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    found = {}
    if monitor:
        found["the best weights' ModelCheckpoint (checkpoint.monitor, checkpoint.mode)"] = ModelCheckpoint(
            monitor=monitor,
            mode=checkpoint.mode,
            save_top_k=checkpoint.save_top_k,
            auto_insert_metric_name=False,
            filename="epoch{epoch:03d}-step{step:06d}",
        )
    if checkpoint.save_last:
        # Every validation replaces last.ckpt, improved or not (Lightning's save_last only follows top-k saves), so
        # `fit ckpt=last` resumes from the latest state.
        found["the last.ckpt ModelCheckpoint (checkpoint.save_last)"] = ModelCheckpoint(
            filename="last", monitor=None, save_top_k=1, enable_version_counter=False
        )
    return found


def check_trainer_rules(
    callbacks: list, framework: dict[str, Callback], source: str, enable_progress_bar: bool = True
) -> None:
    """Refuse what `lightning.Trainer` would refuse when built with `framework`'s callbacks and then `callbacks`
    (lightning.pytorch.trainer.connectors.callback_connector): two stateful callbacks with one `state_key` (a
    checkpoint keeps one state per key), more than one progress bar, or one with trainer.enable_progress_bar=false."""
    from lightning.pytorch.callbacks import Callback, ProgressBar
    from lightning.pytorch.utilities.model_helpers import is_overridden

    holders = {cb.state_key: name for name, cb in framework.items() if is_overridden("state_dict", cb, Callback)}
    bars = []
    for i, callback in enumerate(callbacks):
        where, name = f"{source}: callbacks[{i}]", type(callback).__name__
        if is_overridden("state_dict", callback, Callback):
            other = holders.get(callback.state_key)
            if other in framework:
                raise ConfigError(
                    f"{where} ({name}): the same settings as {other} that every fit has (state key "
                    f"{callback.state_key}); lightning.Trainer keeps one state per key in a checkpoint "
                    "and refuses both: remove this entry and use the checkpoint section, or give it "
                    "other settings (e.g. another monitor)"
                )
            if other:
                raise ConfigError(
                    f"{where} ({name}): the same settings as {other} (state key {callback.state_key}); "
                    "lightning.Trainer keeps one state per key in a checkpoint and refuses both: give "
                    "one of them other settings (e.g. another monitor), or remove it"
                )
            holders[callback.state_key] = f"callbacks[{i}]"
        if isinstance(callback, ProgressBar):
            if bars:
                raise ConfigError(
                    f"{where} ({name}): a second progress bar (the first is {bars[0]}); "
                    "lightning.Trainer runs one, remove one of them"
                )
            if not enable_progress_bar:
                raise ConfigError(
                    f"{where} ({name}): a progress bar, but trainer.enable_progress_bar is false; remove one of the two"
                )
            bars.append(f"callbacks[{i}]")
