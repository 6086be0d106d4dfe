"""Code is an input: megl.codedeps lists the package files a `megl` command imports, every Snakemake
rule and DVC stage that runs a megl command takes them as inputs, and dvc.yaml's generated lists are
up to date. (What an edited module re-runs on a finished smoke run: tests/test_workflow.py and
tests/test_dvc.py.)"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from megl.codedeps import code_deps, command_handlers, megl_command, update_dvc_yaml

REPO = Path(__file__).resolve().parents[1]
LOSSES = "src/megl/losses.py"


def test_run_cell_imports_the_losses_and_the_stand_in_generator_does_not():
    run_cell = code_deps("run-cell")
    assert LOSSES in run_cell and "src/megl/cell.py" in run_cell and "src/megl/train.py" in run_cell
    standin = code_deps("make-standin")
    assert "src/megl/data/standin.py" in standin and LOSSES not in standin
    assert "src/megl/train.py" not in standin and "src/megl/report/build.py" not in standin
    for command in ("split", "validate-data", "tables", "figures", "summarize", "paper", "preflight"):
        assert LOSSES not in code_deps(command), command


def test_lazy_imports_and_package_data_count():
    run_cell = code_deps("run-cell")
    # megl.models.sdtg is imported only inside a function of megl.models.build (build_run_model)
    assert "src/megl/models/sdtg.py" in run_cell
    # read by megl.config through Path(__file__).with_name(...), not imported
    assert "src/megl/config.schema.yaml" in run_cell
    # every command runs the entry point and the command line
    assert {"src/megl/__init__.py", "src/megl/__main__.py", "src/megl/cli.py"} <= set(code_deps("split"))
    # other commands' handlers are not followed: split does not import the training code
    assert "src/megl/cell.py" not in code_deps("split")


def _fake_package(root: Path) -> Path:
    pkg = root / "megl"
    files = {
        "__init__.py": "",
        "__main__.py": "from megl.cli import main\n",
        "cli.py": (
            "from megl.errors import E\n"
            "def helper():\n    from megl import helped\n"
            "def cmd_a(args):\n    helper()\n    from megl.sub.a import run\n"
            "def cmd_b(args):\n    from megl import b\n"
            "def build_parser():\n"
            "    p = command('do-a', 'a')\n    p.set_defaults(func=cmd_a)\n"
            "    p = command('do-b', 'b')\n    p.set_defaults(func=cmd_b)\n"
            "def main():\n    pass\n"
        ),
        "errors.py": "",
        "helped.py": "",
        "b.py": "",
        "sub/__init__.py": "",
        "sub/a.py": "def run():\n    from .lazy import f\n    return f()\n",
        "sub/lazy.py": "import os\nfrom pathlib import Path\nDATA = Path(__file__).with_name('table.json')\n"
                       "def f():\n    import megl.deep\n",
        "sub/table.json": "{}",
        "deep.py": "",
        "unused.py": "",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    return pkg


def test_relative_lazy_imports_are_followed_in_a_package(tmp_path):
    pkg = _fake_package(tmp_path)
    assert command_handlers(pkg) == {"do-a": "cmd_a", "do-b": "cmd_b"}
    assert code_deps("do-a", pkg, prefix="p") == [
        "p/__init__.py", "p/__main__.py", "p/cli.py", "p/deep.py", "p/errors.py", "p/helped.py",
        "p/sub/__init__.py", "p/sub/a.py", "p/sub/lazy.py", "p/sub/table.json"]
    assert code_deps("do-b", pkg, prefix="p") == ["p/__init__.py", "p/__main__.py", "p/b.py", "p/cli.py",
                                                  "p/errors.py"]
    with pytest.raises(KeyError, match="do-a, do-b"):
        code_deps("nope", pkg)


def test_the_package_has_no_dynamic_imports():
    """codedeps follows import statements only: an importlib.import_module(name) would be missed."""
    for path in (REPO / "src" / "megl").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
                assert name not in ("import_module", "__import__"), f"{path}: dynamic import at line {node.lineno}"


# ------------------------------------------------------------------ the workflow files use it
def test_dvc_yaml_code_deps_are_up_to_date():
    text = (REPO / "dvc.yaml").read_text(encoding="utf-8")
    assert update_dvc_yaml(text) == text, "run: megl code-deps --dvc-yaml dvc.yaml --write"


def test_every_dvc_stage_running_megl_depends_on_its_code():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    seen = set()
    for name, stage in stages.items():
        body = stage.get("do", stage)
        command = megl_command(body["cmd"])
        if command is None:
            continue
        seen.add(command)
        assert set(code_deps(command)) <= set(body.get("deps", [])), f"stage {name}: code deps of megl {command}"
    assert {"make-standin", "run-cell", "tables", "summarize"} <= seen


def test_every_snakemake_rule_running_megl_has_its_code_as_input():
    rules = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"^rule ", smk.read_text(encoding="utf-8"), flags=re.M)[1:]:
            rules[block.split(":", 1)[0]] = block
    checked = set()
    for name, block in rules.items():
        m = re.search(r'\{params\.megl\} ([\w-]+)', block)
        if not m:
            continue
        checked.add(name)
        assert f'code=code_deps("{m.group(1)}")' in block, f"rule {name} runs megl {m.group(1)} without its code"
    assert {"make_standin", "split", "run_cell", "tables", "summarize", "paper_pdf"} <= checked
