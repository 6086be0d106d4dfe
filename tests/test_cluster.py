"""The SLURM path (docs/gpus_and_clusters.md): profiles/slurm, tools/slurm_run.py, tools/local_slurm.sh.

Fast tests need no Slurm: dry-runs read the resources each job would request, the plugin's own
functions turn them into the sbatch arguments, and fake `squeue`/`sacct`/`sbatch` on PATH show that a
failing status query stops the run with an error instead of a silent hang. The `slow` test runs the
smoke workflow on a real cluster whenever one answers (`make cluster-up`), and skips otherwise.
Jobs are picked by what they write (`model.safetensors`, `metrics.json`), not by rule name.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from megl.bench.workflow import copy_repo, snakemake_cmd, tool_env

REPO = Path(__file__).resolve().parents[1]
SLURM_PROFILE = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
LOCAL_PROFILE = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
DOCUMENTED = ("--workflow-profile", "none", "--profile", "profiles/slurm")  # what tools/slurm_run.py runs
GPU_OUTPUTS = ("model.safetensors",)  # the cells: training and prediction (scoring, metrics.json, runs on CPUs)
DRY_TIMEOUT_S = 300
RUN_TIMEOUT_S = 3600


def run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = DRY_TIMEOUT_S):
    """A subprocess that can never hang the tests: output captured, always a timeout."""
    return subprocess.run(cmd, cwd=cwd, env=env or tool_env(), capture_output=True, text=True, timeout=timeout)


def dry_run_jobs(repo: Path, *args: str, env: dict | None = None) -> list[dict]:
    """Every job of `snakemake --dry-run ARGS`: its rule, outputs and resources (ints where they are)."""
    proc = run(snakemake_cmd("--dry-run", *args), repo, env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    jobs: list[dict] = []
    for line in out.splitlines():
        if m := re.match(r"^(local)?rule (\w+):$", line):
            jobs.append({"rule": m.group(2), "local": bool(m.group(1)), "outputs": [], "resources": {}})
        elif jobs and (m := re.match(r"^\s+output: (.*)$", line)):
            jobs[-1]["outputs"] = m.group(1).split(", ")
        elif jobs and (m := re.match(r"^\s+resources: (.*)$", line)):
            for kv in m.group(1).split(", "):
                key, value = kv.split("=", 1)
                jobs[-1]["resources"][key] = int(value) if value.isdigit() else value
        elif jobs and (m := re.match(r"^\s+threads: (\d+)$", line)):
            jobs[-1]["threads"] = int(m.group(1))
    return jobs


def gpu_jobs(jobs: list[dict]) -> list[dict]:
    return [j for j in jobs if any(o.endswith(GPU_OUTPUTS) for o in j["outputs"])]


class _Resources(dict):
    """Snakemake's job.resources as the plugin reads it: `.get(name)` and `.name`."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e


