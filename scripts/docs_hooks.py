"""MkDocs hooks (mkdocs.yml `hooks:`) that generate what the docs site must not hand-copy.

- `reference/config.md`: every config key with its type, default, allowed values and the schema's own comment,
  generated from the dataclasses of the config schema at build time, so the reference cannot drift from the code.
- The sweeps' summaries and plots under `results/sweeps/<name>/`, published beside the pages that show them, so the
  results pages link to the files the sweeps write instead of copies of them.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize
from pathlib import Path
from typing import Any, Iterator

from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parent.parent
CONFIG_PAGE = "reference/config.md"
SWEEP_FILES = ("summary.md", "*.png")  # of each results/sweeps/<name>/: what the results pages show


def schema():
    """Where the config schema lives: (root dataclass, allowed values by key, numeric ranges by key, ranges of list
    elements by key, the `data` dataclass of each dataset). The one place that imports it: repoint it here when the
    schema moves."""
    from mope_lightning.config.checks import LIST_RANGES, RANGES
    from mope_lightning.config.schema import CHOICES, Config
    from mope_lightning.data.registry import DATAMODULES

    return Config, CHOICES, RANGES, LIST_RANGES, {name: module.config_class for name, module in DATAMODULES.items()}


def on_files(files, config):
    files.append(File.generated(config, CONFIG_PAGE, content=config_reference()))
    for sweep in sorted((REPO / "results" / "sweeps").iterdir()):
        for pattern in SWEEP_FILES:
            for path in sorted(sweep.glob(pattern)):
                files.append(File.generated(config, path.relative_to(REPO).as_posix(), abs_src_path=str(path)))
    return files


def field_comments(cls) -> dict[str, str]:
    """The comments written beside (or on the lines just above) each field of a dataclass: the schema's own
    documentation of that key."""
    lines = inspect.getsource(cls)
    comments, above = {}, []
    for token in tokenize.generate_tokens(io.StringIO(lines).readline):
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            if token.line.strip().startswith("#"):
                above.append(text)
            else:
                name = token.line.split(":", 1)[0].strip()
                comments[name] = " ".join(filter(None, [comments.get(name), *above, text]))
                above = []
        elif token.type == tokenize.NAME and token.start[1] == 4 and above and token.line.rstrip().find(":") > 0:
            comments[token.string] = " ".join(above)
            above = []
    return comments


def _cell(value: Any) -> str:
    if value is None:
        return "null"
    if value == "???":  # OmegaConf's MISSING: no default
        return "required"
    if value == "":
        return '`""`'
    return f"`{value}`".replace("|", "\\|")


def _row(key: str, f: dataclasses.Field, default: Any, comment: str, checks: tuple[dict, dict, dict]) -> str:
    choices, ranges, list_ranges = checks
    allowed = " \\| ".join(_cell(c) for c in choices.get(key, ()))
    if key in ranges:
        allowed = str(ranges[key])
    elif key in list_ranges:
        length, each = list_ranges[key]
        allowed = f"{'' if length < 0 else f'{length} '}numbers, each {each}"
    comment = comment.replace("|", "\\|")
    return f"| `{key}` | `{f.type}` | {_cell(default)} | {allowed} | {comment} |"


def rows(node, prefix: str, checks: tuple[dict, dict, dict], skip: frozenset = frozenset()) -> Iterator[str]:
    """One table row per leaf key of a dataclass instance (nested ones flattened into dotted keys, with the defaults
    the enclosing section gives them), except the fields in `skip`."""
    comments = {}
    for cls in reversed(type(node).__mro__):  # a dataset's options inherit the comments of the fields they keep
        if dataclasses.is_dataclass(cls):
            comments.update(field_comments(cls))
    for f in dataclasses.fields(node):
        if f.name in skip:
            continue
        default = getattr(node, f.name)
        if dataclasses.is_dataclass(default):
            yield from rows(default, f"{prefix}{f.name}.", checks)
        else:
            yield _row(f"{prefix}{f.name}", f, default, comments.get(f.name, ""), checks)


HEADER = "| key | type | default | allowed | what it is |\n|---|---|---|---|---|"
INTRO = (
    "Generated from the config schema when the site is built (`scripts/docs_hooks.py`): every key a config "
    "file or a `key=value` override may set, its type and default, the values the config checks accept, and the "
    "schema's own comment. How files and overrides merge: "
    "[Configuration and overlays](../guides/configuration.md)."
)


def _doc(cls) -> str:
    """A class's docstring; none where the dataclass decorator only wrote its signature."""
    doc = inspect.getdoc(cls) or ""
    return "" if doc.startswith(f"{cls.__name__}(") else doc


def config_reference() -> str:
    root, choices, ranges, list_ranges, datasets = schema()
    checks = (choices, ranges, list_ranges)
    top = root()
    defaults = {f.name: getattr(top, f.name) for f in dataclasses.fields(top)}
    sections = ["# Config keys", "", INTRO, "", "## Top-level keys", "", HEADER]
    sections += rows(
        top, "", checks, skip=frozenset(k for k, v in defaults.items() if dataclasses.is_dataclass(v) or k == "trainer")
    )
    for name, default in defaults.items():
        if dataclasses.is_dataclass(default):
            sections += ["", f"## {name}", "", _doc(type(default)), "", HEADER]
            sections += rows(default, f"{name}.", checks)
    sections += [
        "",
        "## trainer",
        "",
        "Passed to `lightning.Trainer` as is: any argument of its signature may be "
        "set, checked against the types it takes. The defaults:",
        "",
        "| key | default | allowed |",
        "|---|---|---|",
    ]
    sections += [
        f"| `trainer.{k}` | {_cell(v)} | {ranges.get(f'trainer.{k}', '')} |" for k, v in defaults["trainer"].items()
    ]
    sections += [
        "",
        "## Dataset options",
        "",
        "`data.name` picks the dataset; each adds its own keys to the `data` section above.",
    ]
    common = frozenset(f.name for f in dataclasses.fields(type(defaults["data"])))
    for name, cls in datasets.items():
        sections += ["", f"### data.name: {name}", "", _doc(cls)]
        own = list(rows(cls(), "data.", checks, skip=common))
        sections += ["", HEADER, *own] if own else []
    return "\n".join(sections) + "\n"
