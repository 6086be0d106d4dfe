"""Preflight: the external tools a workflow run will need, checked in seconds before any training.

Java runs the COCO caption scorers (PTB tokenizer, METEOR, SPICE) that score every method that
writes text; latexmk builds the manuscript PDF. A missing tool ends the check with the command
that installs it (RunFailure, exit 1) instead of failing an hour later at the first evaluation.
"""
from __future__ import annotations

import shutil
import subprocess

from megl.errors import RunFailure

INSTALL = {
    "java": "apt-get install default-jre-headless",
    "latexmk": "apt-get install latexmk texlive-latex-recommended texlive-latex-extra",
}


def needs_java(config: dict) -> list[str]:
    """The methods of the matrix whose evaluation runs the Java text scorers (empty: no Java needed)."""
    from megl.matrix import matrix_methods, matrix_mllm_methods
    from megl.methods import get_method

    methods = [*matrix_methods(config["matrix"]), *matrix_mllm_methods(config["matrix"])]
    return [m for m in methods if get_method(m).writes_text]


def _version(tool: str, path: str, flag: str) -> str | None:
    """First line of `tool flag`, or None when the tool is on PATH but does not run."""
    try:
        proc = subprocess.run([path, flag], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return lines[0] if proc.returncode == 0 and lines else None


def preflight(config: dict, pdf: bool = False) -> dict:
    """Check the tools this config (and the PDF, when `pdf`) needs; return what was found (latexmk's
    version, or None, is recorded either way: only `pdf` makes its absence an error).

    Raises RunFailure naming every missing tool and its install command."""
    report: dict = {"java_needed_by": needs_java(config), "latexmk_needed": bool(pdf)}
    wanted = [("java", "-version")] if report["java_needed_by"] else []
    wanted.append(("latexmk", "-v"))  # always recorded; required only with `pdf`
    problems = []
    for tool, flag in wanted:
        path = shutil.which(tool)
        version = _version(tool, path, flag) if path else None
        report[tool] = version
        if version is None and (tool != "latexmk" or pdf):
            why = "not found on PATH" if path is None else f"{path} does not run"
            need = (f"the text scorers of {', '.join(report['java_needed_by'])}" if tool == "java"
                    else "the manuscript PDF (paper/main.pdf)")
            problems.append(f"{tool} {why}; {need} need it: {INSTALL[tool]}")
    if problems:
        raise RunFailure("preflight failed: " + " | ".join(problems))
    return report