def plugin_sbatch_args(job: dict) -> str:
    """The sbatch command line snakemake-executor-plugin-slurm builds for this dry-run job."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    fake = SimpleNamespace(resources=_Resources(job["resources"]), threads=job.get("threads", 1))
    params = {"run_uuid": "RUN", "slurm_logfile": "log/%j.log", "comment_str": f"rule_{job['rule']}",
              "account": "", "partition": "", "workdir": "."}
    return get_submit_command(fake, params) + set_gres_string(fake)


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    return copy_repo(tmp_path_factory.mktemp("cluster") / "repo")


# ---------------------------------------------------------------- the two profiles: which one wins
def test_documented_command_requests_the_slurm_profiles_resources_and_one_gpu(repo_copy):
    jobs = dry_run_jobs(repo_copy, *DOCUMENTED, "--jobs", "2", "--configfile", "config/smoke.yaml",
                        "--config", "device=cuda")
    runtime = SLURM_PROFILE["default-resources"]["runtime"]
    mem_mb = SLURM_PROFILE["default-resources"]["mem_mb"]
    submitted = [j for j in jobs if not j["local"]]
    assert submitted and all(j["resources"]["runtime"] == runtime for j in submitted), submitted
    # rules that declare no mem_mb get the SLURM profile's (a rule's own mem_mb wins)
    assert any(j["resources"]["mem_mb"] == mem_mb for j in submitted), submitted

    gpu = gpu_jobs(jobs)
    assert len(gpu) >= 2, "expected the cells (training and prediction) in the smoke plan"
    for job in gpu:
        assert job["resources"].get("gpu") == 1, job
        args = plugin_sbatch_args(job)
        assert " --gpus=1" in args, args
        assert f" -t {runtime}" in args and f" --mem {job['resources']['mem_mb']}" in args, args
        assert "--gres" not in args, args  # one way to ask: the plugin's `gpu` resource
    for job in (j for j in submitted if j not in gpu):
        assert not job["resources"].get("gpu"), job
        assert "--gpus" not in plugin_sbatch_args(job)


def test_without_workflow_profile_none_the_local_profile_wins(repo_copy):
    """The defect behind `--workflow-profile none`: Snakemake also loads profiles/default, whose keys
    win key by key. SLURM jobs then ask for its default-resources, and its `resources: gpu: 0`
    scales every GPU request down to 0, so no job would get a GPU."""
    jobs = dry_run_jobs(repo_copy, "--profile", "profiles/slurm", "--jobs", "2",
                        "--configfile", "config/smoke.yaml", "--config", "device=cuda")
    local_runtime = LOCAL_PROFILE["default-resources"]["runtime"]
    assert local_runtime != SLURM_PROFILE["default-resources"]["runtime"]
    assert all(j["resources"]["runtime"] == local_runtime for j in jobs if not j["local"])
    assert all(j["resources"].get("gpu") == 0 for j in gpu_jobs(jobs))


def test_every_documented_slurm_command_passes_workflow_profile_none():
    for path in ("README.md", "docs/gpus_and_clusters.md", "profiles/slurm/config.yaml", "Makefile"):
        for line in (REPO / path).read_text().splitlines():
            if re.search(r"snakemake\b.*--profile[ =]profiles/slurm", line):
                assert "--workflow-profile none" in line, f"{path}: {line.strip()}"
    text = (REPO / "tools" / "slurm_run.py").read_text()
    assert '"--workflow-profile", "none", "--profile", PROFILE' in text


def test_slurm_profile_names_its_status_command_and_keeps_squeue():
    assert SLURM_PROFILE["slurm-status-command"] == "squeue"
    init_s = SLURM_PROFILE["slurm-init-seconds-before-status-checks"]
    # the plugin silently switches squeue -> sacct when MinJobAge < 3 x init; Slurm's default is 300
    assert 3 * init_s <= 300
    # no GPU limit on the login node: it would count (or with 0, remove) the jobs' GPU requests
    assert "gpu" not in (SLURM_PROFILE.get("resources") or {})


# ---------------------------------------------------------------- a failing status query: an error, not a hang
FAKE_SLURM = {
    "sinfo": 'echo "debug*  up  infinite  1  idle  localhost"',
    "scontrol": 'echo "MinJobAge               = ${FAKE_MINJOBAGE:-300} sec"',
    "sbatch": 'echo "$*" >> "$FAKE/sbatch.log"; echo 4242',
    "scancel": 'echo "$*" >> "$FAKE/scancel.log"',
    "sacct": 'echo "Slurm accounting storage is disabled" >&2; exit 1',
    # works until the first job is submitted, then the controller "goes away"
    "squeue": ('if [ -e "$FAKE/sbatch.log" ] || [ -e "$FAKE/down" ]; then\n'
               '  echo "slurm_load_jobs error: Unable to contact slurm controller (connect failure)" >&2; exit 1\n'
               'fi'),
}


@pytest.fixture
def fake_slurm(tmp_path) -> tuple[Path, dict]:
    fake = tmp_path / "fake-slurm"
    fake.mkdir()
    for name, body in FAKE_SLURM.items():
        (fake / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake / name).chmod(0o755)
    env = tool_env()
    env.update(FAKE=str(fake), PATH=f"{fake}{os.pathsep}{env['PATH']}", MEGL_SLURM_STATUS_EVERY_S="1",
               MEGL_SLURM_STATUS_GRACE_S="5")
    env.pop("SLURM_CONF", None)
    return fake, env


def slurm_run(repo: Path, env: dict, *args: str, timeout: float = 240):
    start = time.monotonic()
    proc = run([sys.executable, "tools/slurm_run.py", *args], repo, env, timeout)
    return proc, time.monotonic() - start


def test_a_status_query_that_fails_from_the_start_stops_before_submitting(repo_copy, fake_slurm):
    fake, env = fake_slurm
    (fake / "down").touch()
    proc, seconds = slurm_run(repo_copy, env, "--configfile", "config/smoke.yaml")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "ERROR: the SLURM status query fails" in proc.stderr and "squeue" in proc.stderr
    assert not (fake / "sbatch.log").exists() and seconds < 60


def test_sacct_without_accounting_is_refused_at_once(repo_copy, fake_slurm):
    _, env = fake_slurm
    proc, _ = slurm_run(repo_copy, env, "--configfile", "config/smoke.yaml", "--slurm-status-command", "sacct")
    assert proc.returncode == 2 and "accounting" in proc.stderr, proc.stderr[-3000:]
    # the plugin's silent squeue -> sacct switch (MinJobAge < 3 x init) is caught the same way
    env["FAKE_MINJOBAGE"] = "10"
    proc, _ = slurm_run(repo_copy, env, "--configfile", "config/smoke.yaml")
    assert proc.returncode == 2 and "will query sacct" in proc.stderr, proc.stderr[-3000:]


def test_a_status_query_that_keeps_failing_stops_the_run_with_an_error(repo_copy, fake_slurm):
    """The defect: the plugin logs a failed query at debug level and forgets the job; Snakemake then
    waits forever. The wrapper's watchdog turns it into an error (here after 5 s; default 45 s)."""
    fake, env = fake_slurm
    proc, seconds = slurm_run(repo_copy, env, "--configfile", "config/smoke.yaml", "--jobs", "1")
    assert proc.returncode == 3, (proc.stdout + proc.stderr)[-4000:]
    assert "has failed for" in proc.stderr and "Unable to contact slurm controller" in proc.stderr
    assert len((fake / "sbatch.log").read_text().splitlines()) == 1  # one job went out, then silence
    assert seconds < 180


