"""Wall-clock benchmark of the whole Snakemake workflow, each run in a fresh copy of the repository.

    python -m megl.bench.workflow --out results/bench/workflow.json          # smoke, --cores 1 and 2
    python -m megl.bench.workflow --out results/bench/workflow.json --full   # + the embedded default

Fields (seconds unless named otherwise): smoke_s (config/smoke.yaml end to end, --cores 2),
smoke_cores1_s (the same with --cores 1), cores2_speedup (smoke_cores1_s / smoke_s), full_default_s
(config/config.yaml end to end, --cores all; only with --full, it takes a while), plus the machine.
docs/workflow.md says how to read them.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from megl.io import write_json

REPO = Path(__file__).resolve().parents[3]
# Outputs and machine-local state that a fresh copy must not inherit.
COPY_IGNORE = (".venv", ".git", "results", ".snakemake", ".pytest_cache", "__pycache__", "standin",
               "generated", "figures", "dvc_plots", "report.html", "main.pdf")


def copy_repo(dest: Path, repo: Path = REPO) -> Path:
    """The repository's sources (tracked or not) without outputs, caches or the venv, in `dest`."""
    shutil.copytree(repo, dest, ignore=shutil.ignore_patterns(*COPY_IGNORE), symlinks=True)
    for folder in ("results", "figures", "paper/generated"):
        (dest / folder).mkdir(parents=True, exist_ok=True)
    return dest


def tool_env() -> dict[str, str]:
    """Environment of a workflow subprocess: this interpreter's bin first, offline, no analytics."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def snakemake_cmd(*args: str) -> list[str]:
    """`snakemake ...` through this interpreter (the venv's), whatever PATH says."""
    return [sys.executable, "-m", "snakemake", *args]


def time_snakemake(configfile: str, cores: str, workdir: Path) -> float:
    """Seconds of one complete `snakemake --configfile X --cores N` in a fresh copy below `workdir`."""
    parent = Path(tempfile.mkdtemp(prefix="megl-bench-", dir=workdir))
    copy = copy_repo(parent / "repo")
    start = time.perf_counter()
    proc = subprocess.run(snakemake_cmd("--configfile", configfile, "--cores", cores), cwd=copy,
                          env=tool_env(), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"snakemake --configfile {configfile} --cores {cores} failed in {copy}:\n"
                         f"{proc.stderr[-4000:]}")
    shutil.rmtree(parent, ignore_errors=True)
    return round(elapsed, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/bench/workflow.json")
    parser.add_argument("--full", action="store_true", help="also time the embedded default (long)")
    parser.add_argument("--workdir", help="where the temporary copies go (default: the system temp dir)")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir or tempfile.gettempdir())
    smoke_2 = time_snakemake("config/smoke.yaml", "2", workdir)
    smoke_1 = time_snakemake("config/smoke.yaml", "1", workdir)
    result = {
        "smoke_s": smoke_2,
        "smoke_cores1_s": smoke_1,
        "cores2_speedup": round(smoke_1 / smoke_2, 3),
        "full_default_s": time_snakemake("config/config.yaml", "all", workdir) if args.full else None,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    write_json(args.out, result)
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
