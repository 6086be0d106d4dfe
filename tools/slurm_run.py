#!/usr/bin/env python3
"""Run the workflow on SLURM: `snakemake --workflow-profile none --profile profiles/slurm ARGS`, watched.

    .venv/bin/python tools/slurm_run.py --configfile config/paper.yaml [any snakemake option ...]

Why a wrapper (docs/gpus_and_clusters.md, "Running on SLURM"):
1. `--workflow-profile none`: without it Snakemake also loads profiles/default, whose keys override
   the SLURM profile's key by key (default-resources, `resources: gpu: 0`, keep-going, latency-wait).
2. A status query that keeps failing must stop the run with an error. snakemake-executor-plugin-slurm
   (2.8) logs a failed query at debug level only and then drops the job from its watch list, so
   Snakemake waits forever (seen with `sacct` on a cluster without accounting). This wrapper runs
   the status command the plugin will use once before starting (fails in seconds) and then every
   MEGL_SLURM_STATUS_EVERY_S (10) seconds; when it has failed for MEGL_SLURM_STATUS_GRACE_S (45)
   seconds in a row, it prints the error, interrupts Snakemake (SIGINT: it cancels its SLURM jobs)
   and exits with 3. Both checks together: an error within about a minute.
3. SIGTERM to this wrapper reaches Snakemake as SIGINT, the signal it handles by cancelling its jobs.

Environment: MEGL_SLURM_PROFILE (profiles/slurm), MEGL_SLURM_STATUS_EVERY_S, MEGL_SLURM_STATUS_GRACE_S,
MEGL_SLURM_QUERY_TIMEOUT_S (20, per query).
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROFILE = os.environ.get("MEGL_SLURM_PROFILE", "profiles/slurm")
EVERY_S = float(os.environ.get("MEGL_SLURM_STATUS_EVERY_S", "10"))
GRACE_S = float(os.environ.get("MEGL_SLURM_STATUS_GRACE_S", "45"))
QUERY_TIMEOUT_S = float(os.environ.get("MEGL_SLURM_QUERY_TIMEOUT_S", "20"))
# The plugin's own defaults (snakemake_executor_plugin_slurm.ExecutorSettings), used when neither
# the profile nor the command line sets the option.
PLUGIN_INIT_S = 40


def log(msg: str) -> None:
    print(f"slurm_run: {msg}", file=sys.stderr, flush=True)


def setting(name: str, argv: list[str], profile_text: str) -> str | None:
    """`--name X` / `--name=X` from the command line, else `name: X` from the profile."""
    flag = f"--{name}"
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    m = re.search(rf"^{re.escape(name)}:\s*([^\s#]+)", profile_text, re.MULTILINE)
    return m.group(1).strip("'\"") if m else None


def min_job_age_s() -> int | None:
    """MinJobAge from `scontrol show config`, in seconds (as the plugin reads it)."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                             timeout=QUERY_TIMEOUT_S).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"^\s*MinJobAge\s*=\s*(\d+)\s*([a-zA-Z]*)", out, re.MULTILINE)
    if not m:
        return None
    return int(m.group(1)) * (3600 if m.group(2).lower() in ("h", "hour", "hours") else 1)


def effective_status_command(configured: str | None, init_s: int) -> str:
    """The command snakemake-executor-plugin-slurm 2.8 will really query (its check_active_jobs)."""
    name = configured or ("sacct" if shutil.which("sacct") else "squeue")
    if name == "squeue" and shutil.which("sacct"):
        age = min_job_age_s()
        if age is None or age < 3 * init_s:
            log(f"note: MinJobAge={age} < 3 x {init_s} s, so the plugin will query sacct, not squeue")
            name = "sacct"
    if name == "sacct" and not shutil.which("sacct"):
        name = "squeue"
    return name


def status_query(name: str) -> list[str]:
    """A query of the same form as the plugin's (its --name is the run's UUID; any name works here)."""
    if name == "squeue":
        return ["squeue", "--format=%i|%T", "--states=all", "--noheader", "--name", "megl-slurm-run-check"]
    return ["sacct", "-X", "--parsable2", "--clusters", "all", "--noheader", "--format=JobIdRaw,State",
            "--starttime", "now-1hours", "--endtime", "now", "--name", "megl-slurm-run-check"]


def run_query(cmd: list[str]) -> str | None:
    """None when the query works, else why it failed."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except FileNotFoundError:
        return f"{cmd[0]} not found on PATH"
    except subprocess.TimeoutExpired:
        return f"no answer within {QUERY_TIMEOUT_S:.0f} s"
    if proc.returncode != 0:
        return f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:500]}"
    return None


def hint(name: str) -> str:
    if name == "sacct":
        return ("sacct needs Slurm's accounting database. Without one, set `slurm-status-command: "
                "squeue` (profiles/slurm/config.yaml) and keep MinJobAge >= 3 x "
                "slurm-init-seconds-before-status-checks.")
    return "Is slurmctld reachable from here (`sinfo`, `scontrol ping`)? Is SLURM_CONF right?"


def snakemake_cmd() -> list[str]:
    if importlib.util.find_spec("snakemake") is not None:
        return [sys.executable, "-m", "snakemake"]
    exe = shutil.which("snakemake")
    if exe is None:
        raise SystemExit("slurm_run: snakemake not found (run with the project's .venv/bin/python)")
    return [exe]


def main(argv: list[str]) -> int:
    profile_text = (REPO / PROFILE / "config.yaml").read_text() if (REPO / PROFILE).is_dir() else ""
    init_s = int(setting("slurm-init-seconds-before-status-checks", argv, profile_text) or PLUGIN_INIT_S)
    name = effective_status_command(setting("slurm-status-command", argv, profile_text), init_s)
    query = status_query(name)
    if (why := run_query(query)) is not None:
        log(f"ERROR: the SLURM status query fails before the run starts: {' '.join(query)}: {why}")
        log(hint(name))
        return 2
    log(f"status query: {name} (checked every {EVERY_S:.0f} s; error after {GRACE_S:.0f} s of failures)")

    cmd = [*snakemake_cmd(), "--workflow-profile", "none", "--profile", PROFILE, *argv]
    log(" ".join(cmd))
    child = subprocess.Popen(cmd)
    stop = threading.Event()
    failure: list[str] = []

    def interrupt(*_):
        if child.poll() is None:
            child.send_signal(signal.SIGINT)

    def watchdog():
        failing_since = None
        while not stop.wait(EVERY_S):
            why = run_query(query)
            if why is None:
                failing_since = None
                continue
            now = time.monotonic()
            failing_since = failing_since or now
            log(f"warning: status query failed ({why}); {now - failing_since:.0f} s in a row")
            if now - failing_since >= GRACE_S:
                failure.append(f"{' '.join(query)} has failed for {now - failing_since:.0f} s: {why}")
                log(f"ERROR: {failure[0]}. Snakemake cannot see its jobs finish; stopping it. {hint(name)}")
                interrupt()
                try:
                    child.wait(60)
                except subprocess.TimeoutExpired:
                    log("Snakemake did not stop within 60 s of SIGINT; killing it")
                    child.kill()
                return

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, lambda *_: None)  # Ctrl-C reaches Snakemake itself (same process group)
    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    rc = child.wait()
    stop.set()
    if failure:
        log(f"ERROR: stopped because {failure[0]}")
        return 3
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