def test_default_watchdog_reports_within_a_minute():
    text = (REPO / "tools" / "slurm_run.py").read_text()
    every = float(re.search(r'MEGL_SLURM_STATUS_EVERY_S", "([\d.]+)"', text).group(1))
    grace = float(re.search(r'MEGL_SLURM_STATUS_GRACE_S", "([\d.]+)"', text).group(1))
    assert every + grace <= 60


# ---------------------------------------------------------------- a real cluster, when one answers
LOCAL_SLURM_DIR = os.environ.get("MEGL_SLURM_DIR", f"/tmp/megl-slurm-{os.environ.get('USER', 'root')}")
LOCAL_SLURM_CONF = Path(LOCAL_SLURM_DIR) / "slurm.conf"


def cluster_env() -> tuple[dict | None, str]:
    """The environment under which `sinfo` shows an idle node within a few seconds, else why not."""
    if shutil.which("sinfo") is None:
        return None, "no Slurm client (sinfo) installed; `make cluster-up` starts a local cluster"
    env = tool_env()
    if "SLURM_CONF" not in env and LOCAL_SLURM_CONF.exists():
        env["SLURM_CONF"] = str(LOCAL_SLURM_CONF)  # the cluster `make cluster-up` started
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-t", "idle", "-o", "%N"], env=env, capture_output=True,
                              text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return None, "sinfo did not answer within 10 s; `make cluster-up` starts a local cluster"
    if proc.returncode != 0 or not proc.stdout.strip():
        return None, "no Slurm cluster with an idle node answers (`make cluster-up` starts one)"
    return env, ""


def without_latency(value):
    if isinstance(value, dict):
        return {k: without_latency(v) for k, v in value.items() if "latency" not in k and k != "fps"}
    if isinstance(value, list):
        return [without_latency(v) for v in value]
    return value


def all_metrics(repo: Path) -> dict[str, dict]:
    return {str(p.relative_to(repo)): without_latency(json.loads(p.read_text()))
            for p in sorted((repo / "results").rglob("metrics.json"))}


def job_completion_records(env: dict) -> dict[str, dict] | None:
    """slurmctld's jobcomp/filetxt records by job id, where the cluster writes them (the local one)."""
    proc = run(["scontrol", "show", "config"], Path.cwd(), env, 20)
    conf = dict(re.findall(r"^(\w+)\s*=\s*(.*?)\s*$", proc.stdout, re.MULTILINE))
    if conf.get("JobCompType") != "jobcomp/filetxt" or not Path(conf.get("JobCompLoc", "")).is_file():
        return None
    records = {}
    for line in Path(conf["JobCompLoc"]).read_text().splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        records[fields["JobId"]] = fields
    return records


