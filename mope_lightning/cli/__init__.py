"""Command line: `mope {fit,validate,test,predict} EXP.yaml [OVERLAY.yaml ...] [key=value ...]`.

Also `python -m mope_lightning ...`. YAML files merge left to right, then the `key=value` overrides (OmegaConf
dotlist). Errors a user can fix are printed as one message, without a traceback, with exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

from mope_lightning.errors import MopeError


@dataclass(frozen=True)
class Command:
    """One `mope` command: the function that runs it ("module:function" under mope_lightning.cli, imported when the
    command runs, so that `mope --help` stays quick), what it does and an example, for the usage text, and its
    short forms of config keys (`mope analyze ... out=DIR` for analyze.out=DIR)."""

    handler: str
    summary: str
    example: str
    more: tuple[str, str] = ()  # a second line of summary and example
    aliases: dict = field(default_factory=dict)


# The commands, once: the usage text, the parser's choices and the dispatch in `main` are built from this table.
COMMANDS: dict[str, Command] = {
    "fit": Command("fit:fit", "train, then test the best checkpoint", "mope fit experiments/easy_vqa.yaml"),
    "validate": Command(
        "fit:validate", "evaluate a checkpoint on the val split", "mope validate experiments/easy_vqa.yaml ckpt=PATH"
    ),
    "test": Command(
        "fit:test", "evaluate a checkpoint on the test split", "mope test experiments/easy_vqa.yaml ckpt=PATH"
    ),
    "predict": Command(
        "fit:predict",
        "write id, prediction, class probabilities (or masks)",
        "mope predict experiments/easy_vqa.yaml ckpt=PATH",
        ("... of new data: a .jsonl/.csv of text, image", "... predict.input=rows.jsonl predict.out=preds.csv"),
    ),
    "params": Command(
        "params:main", "count parameters (no weights are loaded)", "mope params experiments/easy_vqa.yaml"
    ),
    "check-data": Command(
        "check_data:main",
        "check a dataset: sizes, labels, problems",
        "mope check-data experiments/food101.yaml data.root=...",
    ),
    "analyze": Command(
        "analyze:main",
        "routing report of a checkpoint",
        "mope analyze experiments/easy_vqa.yaml ckpt=PATH out=DIR",
        aliases={k: f"analyze.{k}" for k in ("out", "split", "overwrite")},
    ),
    "export": Command(
        "export:main",
        "a checkpoint as a shareable adapter folder",
        "mope export experiments/easy_vqa.yaml ckpt=PATH out=DIR",
        aliases={k: f"export.{k}" for k in ("out", "overwrite")},
    ),
    "shards": Command(
        "shards:main",
        "decoded images as streaming (WebDataset) shards",
        "mope shards experiments/snli_ve.yaml out=DIR",
        ("... then train from them anywhere", "... mope fit EXP.yaml data.name=shards data.root=DIR"),
        aliases={k: f"shards.{k}" for k in ("out", "images_per_shard", "overwrite")},
    ),
    "robustness": Command(
        "robustness:main",
        "test a checkpoint with modalities missing",
        "mope robustness experiments/easy_vqa.yaml ckpt=PATH",
        aliases={k: f"robustness.{k}" for k in ("out", "rates", "kinds", "overwrite")},
    ),
    "sweep": Command(
        "sweep:main", "a grid x seeds of fits, aggregated", "mope sweep experiments/sweeps/baselines.yaml"
    ),
}
SWEEP = "sweep"  # the one command that reads a sweep file, not an experiment config


def _usage() -> str:
    configured = ",".join(name for name in COMMANDS if name != SWEEP)
    rows = []
    for name, command in COMMANDS.items():
        rows.append(f"  {name:<10} {command.summary:<46} {command.example}")
        if command.more:
            rows.append(f"  {'':<10} {command.more[0]:<46} {command.more[1]}")
    return (
        f"""mope {{{configured}}} EXP.yaml [OVERLAY.yaml ...] [key=value ...]
       mope sweep SWEEP.yaml [out=DIR] [launcher=local|slurm|submitit-local] [key=value ...]

"""
        + "\n".join(rows)
        + """

