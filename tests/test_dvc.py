"""dvc.yaml: the same runs as Snakemake (names read from `dvc stage list`, runs from Snakemake's own
dry-run plan), its top-level plots against what `megl summarize` writes, and a whole `dvc repro` of the
smoke config in a fresh copy of the repository (then `dvc plots show`, `dvc exp run -S`, `dvc params diff`)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from megl.bench.workflow import copy_repo, tool_env
from megl.matrix import Run, enumerate_runs
from megl.report.summary import PLOT_ACCURACY, PLOT_DIRS, PLOT_LOSS, PLOT_MIOU, write_summary
from test_report_summary import write_run
from test_workflow import SMOKE_RUNS, planned_jobs

REPO = Path(__file__).resolve().parents[1]


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
    return yaml.safe_load((REPO / "config" / name).read_text())


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


FIGURES = "results/dvc/figures"  # the figures stage's `plots:` (PNGs only; the PDFs go to figures_pdf/)


def plotted(shown: dict, figures_made: bool = False) -> dict[str, list[dict]]:
    """`dvc plots show/diff --json`: {plotted data file: its rows (each with its `rev`)}; fails on any
    error DVC reports (before the figures stage ran, but its folder's: it does not exist yet)."""
    errors = [e for e in shown.get("errors", [])
              if figures_made or not e.get("name", "").startswith(FIGURES)]
    assert not errors, errors
    return {path: [row for entry in entries for row in entry["content"]["data"]["values"]]
            for path, entries in shown["data"].items() if entries and entries[0]["type"] == "vega"}


def plot_files(config: dict) -> list[str]:
    """What dvc.yaml's top-level plots must draw for `config`: one file per folder and cell."""
    m = config["matrix"]
    cells = [f"{d}_{b}" for d in m["datasets"] for b in m["backbones"]]
    return sorted([f"results/dvc/plots/{kind}/{c}.csv" for kind in PLOT_DIRS for c in cells]
                  + [f"results/dvc/plots/{PLOT_ACCURACY}/{d}_mllm.csv" for d in m["datasets"]
                     if m.get("mllm_methods")])


def test_dvc_plots_are_the_folders_summarize_writes():
    """The plot folders and columns live in megl.report.summary; dvc.yaml names the same ones."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert "--plots ${dvc_root}/plots" in spec["stages"]["summarize"]["cmd"]
    # cached, so that `dvc plots diff` / `dvc metrics diff` find another revision's files (results/ is not in git)
    assert {"${dvc_root}/metrics", "${dvc_root}/plots"} <= set(spec["stages"]["summarize"]["outs"])
    plots = {k: v for entry in spec["plots"] for k, v in entry.items()}
    assert sorted(plots) == sorted(f"${{dvc_root}}/plots/{kind}" for kind in PLOT_DIRS)
    assert plots[f"${{dvc_root}}/plots/{PLOT_LOSS}"].items() >= {"x": "step", "y": "${matrix.methods}"}.items()
    for kind in (PLOT_ACCURACY, PLOT_MIOU):
        assert plots[f"${{dvc_root}}/plots/{kind}"].items() >= {"x": kind, "y": "method"}.items()


def test_dvc_plots_show_draws_what_summarize_writes(tmp_path):
    """Stand-in runs (metrics.json + train_log.csv) for the smoke matrix with both MLLM baselines,
    `megl summarize`'s plot data, then `dvc plots show --json`: every declared plot, no error."""
    config = with_mllm(load("smoke.yaml"))
    repo = dvc_copy(tmp_path / "repo", config)
    root = repo / "results" / "dvc"
    for run in enumerate_runs(config):
        write_run(root, run.backbone, run.method, run.seed, accuracy=0.5 + 0.1 * run.seed)
        (root / run.path / "train_log.csv").write_text("epoch,step,loss\n0,0,2.0\n0,1,1.5\n1,2,1.0\n")
    write_summary(config, root, root / "metrics", root / "plots")
    data = plotted(json.loads(dvc(repo, "plots", "show", "--json")))  # no figures made here
    assert sorted(data) == plot_files(config)
    loss = data["results/dvc/plots/loss/objects_resnet18.csv"]
    assert {row["field"] for row in loss} == set(config["matrix"]["methods"])  # one line per method
    assert sorted({float(row["dvc_inferred_y_value"]) for row in loss}) == [1.0, 1.5, 2.0]
    acc = data["results/dvc/plots/accuracy/objects_mllm.csv"]
    assert {row["method"]: float(row["accuracy"]) for row in acc} == {"llava_vqa": 0.55, "finetune_cot": 0.55}


# ------------------------------------------------------------------ one real `dvc repro`, then questions
@pytest.fixture(scope="module")
def smoke_repro(tmp_path_factory) -> Path:
    repo = dvc_copy(tmp_path_factory.mktemp("dvc") / "repo", load("smoke.yaml"))
    dvc(repo, "repro")
    return repo


@pytest.mark.slow
def test_dvc_repro_smoke_from_a_fresh_copy(smoke_repro):
    repo = smoke_repro
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
    untouched = {"make_standin@objects", "split@objects", "pretrain_encoder@objects",
                 "cache_features@objects-resnet18", "tables", "summarize"}
    assert not untouched & changed, changed
    (repo / "README.md").write_text((repo / "README.md").read_text() + "\nedited\n")
    assert "up to date" in dvc(repo, "status")
    shown = json.loads(dvc(repo, "metrics", "show", "--json"))  # {rev: {"data": {path: {"data": metrics}}}}
    files = {path: entry["data"] for rev in shown.values() for path, entry in rev["data"].items()}
    # one aggregated file per dataset x backbone (megl summarize), each with every method's accuracy
    assert all(p.endswith(".json") for p in files), files  # one table: no raw-text CSV among the metrics
    per_cell = {Path(p).name: m for p, m in files.items() if p.endswith(".json")}
    assert sorted(per_cell) == ["objects_resnet18.json", "objects_vit_b_16.json"]
    assert all(m["baseline"]["accuracy"]["n"] == 2 for m in per_cell.values())
    # DVC stays inside its own root: nothing of Snakemake's paths appears
    assert not (repo / "results" / "runs").exists() and not (repo / "results" / "standin").exists()
    assert not any((repo / "figures").iterdir())


@pytest.mark.slow
def test_dvc_plots_show_writes_every_declared_plot(smoke_repro, tmp_path):
    out = tmp_path / "dvc_plots"
    dvc(smoke_repro, "plots", "show", "-o", str(out))
    html = (out / "index.html").read_text()
    for path in plot_files(load("smoke.yaml")):
        assert path in html, f"{path} missing from dvc plots show's HTML"
    data = plotted(json.loads(dvc(smoke_repro, "plots", "show", "--json")), figures_made=True)
    assert sorted(data) == plot_files(load("smoke.yaml"))
    assert {p.suffix for p in (smoke_repro / FIGURES).iterdir()} == {".png"}
    assert list((smoke_repro / "results" / "dvc" / "figures_pdf").glob("*.pdf"))
    loss = data["results/dvc/plots/loss/objects_resnet18.csv"]
    for method in ("baseline", "megl"):  # a curve per method, with real numbers at every step
        ys = [float(row["dvc_inferred_y_value"]) for row in loss if row["field"] == method]
        assert len(ys) > 1 and all(y > 0 for y in ys), (method, ys)
    for kind in (PLOT_ACCURACY, PLOT_MIOU):
        rows = data[f"results/dvc/plots/{kind}/objects_vit_b_16.csv"]
        assert sorted(r["method"] for r in rows) == ["baseline", "megl"]
        assert all(0.0 <= float(r[kind]) <= 1.0 for r in rows)


def params_of(shown) -> list[dict]:
    """Every `params` block anywhere in `dvc exp show --json` (the baseline and each experiment)."""
    if isinstance(shown, dict):
        return ([shown["params"]] if "params" in shown else []) + [p for v in shown.values() for p in params_of(v)]
    return [p for v in shown for p in params_of(v)] if isinstance(shown, list) else []


@pytest.mark.slow
def test_dvc_exp_run_sets_a_param_and_params_diff_shows_it(smoke_repro):
    """Commit the pipeline (dvc.lock), then try train.lr on one cell and re-summarize (`-s`: only the
    stages named, ~15 s): `dvc params diff`, `dvc exp show`, `dvc plots diff` and `dvc metrics diff` see it.
    Runs last (it changes the copy)."""
    repo = smoke_repro
    run(repo, "git", "add", "-A")
    run(repo, "git", "-c", "user.name=test", "-c", "user.email=test@example.org", "commit", "--allow-empty", "-qm", "dvc repro")
    old = load("smoke.yaml")["train"]["lr"]
    new = old / 2
    out = dvc(repo, "exp", "run", "-s", "-S", f"config/config.yaml:train.lr={new}",
              "cell@objects-resnet18-baseline", "summarize")
    assert "Running stage 'cell@objects-resnet18-baseline'" in out and "Running stage 'summarize'" in out, out
    assert "Running stage 'cell@objects-resnet18-megl'" not in out, out

    diff = json.loads(dvc(repo, "params", "diff", "--json"))  # workspace (the experiment) against HEAD
    assert list(diff) == ["config/config.yaml"] and list(diff["config/config.yaml"]) == ["train.lr"], diff
    assert diff["config/config.yaml"]["train.lr"].items() >= {"old": old, "new": new}.items(), diff
    lrs = [p["config/config.yaml"]["data"]["train"]["lr"] for p in params_of(json.loads(dvc(repo, "exp", "show", "--json")))]
    assert old in lrs and new in lrs, lrs

    data = plotted(json.loads(dvc(repo, "plots", "diff", "HEAD", "--json")))
    for cell, changed in (("objects_resnet18", True), ("objects_vit_b_16", False)):
        rows = data[f"results/dvc/plots/loss/{cell}.csv"]
        curve = {rev: [r["baseline"] for r in rows if r["rev"] == rev and r["field"] == "baseline"]
                 for rev in ("HEAD", "workspace")}
        assert curve["HEAD"] and curve["workspace"], curve  # both revisions read (HEAD's from the cache)
        assert (curve["HEAD"] != curve["workspace"]) == changed, (cell, curve)
    metrics = json.loads(dvc(repo, "metrics", "diff", "HEAD", "--json", "--all"))
    cell = metrics["results/dvc/metrics/objects_resnet18.json"]
    assert cell["baseline.accuracy.mean"]["old"] is not None and cell["baseline.accuracy.mean"]["new"] is not None