def local_rules() -> set[str]:
    """The rules the Snakefile declares `localrules:` (the aggregate target, the preflight check)."""
    block = re.search(r"^localrules:\n((?:\s+\w+,?\n?)+)", (REPO / "Snakefile").read_text(), re.MULTILINE)
    return set(re.findall(r"\w+", block.group(1))) if block else set()


@pytest.mark.slow
def test_smoke_run_on_slurm_matches_the_local_run(tmp_path):
    env, why = cluster_env()
    if env is None:
        if os.environ.get("MEGL_REQUIRE_CLUSTER"):
            pytest.fail(why)
        pytest.skip(why)

    local = copy_repo(tmp_path / "local")
    start = time.monotonic()
    proc = run(snakemake_cmd("--configfile", "config/smoke.yaml", "--cores", "2"), local, env, RUN_TIMEOUT_S)
    local_s = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-4000:]

    slurm = copy_repo(tmp_path / "slurm")
    start = time.monotonic()
    # the profile's own `jobs: 100`: Slurm queues what is ready and starts it as CPUs free up
    # (2 at once on the local node, as --cores 2 locally), without waiting for a status check
    proc = run([sys.executable, "tools/slurm_run.py", "--configfile", "config/smoke.yaml"], slurm, env, RUN_TIMEOUT_S)
    slurm_s = time.monotonic() - start
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]

    # every job but the aggregate target went through sbatch, and slurmctld saw each one succeed
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    total = int(re.search(r"^total\s+(\d+)$", log, re.MULTILINE).group(1))
    local_jobs = re.findall(r"^localrule (\w+):$", log, re.MULTILINE)
    assert set(local_jobs) <= local_rules(), local_jobs  # only the Snakefile's localrules run in Snakemake itself
    # the profile's `groups:` put each dataset's data chain (stand-in, validation, split) into one sbatch job
    counts = dict((rule, int(n)) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", log, re.MULTILINE) if rule != "total")
    grouped = sum(counts.get(rule, 0) for rule in SLURM_PROFILE.get("groups", {}))
    chains = counts.get("make_standin", 0) if SLURM_PROFILE.get("groups") else 0
    assert len(submitted) == len(set(submitted)) == total - len(local_jobs) - grouped + chains, log[-6000:]
    records = job_completion_records(env)
    if records is not None:
        for job_id in submitted:
            rec = records.get(job_id)
            assert rec and rec["Name"] == run_id and rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", rec

    local_metrics, slurm_metrics = all_metrics(local), all_metrics(slurm)
    assert len(local_metrics) >= 2 and slurm_metrics == local_metrics
    for stem in ("table2", "table3", "table4", "claims"):
        table = Path("results/smoke/tables") / f"{stem}.csv"
        assert (slurm / table).read_bytes() == (local / table).read_bytes()

    numbers = {"local_s": round(local_s, 1), "slurm_s": round(slurm_s, 1), "ratio": round(slurm_s / local_s, 2),
               "sbatch_jobs": len(submitted), "snakemake_jobs": total,
               "init_seconds_before_status_checks": SLURM_PROFILE["slurm-init-seconds-before-status-checks"]}
    print("cluster smoke:", json.dumps(numbers))
    (tmp_path / "cluster_smoke.json").write_text(json.dumps(numbers))

    # GPU requests reach Slurm: one training run again with device=auto (gpu=1 jobs, CPU in the
    # job as no CUDA is there); the local cluster's node declares a fake gpu GRES to schedule them
    model = next(p for p in sorted((slurm / "results").rglob("model.safetensors"))
                 if (p.parent / "metrics.json").exists())  # a trained run, not a pretrained encoder
    metrics = model.parent / "metrics.json"
    proc = run([sys.executable, "tools/slurm_run.py", "--configfile", "config/smoke.yaml", "--config", "device=auto",
                "--rerun-triggers", "mtime", "--forcerun", str(model.relative_to(slurm)), "--verbose",
                "--", str(metrics.relative_to(slurm))], slurm, env, RUN_TIMEOUT_S)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    calls = re.findall(r"sbatch call: (.*)", log)
    assert calls and all(" --gpus=1" in c for c in calls), calls
    assert without_latency(json.loads(metrics.read_text())) == local_metrics[str(metrics.relative_to(slurm))]

    max_ratio = float(os.environ.get("MEGL_CLUSTER_MAX_RATIO", "2"))  # the bound
    assert slurm_s <= max_ratio * local_s, numbers
