"""Start-up cost: every workflow job is one `megl` process, so a command must not import heavy libraries
it does not use. Each check runs in a fresh interpreter and looks at `sys.modules`."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEXT_LIBS = ["transformers", "peft", "tokenizers"]


def loaded(code: str, names: list[str]) -> list[str]:
    """Which of `names` are in sys.modules after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([n for n in {names!r} if n in sys.modules]))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cli_and_its_parser_import_no_heavy_library():
    """`megl --help` and the parsing of any command load argparse and the package, nothing else."""
    heavy = [*TEXT_LIBS, "pandas", "matplotlib", "seaborn", "scipy", "sklearn", "torch", "jsonschema"]
    code = "import megl.cli\nmegl.cli.build_parser().parse_args(['methods'])"
    assert loaded(code, heavy) == []


def test_the_workflow_definition_imports_no_torch():
    """Every Snakemake process (the main one, and one per job on a cluster) parses the Snakefile:
    the megl modules that workflow/rules/common.smk imports must not pull in torch or torchvision."""
    lines = [line for line in (REPO / "workflow" / "rules" / "common.smk").read_text().splitlines()
             if line.startswith("from megl") or line.startswith("import megl")]
    assert lines, "common.smk imports nothing from megl?"
    assert loaded("\n".join(lines), ["torch", "torchvision", *TEXT_LIBS]) == []


def test_config_loads_without_the_slow_iri_format_module():
    """jsonschema's optional rfc3987_syntax builds a grammar on import (seconds); the config is
    validated without format checks, so megl.config keeps it out (and leaves no trace in sys.modules)."""
    code = ("from megl.config import load_config\nload_config('config/config.yaml')\n"
            "import sys\nassert 'rfc3987_syntax' not in sys.modules")
    assert loaded(code, ["jsonschema", "rfc3987_syntax"]) == ["jsonschema"]


def test_the_data_steps_never_start_torch(tmp_path):
    """The stand-in, validation and split jobs (18 in the default) run without torch: ~1.5 s each saved."""
    data, split = tmp_path / "objects", tmp_path / "split.json"
    code = ("import megl.cli\n"
            f"assert megl.cli.main(['make-standin', 'objects', {str(data)!r}, '--n-images', '30']) == 0\n"
            f"assert megl.cli.main(['validate-data', {str(data)!r}]) == 0\n"
            f"assert megl.cli.main(['split', {str(data)!r}, '--out', {str(split)!r}]) == 0")
    assert loaded(code, ["torch", "torchvision"]) == []
    assert split.is_file()


def test_report_steps_import_only_what_they_draw_or_tabulate():
    assert loaded("import megl.report.build", ["pandas", "scipy", "matplotlib", "seaborn", "statsmodels"]) == []
    tables = loaded("from megl.report import build, claims, paper_vs_ours, tables", ["matplotlib", "seaborn"])
    assert tables == []


@pytest.mark.parametrize("method", ["haics", "megl_visual_only"])
def test_a_visual_cell_never_imports_the_text_libraries(method):
    """What `megl run-cell` imports for a non-text method, up to its model: the cell, training and
    evaluation modules and the run model with its visual loss, but no transformers/peft."""
    code = f"""
import megl.cli, megl.cell, megl.evaluate, megl.train
from megl.config import load_config
from megl.methods import get_method
from megl.models.build import build_run_model
config = load_config("config/smoke.yaml")
backbone = dict(config["backbones"]["resnet18"], weights=None, frozen_stages=0)
model = build_run_model(config, get_method({method!r}), backbone, 3, None)
assert model.classifier is not None and model.sdtg is None
"""
    assert loaded(code, TEXT_LIBS) == []



def test_a_cell_job_never_imports_scikit_learn():
    """The metrics a cell computes (macro P/R/F1, accuracy, saliency AP) are NumPy, bitwise sklearn's
    (tests/test_metrics_*.py): importing sklearn (and the scipy/pandas it pulls) costs a job ~1 s."""
    code = """
import numpy as np
import megl.cli, megl.cell, megl.evaluate
from megl.metrics import classification, saliency
classification.classification_metrics([0, 1, 1], [0, 1, 0], 2)
saliency.saliency_scores([np.eye(4)], [np.eye(4)])
"""
    assert loaded(code, ["sklearn"]) == []


# Pairs of modules that import each other (at any level, late imports included) that predate issue #22's
# check; their owners break them. No other pair may appear.
KNOWN_MUTUAL_IMPORTS = {("megl.metrics.meteor_server", "megl.metrics.text"),
                        ("megl.report.claims", "megl.report.validity")}


def _megl_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "megl":
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "megl"}
    return names


def test_no_two_megl_modules_import_each_other():
    """config and matrix used to import each other (issue #22); the blocks both read live in megl.matrix_blocks."""
    src = Path(__file__).resolve().parents[1] / "src"
    imports = {}
    for path in (src / "megl").rglob("*.py"):
        parts = path.relative_to(src).with_suffix("").parts
        imports[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = _megl_imports(path)
    mutual = {(a, b) for a, deps in imports.items() for b in deps
              if b in imports and a < b and a in imports[b]}
    assert ("megl.config", "megl.matrix") not in mutual
    assert mutual <= KNOWN_MUTUAL_IMPORTS, mutual - KNOWN_MUTUAL_IMPORTS
