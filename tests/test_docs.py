"""The docs site builds with `mkdocs build --strict`: a broken link, a missing page, an anchor that does not exist
or a snippet whose file is gone fails the suite, as it fails `make docs`."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -r requirements.txt)")
pytest.importorskip("material", reason="mkdocs-material is not installed (pip install -r requirements.txt)")
pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed (pip install -r requirements.txt)")


def build(site: Path, config: Path = REPO / "mkdocs.yml") -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "NO_MKDOCS_2_WARNING": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_docs_build_strict(tmp_path):
    repo_site_before = (REPO / "site").exists()
    done = build(tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    # the generated pages are there: the config keys from the schema, the API from the docstrings
    config_page = (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
    assert "model.mope.num_experts" in config_page and "data.missing.test.image" in config_page
    api_page = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "from_pretrained" in api_page and "predict" in api_page and "ConfigError" in api_page
    assert (tmp_path / "site" / "results" / "sweeps" / "importance" / "plot_model.mope.importance_weight.png").is_file()
    assert (REPO / "site").exists() == repo_site_before  # built where it was told, nothing in the checkout


def test_docs_build_fails_on_a_broken_link(tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs", docs)
    (docs / "getting_started.md").write_text("# Getting started\n\nSee [nowhere](no_such_page.md).\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(
        (REPO / "mkdocs.yml")
        .read_text()
        .replace("docs_dir: docs", f"docs_dir: {docs}")
        .replace("  - scripts/docs_hooks.py", f"  - {REPO / 'scripts' / 'docs_hooks.py'}")
    )
    done = build(tmp_path / "site", config)
    assert done.returncode != 0
    assert "no_such_page.md" in done.stdout + done.stderr
