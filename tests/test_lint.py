"""`make lint`'s ruff check, run by `make test` too: the tree stays clean under the rules in pyproject.toml."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _ruff() -> str:
    """The ruff of this interpreter's environment (requirements.lock pins it), else one on PATH."""
    beside = Path(sys.executable).with_name("ruff")
    found = str(beside) if beside.exists() else shutil.which("ruff")
    if found is None:
        pytest.fail("ruff is not installed: `make` installs requirements.lock, which pins it")
    return found


def test_ruff_is_the_locked_version():
    locked = re.search(r"^ruff==(\S+)$", (REPO / "requirements.lock").read_text(), re.M)
    assert locked, "requirements.lock pins no ruff"
    out = subprocess.run([_ruff(), "--version"], capture_output=True, text=True, check=True).stdout
    assert out.split()[-1] == locked.group(1), out


def test_ruff_finds_nothing_in_src_tests_and_tools():
    result = subprocess.run([_ruff(), "check", "--no-cache", "src", "tests", "tools"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_reports_a_real_finding(tmp_path):
    """The configured rules catch an unused import and an undefined name (the check can fail)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\n\ndef f():\n    return undefined_name\n")
    result = subprocess.run([_ruff(), "check", "--no-cache", "--config", str(REPO / "pyproject.toml"), str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "F401" in result.stdout and "F821" in result.stdout, result.stdout
