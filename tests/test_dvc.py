"""dvc.yaml: the same runs as Snakemake (names read from `dvc stage list`, runs from Snakemake's own
dry-run plan), and a whole `dvc repro` of the smoke config in a fresh copy of the repository."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from megl.bench.workflow import copy_repo, tool_env
from megl.matrix import Run, enumerate_runs
from test_workflow import SMOKE_RUNS, planned_jobs


def run(cwd: Path, *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}")
    return proc.stdout


def dvc_copy(dest: Path, config: dict) -> Path:
    """A fresh copy of the repository (git + DVC) whose config/config.yaml is `config`."""
    repo = copy_repo(dest)
    (repo / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run(repo, "git", "init", "-q")
    run(repo, "git", "add", "-A")
    run(repo, "git", "-c", "user.name=test", "-c", "user.email=test@example.org", "commit", "-qm", "copy")
    return repo


def dvc(repo: Path, *args: str) -> str:
    return run(repo, "dvc", *args)


def load(name: str) -> dict:
    return yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / name).read_text())


def with_mllm(config: dict) -> dict:
    config["matrix"]["mllm_methods"] = ["llava_vqa", "finetune_cot"]
    return config


@pytest.mark.parametrize("config", [load("config.yaml"), load("smoke.yaml"), with_mllm(load("config.yaml"))],
                         ids=["default", "smoke", "default+mllm"])
def test_dvc_and_snakemake_enumerate_the_same_runs(tmp_path, config):
    repo = dvc_copy(tmp_path / "repo", config)
    stages = dvc(repo, "stage", "list", "--name-only").split()

    planned = planned_jobs(repo, "--forceall")  # Snakemake's own plan for config/config.yaml
    cells = sorted((w["dataset"], w["backbone"], w["method"]) for rule, w in planned if rule == "run_cell")
    runs = sorted(enumerate_runs(config))
    assert cells == sorted({(r.dataset, r.backbone, r.method) for r in runs})

    cell_names = sorted(s for s in stages if s.startswith(("cell@", "cell_mllm@")))
    assert cell_names == sorted({r.dvc_stage for r in runs})
    datasets = config["matrix"]["datasets"]
    for step in ("validate_data", "split", "pretrain_encoder"):
        assert sorted(s for s in stages if s.startswith(f"{step}@")) == sorted(f"{step}@{d}" for d in datasets)
    assert sorted(s for s in stages if s.startswith("cache_features@")) == sorted(
        f"cache_features@{d}-{b}" for d in datasets for b in config["matrix"]["backbones"])
    assert {"tables", "figures", "summarize"} <= set(stages)
    if not config["matrix"].get("mllm_methods"):  # an empty list expands to no stage, without error
        assert not any(s.startswith("cell_mllm") for s in stages)
    else:
        assert "cell_mllm@objects-llava_vqa" in stages


def test_dvc_stage_names_are_readable(tmp_path):
    stages = dvc(dvc_copy(tmp_path / "repo", load("config.yaml")), "stage", "list", "--name-only").split()
    assert "cell@objects-resnet18-megl" in stages and "cell@digits-vit_b_16-baseline" in stages
    assert "make_standin@objects" in stages and "pretrain_backbone@resnet18" in stages


@pytest.mark.slow
def test_dvc_repro_smoke_from_a_fresh_copy(tmp_path):
    repo = dvc_copy(tmp_path / "repo", load("smoke.yaml"))
    dvc(repo, "repro")
    root = repo / "results" / "dvc"
    metrics = sorted((root / "runs").glob("*/*/*/seed*/metrics.json"))
    assert len(metrics) == SMOKE_RUNS
    assert all(0.0 <= json.loads(p.read_text())["accuracy"] <= 1.0 for p in metrics)
    for stem in ("table2", "table3", "table4", "table5", "paper_vs_ours", "claims"):
        assert len((root / "tables" / f"{stem}.csv").read_text().strip().splitlines()) >= 2
    for stem in ("accuracy", "miou", "ablation", "training", "forest", "qualitative"):
        assert (root / "figures" / f"{stem}.png").stat().st_size > 1000
    assert "up to date" in dvc(repo, "status")
    # code is an input (megl.codedeps): an edited losses.py changes the cell stages, not the stand-ins
    losses = repo / "src" / "megl" / "losses.py"
    original = losses.read_text()
    losses.write_text(original + "\n# edited\n")
    try:
        changed = set(json.loads(dvc(repo, "status", "--json")))
    finally:
        losses.write_text(original)
    assert {"cell@objects-resnet18-megl", "cell@objects-vit_b_16-baseline"} <= changed, changed
    assert not {"make_standin@objects", "split@objects", "tables", "summarize"} & changed, changed
    (repo / "README.md").write_text((repo / "README.md").read_text() + "\nedited\n")
    assert "up to date" in dvc(repo, "status")
    shown = json.loads(dvc(repo, "metrics", "show", "--json"))  # {rev: {"data": {path: {"data": metrics}}}}
    files = {path: entry["data"] for rev in shown.values() for path, entry in rev["data"].items()}
    # one aggregated file per dataset x backbone (megl summarize), each with every method's accuracy
    per_cell = {Path(p).name: m for p, m in files.items() if p.endswith(".json")}
    assert sorted(per_cell) == ["objects_resnet18.json", "objects_vit_b_16.json"]
    assert all(m["baseline"]["accuracy"]["n"] == 2 for m in per_cell.values())
    # DVC stays inside its own root: nothing of Snakemake's paths appears
    assert not (repo / "results" / "runs").exists() and not (repo / "results" / "standin").exists()
    assert not any((repo / "figures").iterdir())
