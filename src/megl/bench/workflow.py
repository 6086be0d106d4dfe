"""Wall-clock benchmark of the whole Snakemake workflow, each run in a fresh copy of the repository.

    python -m megl.bench.workflow --out results/bench/workflow.json          # smoke, --cores 1 and 2
    python -m megl.bench.workflow --out results/bench/workflow.json --full   # + the embedded default
    python -m megl.bench.workflow --full-from CLONE/results --full-wall-s S  # + a finished make reproduce's
        [--full-cores1-wall-s S1]   # + the wall time of `make reproduce CORES=1` of the same commit

Fields (seconds unless named otherwise): smoke_s (config/smoke.yaml end to end, --cores 2),
smoke_cores1_s (the same with --cores 1), cores2_speedup (smoke_cores1_s / smoke_s); with --full:
full_default_s (config/config.yaml end to end, --cores 2, as `make reproduce` runs it on this machine),
full_rules (per rule: jobs, summed wall s, max RSS MB, from Snakemake's `benchmark:` files),
full_job_seconds (all jobs' wall summed), full_parallelism (full_job_seconds / full_default_s: how much of
the 2 cores the DAG keeps busy; the --cores 1 run of the full default would take that long again and is
not repeated unless its wall time is given: full_cores1_s and full_cores2_speedup), job_kinds (jobs per
kind: JOB_STARTS), startup_s (each kind's bare start: interpreter, imports, config, measured here),
startup_job_s (every job's start summed) and startup_share (startup_job_s over full_job_seconds).
docs/benchmarks.md says how to read them.
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


def time_snakemake(configfile: str, cores: str, workdir: Path, keep: bool = False) -> tuple[float, Path]:
    """Seconds of one complete `snakemake --configfile X --cores N` in a fresh copy below `workdir`
    (and the copy, when `keep`)."""
    parent = Path(tempfile.mkdtemp(prefix="megl-bench-", dir=workdir))
    copy = copy_repo(parent / "repo")
    start = time.perf_counter()
    proc = subprocess.run(snakemake_cmd("--configfile", configfile, "--cores", cores), cwd=copy,
                          env=tool_env(), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"snakemake --configfile {configfile} --cores {cores} failed in {copy}:\n"
                         f"{proc.stderr[-4000:]}")
    if not keep:
        shutil.rmtree(parent, ignore_errors=True)
    return round(elapsed, 2), copy


def rule_breakdown(results: Path) -> dict[str, dict]:
    """Per rule (the folder under results/benchmarks/): jobs, summed wall seconds, max RSS in MB."""
    import csv

    rules: dict[str, dict] = {}
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        rule = tsv.relative_to(results / "benchmarks").parts[0]
        with open(tsv, encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        entry = rules.setdefault(rule, {"jobs": 0, "wall_s": 0.0, "max_rss_mb": 0.0})
        for row in rows:
            entry["jobs"] += 1
            entry["wall_s"] = round(entry["wall_s"] + float(row["s"]), 2)
            rss = row.get("max_rss", "-")
            if rss not in ("-", "", "NA"):
                entry["max_rss_mb"] = max(entry["max_rss_mb"], round(float(rss), 1))
    return rules


# What each kind of job does before it starts work: the interpreter, the imports of its `megl` command
# (megl.cli imports each command's modules lazily) and, where the command reads it, the validated config.
# Keyed by the folder of the job's Snakemake benchmark file (results/benchmarks/<kind>/...).
_CONFIG = f"from megl.config import load_config\nload_config({str(REPO / 'config' / 'config.yaml')!r})"
CELL_JOB_START = f"import megl.cli, megl.cell\n{_CONFIG}"
JOB_STARTS = {
    "cells": CELL_JOB_START,
    "scores": "import megl.cli, megl.runlock, megl.score\nimport torch",  # torch: resizing the saliency maps
    "features": f"import megl.cli, megl.features, megl.models.backbones\n{_CONFIG}",  # builds the trunk
    "backbones": f"import megl.cli, megl.backbone_pretrain, megl.runtime\n{_CONFIG}\nimport torch",
    "encoders": f"import megl.cli, megl.pretrain\n{_CONFIG}",
    "data/standin": f"import megl.cli, megl.data.standin\n{_CONFIG}",
    "data/validate": "import megl.cli, megl.data.validate, megl.io",
    "data/split": f"import megl.cli, megl.data.annotations, megl.data.split\n{_CONFIG}",
    "data/unpack": "import megl.cli, megl.data.fetch",
    "report/tables": f"import megl.cli, megl.report.build, megl.report.tables\n{_CONFIG}",
    "report/figures": f"import megl.cli, megl.report.build, megl.report.figures\n{_CONFIG}",
    "report/summarize": f"import megl.cli, megl.report.summary\n{_CONFIG}",
    "report/paper_inputs": "import megl.cli, megl.report.build",
    "report/paper_pdf": "import megl.cli, megl.report.build",
    "report/html_tables": "import megl.report.html_tables",
}
# What a text-writing cell imports on top, when it builds SDTG and the LM (megl.models.build.build_run_model).
TEXT_CELL_IMPORTS = "import megl.models.lm, megl.models.sdtg, megl.pretrain, peft"


def job_kind(tsv: Path, benchmarks: Path) -> str:
    """The JOB_STARTS key of one benchmark file: its rule folder, with the step for data/ and report/
    (data/<dataset>_<step>.tsv, report/<step>.tsv); cells of text-writing methods get `cells+text`, scores
    of MLLM cells (no saliency map, so no torch) `scores-mllm`."""
    # MLLM cells build the LM too (megl.models.build)
    from megl.methods import MLLM_BACKBONE, get_method

    parts = tsv.relative_to(benchmarks).parts
    kind = parts[0]
    if kind == "data":
        return f"data/{tsv.stem.rsplit('_', 1)[-1]}"
    if kind == "report":
        return f"report/{tsv.stem}"
    if kind == "cells" and (get_method(tsv.stem).writes_text or get_method(tsv.stem).is_mllm):
        return "cells+text"
    if kind == "scores" and parts[2] == MLLM_BACKBONE:
        return "scores-mllm"
    return kind


def _start_code(kind: str) -> str:
    if kind == "cells+text":
        return f"{CELL_JOB_START}\n{TEXT_CELL_IMPORTS}"
    if kind == "scores-mllm":
        return JOB_STARTS["scores"].replace("\nimport torch", "")
    if kind not in JOB_STARTS:
        raise SystemExit(f"megl.bench.workflow: no start-up declared for jobs of kind {kind!r} (JOB_STARTS)")
    return JOB_STARTS[kind]


def startup_seconds(kinds, repeats: int = 3) -> dict[str, float]:
    """Median wall time of a bare start of each kind of job (its interpreter, imports and config, as
    JOB_STARTS and job_kind say), measured here in a fresh interpreter, `repeats` times each."""
    def timed(code: str) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, env=tool_env())
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    return {kind: round(timed(_start_code(kind)), 2) for kind in sorted(set(kinds))}


def job_kinds(results: Path) -> dict[str, int]:
    """How many jobs of each kind a finished run's benchmark files record."""
    benchmarks = results / "benchmarks"
    counts: dict[str, int] = {}
    for tsv in sorted(benchmarks.rglob("*.tsv")):
        kind = job_kind(tsv, benchmarks)
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def startup_share(kinds: dict[str, int], startup: dict[str, float], job_seconds: float) -> dict:
    """Start-up seconds of every job (its kind's bare start times its count) and their share of all job
    seconds."""
    seconds = round(sum(n * startup[kind] for kind, n in kinds.items()), 1)
    return {"startup_job_s": seconds, "startup_share": round(seconds / job_seconds, 4) if job_seconds else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/bench/workflow.json")
    parser.add_argument("--full", action="store_true", help="also time the embedded default (long)")
    parser.add_argument("--full-from", metavar="RESULTS",
                        help="instead of --full's own run: the results/ folder of a finished `make reproduce` "
                             "of the default (e.g. in a fresh clone), with its wall time in --full-wall-s")
    parser.add_argument("--full-wall-s", type=float, help="with --full-from: that run's wall seconds")
    parser.add_argument("--full-cores1-wall-s", type=float,
                        help="with --full-from: wall seconds of the same commit's default run with --cores 1")
    parser.add_argument("--workdir", help="where the temporary copies go (default: the system temp dir)")
    args = parser.parse_args(argv)
    if bool(args.full_from) != (args.full_wall_s is not None):
        parser.error("--full-from and --full-wall-s go together")
    if args.full_cores1_wall_s is not None and not args.full_from:
        parser.error("--full-cores1-wall-s needs --full-from")

    workdir = Path(args.workdir or tempfile.gettempdir())
    smoke_2, _ = time_snakemake("config/smoke.yaml", "2", workdir)
    smoke_1, _ = time_snakemake("config/smoke.yaml", "1", workdir)
    result = {
        "smoke_s": smoke_2,
        "smoke_cores1_s": smoke_1,
        "cores2_speedup": round(smoke_1 / smoke_2, 3),
        "full_default_s": None,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    if args.full or args.full_from:
        if args.full_from:
            full_s, results, copy = args.full_wall_s, Path(args.full_from), None
        else:
            full_s, copy = time_snakemake("config/config.yaml", "2", workdir, keep=True)
            results = copy / "results"
        rules = rule_breakdown(results)
        kinds = job_kinds(results)
        startup = startup_seconds(kinds)
        job_seconds = round(sum(r["wall_s"] for r in rules.values()), 1)
        result.update(full_default_s=full_s, full_source=str(results) if args.full_from else "this run",
                      full_rules=rules, full_job_seconds=job_seconds,
                      full_parallelism=round(job_seconds / full_s, 3), job_kinds=kinds, startup_s=startup,
                      **startup_share(kinds, startup, job_seconds))
        if args.full_cores1_wall_s is not None:
            result.update(full_cores1_s=args.full_cores1_wall_s,
                          full_cores2_speedup=round(args.full_cores1_wall_s / full_s, 3))
        if copy is not None:
            shutil.rmtree(copy.parent, ignore_errors=True)
    write_json(args.out, result)
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