Overrides address any config key, e.g. trainer.max_epochs=3 data.root=/data/x model.mope.num_experts=8.
print_config=true prints the merged, resolved config and exits without building anything.
`fit ckpt=last` resumes the newest run of the experiment from its last checkpoint. ckpt= also takes an exported
adapter folder (validate, test, predict, analyze). Exit status: 0 finished with a real (finite) result, 1 check-data
found problems or runs of a sweep failed, 2 an error named in one message (bad input, a diverged run), 130/143
interrupted by SIGINT/SIGTERM (a fit keeps its weights in last.ckpt)."""
    )


def parse_args(argv: Sequence[str]) -> tuple[str, list[str], list[str], bool]:
    """(command, config files, overrides, print_config)."""
    parser = argparse.ArgumentParser(prog="mope", usage=_usage(), add_help=True)
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("args", nargs="*", help="config files, then key=value overrides")
    ns = parser.parse_args(argv)
    files, overrides = [], []
    for arg in ns.args:
        # a config file in a sweep's run directory has '=' in its path (method=mope/seed_1/...)
        if "=" in arg and not (arg.endswith((".yaml", ".yml")) and os.path.isfile(arg)):
            overrides.append(arg)
        elif arg.endswith((".yaml", ".yml")):
            if overrides:
                raise MopeError(f"'{arg}': config files come before the key=value overrides")
            files.append(arg)
        else:
            raise MopeError(f"'{arg}' is neither a .yaml config file nor a key=value override")
    if not files:
        raise MopeError("give an experiment config, e.g. `mope fit experiments/easy_vqa.yaml`")
    aliases = COMMANDS[ns.command].aliases
    flags = [o for o in overrides if o.split("=", 1)[0] == "print_config"]
    if any(f.split("=", 1)[1].lower() not in ("true", "false") for f in flags):
        raise MopeError(f"'{flags[0]}': print_config takes true or false")
    print_config = bool(flags) and flags[-1].split("=", 1)[1].lower() == "true"
    overrides = [_alias(o, aliases) for o in overrides if o not in flags]
    return ns.command, files, overrides, print_config


def _alias(override: str, aliases: dict[str, str]) -> str:
    key, value = override.split("=", 1)
    return f"{aliases.get(key, key)}={value}"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted (test runners and notebooks swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _setup_logging() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers fork into DataLoader workers
    ours = logging.getLogger("mope_lightning")
    if not ours.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[mope] %(message)s"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropAdverts())
    # The frozen encoders are in eval mode on purpose (see models/backbone.py).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    # Our training order resumes mid-epoch through the DataModule's state, which Lightning's check does not look for
    # (training/training_order.py).
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")
    # A shard stream deals its shards to the workers itself, so its length per process is exact (data/shards.py).
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        command, files, overrides, print_config = parse_args(sys.argv[1:] if argv is None else argv)
        _setup_logging()
        handler = _handler(COMMANDS[command].handler)
        if command == SWEEP:
            if print_config:
                raise MopeError(
                    "print_config shows one run's config: run it on the experiment YAML (with the "
                    "sweep's overrides), e.g. `mope fit experiments/easy_vqa.yaml print_config=true`"
                )
            return handler(files, overrides)
        from mope_lightning.training.trainer_config import load_config

        cfg = load_config(files, overrides)
        if print_config:  # the merged, resolved config this command would run with; nothing is built
            from omegaconf import OmegaConf

            from mope_lightning.training.tracking import record_code

            record_code(cfg)
            print(OmegaConf.to_yaml(cfg, resolve=True), end="")
            return 0
        return handler(cfg)
    except MopeError as exc:
        print(f"mope: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("mope: error: interrupted by SIGINT (Ctrl-C) before the command finished", file=sys.stderr)
        return 130
    except SystemExit as exc:
        # Lightning ends a validate/test/predict that got SIGTERM with SystemExit(), whose status would be 0.
        if type(exc).__name__ != "SIGTERMException":
            raise
        print("mope: error: interrupted by SIGTERM before the command finished; nothing was written", file=sys.stderr)
        return 143
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and type(exc).__name__ != "OutOfMemoryError":
            raise
        print(
            f"mope: error: out of memory ({str(exc).splitlines()[0][:200]}); lower data.batch_size or "
            "data.eval_batch_size, or use trainer.precision=bf16-mixed",
            file=sys.stderr,
        )
        return 2


def _handler(where: str):
    import importlib

    module, _, function = where.partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)


if __name__ == "__main__":
    sys.exit(main())
