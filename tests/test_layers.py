"""Layer contracts (issue 37): the inference path, the models and the analysis run without Lightning, and no two
modules import each other, function-level imports included.

The Lightning checks run in a fresh interpreter, since this test process has imported Lightning long before. The
import contracts are import-linter's ([tool.importlinter] in pyproject.toml, also run by `make lint`)."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from helpers import ROOT, tiny_config
from helpers.models import CLASSES, write_tiny_adapter

LIGHTNING = ("lightning", "pytorch_lightning")
# The analysis (routing statistics and figures, reports, the sweep's routing figures, the robustness tables), the
# datasets, the config and the weights.
LIGHTNING_FREE = (
    "mope_lightning.models",
    "mope_lightning.analysis.routing",
    "mope_lightning.analysis.report",
    "mope_lightning.analysis.sweep_routing",
    "mope_lightning.analysis.robustness_tables",
    "mope_lightning.pretrained",
    "mope_lightning.data.registry",
    "mope_lightning.config.schema",
    "mope_lightning.config.checks",
    "mope_lightning.weights.adapters",
    "mope_lightning.weights.checkpoints",
)


def fresh_python(code: str) -> dict:
    """Run `code` in a new interpreter that imports this checkout; the JSON its last line prints."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


LOADED = "json.dumps({'lightning': sorted(m for m in sys.modules if m.split('.')[0] in %r)})" % (LIGHTNING,)


def test_from_pretrained_and_predict_run_without_lightning(tmp_path):
    adapter = write_tiny_adapter(tiny_config(tmp_path), tmp_path / "adapter", CLASSES)
    image = tmp_path / "red.png"
    Image.new("RGB", (32, 24), (200, 30, 0)).save(image)
    out = fresh_python(f"""
import json, sys
from mope_lightning import from_pretrained
model = from_pretrained({str(adapter)!r})
out = model.predict(texts=["what shape is this?", "what color is it?"], images=[{str(image)!r}] * 2)
assert out.probs.shape == (2, {len(CLASSES)}) and all(label in {CLASSES!r} for label in out.labels)
print({LOADED})
""")
    assert out["lightning"] == [], f"the inference path imported {out['lightning']}"


def test_the_models_and_the_analysis_import_without_lightning():
    out = fresh_python(f"import json, sys\nimport {', '.join(LIGHTNING_FREE)}\nprint({LOADED})")
    assert out["lightning"] == [], f"importing {', '.join(LIGHTNING_FREE)} imported {out['lightning']}"


def test_the_import_contracts_hold(capsys):
    """No import cycle (function-level imports counted), no Lightning reachable from the models, the inference path
    or the analysis, and the layers import downwards; lint-imports prints the broken contract and its chain."""
    cli = pytest.importorskip("importlinter.cli", reason="import-linter is in requirements.txt: make install")
    code = cli.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert code == 0, report
    assert "6 kept, 0 broken" in report, report
