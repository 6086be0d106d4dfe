"""dvc.yaml: the same runs as Snakemake (names read from `dvc stage list`, runs from Snakemake's own
dry-run plan), its top-level plots against what `megl summarize` writes, the pipelines `megl dvc-pipeline`
derives for other config files, and a whole `dvc repro` of the smoke config's pipeline in a fresh copy of
the repository beside a Snakemake run of the same config (then `dvc plots show`, `dvc exp run -S`,
`dvc params diff`)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_report_summary import write_run
from test_workflow import SMOKE_RUNS, assert_claims_follow_validity, planned_jobs, write_official_zip

from megl.bench.workflow import copy_repo, tool_env
from megl.dvc_pipeline import MATRIX_VARS, derive_pipeline, matrix_vars_text
from megl.matrix import Run, enumerate_runs, matrix_datasets, matrix_methods, matrix_mllm_methods
from megl.report.summary import PLOT_ACCURACY, PLOT_DIRS, PLOT_LOSS, PLOT_MIOU, write_summary

REPO = Path(__file__).resolve().parents[1]


def run(cwd: Path, *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}")
    return proc.stdout


def dvc_copy(dest: Path, config: dict | None = None) -> Path:
    """A fresh copy of the repository (git + DVC), with config/config.yaml replaced by `config` if given."""
    repo = copy_repo(dest)
    if config is not None:
        (repo / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (repo / MATRIX_VARS).write_text(matrix_vars_text(config, "config/config.yaml"))
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


@pytest.mark.parametrize("config", [load("config.yaml"), load("smoke.yaml"), with_mllm(load("smoke.yaml"))],
                         ids=["default", "smoke", "smoke+mllm"])
def test_dvc_and_snakemake_enumerate_the_same_runs(tmp_path, config):
    repo = dvc_copy(tmp_path / "repo", config)
    stages = dvc(repo, "stage", "list", "--name-only").split()

    planned = planned_jobs(repo, "--forceall")  # Snakemake's own plan for config/config.yaml
    cells = sorted((w["dataset"], w["backbone"], w["method"]) for rule, w in planned if rule == "run_cell")
    runs = sorted(enumerate_runs(config))
    assert cells == sorted({(r.dataset, r.backbone, r.method) for r in runs})

    cell_names = sorted(s for s in stages if s.startswith(("cell@", "cell_mllm@")))
    assert cell_names == sorted({r.dvc_stage for r in runs})
    datasets = matrix_datasets(config["matrix"])
    for step in ("validate_data", "split", "pretrain_encoder"):
        assert sorted(s for s in stages if s.startswith(f"{step}@")) == sorted(f"{step}@{d}" for d in datasets)
    caches = sorted(f"cache_features@{r.dataset}-{r.backbone}" for r in {Run(r.dataset, r.backbone, "", 0)
                    for r in runs if r.backbone != "mllm"})
    assert sorted(s for s in stages if s.startswith("cache_features@")) == caches
    assert caches == sorted(f"cache_features@{w['dataset']}-{w['backbone']}" for rule, w in planned
                            if rule == "cache_features")
    assert {"tables", "figures", "summarize"} <= set(stages)
    if not matrix_mllm_methods(config["matrix"]):  # no MLLM method expands to no stage, without error
        assert not any(s.startswith("cell_mllm") for s in stages)
    else:
        assert "cell_mllm@objects-llava_vqa" in stages


def test_dvc_matrix_vars_file_is_up_to_date():
    """config/dvc_matrix.yaml is what `megl dvc-matrix` derives from config/config.yaml today."""
    from megl.config import load_config

    expected = matrix_vars_text(load_config(REPO / "config" / "config.yaml"), "config/config.yaml")
    assert (REPO / MATRIX_VARS).read_text() == expected, "stale: run `megl dvc-matrix --write`"


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
    runs = enumerate_runs(config)
    cells = {f"{r.dataset}_{r.backbone}" for r in runs if r.backbone != "mllm"}
    mllm = {f"{r.dataset}_mllm" for r in runs if r.backbone == "mllm"}
    return sorted([f"results/dvc/plots/{kind}/{c}.csv" for kind in PLOT_DIRS for c in cells]
                  + [f"results/dvc/plots/{PLOT_ACCURACY}/{c}.csv" for c in mllm])


def test_dvc_plots_are_the_folders_summarize_writes():
    """The plot folders and columns live in megl.report.summary; dvc.yaml names the same ones."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert "--plots ${dvc_root}/plots" in spec["stages"]["summarize"]["cmd"]
    # cached, so that `dvc plots diff` / `dvc metrics diff` find another revision's files (results/ is not in git)
    assert {"${dvc_root}/metrics", "${dvc_root}/plots"} <= set(spec["stages"]["summarize"]["outs"])
    plots = {k: v for entry in spec["plots"] for k, v in entry.items()}
    assert sorted(plots) == sorted(f"${{dvc_root}}/plots/{kind}" for kind in PLOT_DIRS)
    assert plots[f"${{dvc_root}}/plots/{PLOT_LOSS}"].items() >= {"x": "step", "y": "${runs.methods}"}.items()
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
    assert {row["field"] for row in loss} == set(matrix_methods(config["matrix"]))  # one line per method
    assert sorted({float(row["dvc_inferred_y_value"]) for row in loss}) == [1.0, 1.5, 2.0]
    acc = data["results/dvc/plots/accuracy/objects_mllm.csv"]
    assert {row["method"]: float(row["accuracy"]) for row in acc} == {"llava_vqa": 0.55, "finetune_cot": 0.55}


# ------------------------------------------------------------------ pipelines for other config files
def test_dvc_pipeline_for_the_paper_config_unpacks_the_official_zips(tmp_path):
    """config/paper.yaml (official data, paper-scale models): the derived pipeline lists the same
    cells as Snakemake's plan would, unpacks each dataset's zip instead of generating a stand-in, and
    its unpack stage really runs on a small zip in the official format."""
    repo = dvc_copy(tmp_path / "repo")
    run(repo, sys.executable, "-m", "megl", "dvc-pipeline", "--configfile", "config/paper.yaml")
    pipeline = "pipelines/paper/dvc.yaml"
    stages = [s.split(":", 1)[1] for s in dvc(repo, "stage", "list", pipeline, "--name-only").split()]
    paper = load("paper.yaml")
    assert sorted(s for s in stages if s.startswith(("cell@", "cell_mllm@"))) == sorted(
        {r.dvc_stage for r in enumerate_runs(paper)})
    assert sorted(s for s in stages if s.startswith("unpack_data@")) == ["unpack_data@actions", "unpack_data@objects"]
    assert not any(s.startswith("make_standin") for s in stages)
    write_official_zip(repo, paper["datasets"]["objects"]["zip"], "Object_Classification")
    out = dvc(repo, "repro", f"{pipeline}:validate_data@objects")  # and what it needs: the unpacking
    assert "unpack_data@objects'" in out and "validate_data@objects'" in out, out
    data = repo / "results/dvc/pipelines/paper/data"
    assert (data / "standin/objects/exp_annotation.json").is_file()  # the dataset folder, unwrapped
    assert json.loads((data / "objects/validation.json").read_text())  # the unpacked data passed validation


def test_a_mixed_config_gets_an_unpack_stage_and_a_stand_in_stage():
    """One official dataset among stand-ins: each data stage covers its own datasets; every stage runs
    from the repository root and names the chosen config, never config/config.yaml."""
    config = load("config.yaml")
    config["datasets"]["actions"] = {"source": "official", "zip": "data/raw/Action_Classification.zip"}
    del config["datasets"]["actions_control"]  # official data has no control twin
    config["matrix"]["blocks"]["validity"]["datasets"].remove("actions_control")
    derived = derive_pipeline(yaml.safe_load((REPO / "dvc.yaml").read_text()), config, "config/mixed.yaml", "mixed")
    stages = derived["stages"]
    assert stages["unpack_data"]["foreach"] == {"actions": "data/raw/Action_Classification.zip"}
    assert sorted(stages["make_standin"]["foreach"]) == ["digits", "digits_control", "objects", "objects_control"]
    assert all((st["do"] if "foreach" in st else st)["wdir"] == "../.." for st in stages.values())
    assert derived["vars"] == ["../../config/mixed.yaml", "dvc_matrix.yaml",
                               {"dvc_root": "results/dvc/pipelines/mixed"}]
    assert "config/config.yaml" not in yaml.safe_dump(derived)
    assert derived["metrics"] == ["../../${dvc_root}/metrics"]


def test_dvc_pipeline_refuses_the_root_config_and_a_bad_config(tmp_path):
    repo = dvc_copy(tmp_path / "repo")
    proc = subprocess.run([sys.executable, "-m", "megl", "dvc-pipeline", "--configfile", "config/config.yaml"],
                          cwd=repo, env=tool_env(), capture_output=True, text=True)
    assert proc.returncode == 2 and "run `dvc repro` directly" in proc.stderr
    bad = repo / "config" / "bad.yaml"
    bad.write_text((repo / "config" / "smoke.yaml").read_text().replace("methods: [", "methods: [no_such_method, ", 1))
    proc = subprocess.run([sys.executable, "-m", "megl", "dvc-pipeline", "--configfile", "config/bad.yaml"],
                          cwd=repo, env=tool_env(), capture_output=True, text=True)
    assert proc.returncode == 2 and "bad.yaml" in proc.stderr and "no_such_method" in proc.stderr, proc.stderr
    assert not (repo / "pipelines" / "bad").exists()


# ------------------------------------------------------------------ one real `dvc repro`, then questions
SMOKE = "pipelines/smoke/dvc.yaml"
SMOKE_ROOT = "results/dvc/pipelines/smoke"


def snakemake_outputs(repo: Path) -> dict[str, str]:
    """Every file Snakemake wrote under results/ (not DVC's), with its content hash."""
    return {p.relative_to(repo).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((repo / "results").rglob("*"))
            if p.is_file() and "dvc" not in p.relative_to(repo / "results").parts[:1]}


@pytest.fixture(scope="module")
def smoke_repro(tmp_path_factory) -> Path:
    """A fresh copy: Snakemake runs the smoke config (as `make reproduce` would), then `dvc repro` runs
    the same config through its derived pipeline, without a tracked file edited."""
    repo = dvc_copy(tmp_path_factory.mktemp("dvc") / "repo")
    run(repo, sys.executable, "-m", "snakemake", "--configfile", "config/smoke.yaml", "--cores", "2")
    before = snakemake_outputs(repo)
    run(repo, sys.executable, "-m", "megl", "dvc-pipeline", "--configfile", "config/smoke.yaml")
    assert run(repo, "git", "status", "--porcelain", "--untracked-files=no") == ""  # nothing tracked edited
    dvc(repo, "repro", SMOKE)
    assert run(repo, "git", "status", "--porcelain", "--untracked-files=no") == ""
    assert snakemake_outputs(repo) == before  # DVC neither read-modified nor re-wrote Snakemake's outputs
    return repo


def smoke_plots(shown: dict, figures_made: bool = False) -> dict[str, list[dict]]:
    """`plotted` for the smoke pipeline's files only (the root pipeline's have not been made here)."""
    own = {k: v for k, v in shown["data"].items() if k.startswith(SMOKE_ROOT)}
    errors = [e for e in shown.get("errors", []) if e.get("name", "").startswith(SMOKE_ROOT)
              and (figures_made or not e["name"].startswith(f"{SMOKE_ROOT}/figures"))]
    return plotted({"data": own, "errors": errors}, figures_made=True)


def smoke_plot_files() -> list[str]:
    return [p.replace("results/dvc/", f"{SMOKE_ROOT}/", 1) for p in plot_files(load("smoke.yaml"))]


@pytest.mark.slow
def test_dvc_repro_smoke_from_a_fresh_copy(smoke_repro):
    repo = smoke_repro
    root = repo / SMOKE_ROOT
    metrics = sorted((root / "runs").glob("*/*/*/seed*/metrics.json"))
    assert len(metrics) == SMOKE_RUNS
    assert all(0.0 <= json.loads(p.read_text())["accuracy"] <= 1.0 for p in metrics)
    for stem in ("table2", "table3", "table4", "table5", "paper_vs_ours"):
        assert len((root / "tables" / f"{stem}.csv").read_text().strip().splitlines()) >= 2
    assert_claims_follow_validity(root / "tables", n_cells=2)
    for stem in ("accuracy", "miou", "ablation", "training", "forest", "qualitative"):
        assert (root / "figures" / f"{stem}.png").stat().st_size > 1000
    assert "up to date" in dvc(repo, "status", SMOKE)
    # after both tools ran, neither has anything left to do
    dry = subprocess.run([sys.executable, "-m", "snakemake", "--configfile", "config/smoke.yaml", "--cores", "1", "-n"],
                         cwd=repo, env=tool_env(), capture_output=True, text=True)
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-2000:]
    # code is an input (megl.codedeps): an edited losses.py changes the cell stages, not the stand-ins
    losses = repo / "src" / "megl" / "losses.py"
    original = losses.read_text()
    losses.write_text(original + "\n# edited\n")
    try:
        changed = {name.split(":", 1)[1] for name in json.loads(dvc(repo, "status", SMOKE, "--json"))}
    finally:
        losses.write_text(original)
    assert {"cell@objects-resnet18-megl", "cell@objects-vit_b_16-baseline"} <= changed, changed
    untouched = {"make_standin@objects", "split@objects", "pretrain_encoder@objects",
                 "cache_features@objects-resnet18", "tables", "summarize"}
    assert not untouched & changed, changed
    # scoring apart from training (#22): an edited metric changes the score stages only, no cell
    saliency = repo / "src" / "megl" / "metrics" / "saliency.py"
    original = saliency.read_text()
    saliency.write_text(original + "\n# edited\n")
    try:
        changed = {name.split(":", 1)[1] for name in json.loads(dvc(repo, "status", SMOKE, "--json"))}
    finally:
        saliency.write_text(original)
    expected = {f"score@objects-{b}-{m}" for b in ("resnet18", "vit_b_16") for m in ("baseline", "megl")}
    assert expected == changed, changed
    (repo / "README.md").write_text((repo / "README.md").read_text() + "\nedited\n")
    assert "up to date" in dvc(repo, "status", SMOKE)
    shown = json.loads(dvc(repo, "metrics", "show", "--json"))  # {rev: {"data": {path: {"data": metrics}}}}
    files = {path: entry["data"] for rev in shown.values() for path, entry in rev["data"].items()
             if path.startswith(SMOKE_ROOT)}
    # one aggregated file per dataset x backbone (megl summarize), each with every method's accuracy
    assert all(p.endswith(".json") for p in files), files  # one table: no raw-text CSV among the metrics
    per_cell = {Path(p).name: m for p, m in files.items()}
    assert sorted(per_cell) == ["objects_resnet18.json", "objects_vit_b_16.json"]
    assert all(m["baseline"]["accuracy"]["n"] == 2 for m in per_cell.values())


@pytest.mark.slow
def test_dvc_plots_show_writes_every_declared_plot(smoke_repro, tmp_path):
    out = tmp_path / "dvc_plots"
    dvc(smoke_repro, "plots", "show", "-o", str(out))
    html = (out / "index.html").read_text()
    for path in smoke_plot_files():
        assert path in html, f"{path} missing from dvc plots show's HTML"
    data = smoke_plots(json.loads(dvc(smoke_repro, "plots", "show", "--json")), figures_made=True)
    assert sorted(data) == smoke_plot_files()
    assert {p.suffix for p in (smoke_repro / SMOKE_ROOT / "figures").iterdir()} == {".png"}
    assert list((smoke_repro / SMOKE_ROOT / "figures_pdf").glob("*.pdf"))
    loss = data[f"{SMOKE_ROOT}/plots/loss/objects_resnet18.csv"]
    for method in ("baseline", "megl"):  # a curve per method, with real numbers at every step
        ys = [float(row["dvc_inferred_y_value"]) for row in loss if row["field"] == method]
        assert len(ys) > 1 and all(y > 0 for y in ys), (method, ys)
    for kind in (PLOT_ACCURACY, PLOT_MIOU):
        rows = data[f"{SMOKE_ROOT}/plots/{kind}/objects_vit_b_16.csv"]
        assert sorted(r["method"] for r in rows) == ["baseline", "megl"]
        assert all(0.0 <= float(r[kind]) <= 1.0 for r in rows)


def params_of(shown) -> list[dict]:
    """Every `params` block anywhere in `dvc exp show --json` (the baseline and each experiment)."""
    if isinstance(shown, dict):
        return ([shown["params"]] if "params" in shown else []) + [p for v in shown.values() for p in params_of(v)]
    return [p for v in shown for p in params_of(v)] if isinstance(shown, list) else []


@pytest.mark.slow
def test_dvc_exp_run_sets_a_param_and_params_diff_shows_it(smoke_repro):
    """Commit the pipeline (its dvc.lock), then try train.lr on one cell, re-score it and re-summarize (`-s`:
    only the stages named, ~15 s): `dvc params diff`, `dvc exp show`, `dvc plots diff` and `dvc metrics diff` see it.
    Runs last (it changes the copy)."""
    repo = smoke_repro
    run(repo, "git", "add", "-A")
    run(repo, "git", "-c", "user.name=test", "-c", "user.email=test@example.org", "commit", "--allow-empty",
        "-qm", "dvc repro")
    old = load("smoke.yaml")["train"]["lr"]
    new = old / 2
    out = dvc(repo, "exp", "run", "-s", "-S", f"config/smoke.yaml:train.lr={new}",
              f"{SMOKE}:cell@objects-resnet18-baseline", f"{SMOKE}:score@objects-resnet18-baseline",
              f"{SMOKE}:summarize")
    assert "cell@objects-resnet18-baseline'" in out and "score@objects-resnet18-baseline'" in out, out
    assert "summarize'" in out, out
    assert "cell@objects-resnet18-megl'" not in out, out

    diff = json.loads(dvc(repo, "params", "diff", "--json"))  # workspace (the experiment) against HEAD
    assert list(diff) == ["config/smoke.yaml"] and list(diff["config/smoke.yaml"]) == ["train.lr"], diff
    assert diff["config/smoke.yaml"]["train.lr"].items() >= {"old": old, "new": new}.items(), diff
    shown = params_of(json.loads(dvc(repo, "exp", "show", "--json")))
    lrs = [p["config/smoke.yaml"]["data"]["train"]["lr"] for p in shown if "config/smoke.yaml" in p]
    assert old in lrs and new in lrs, lrs

    data = smoke_plots(json.loads(dvc(repo, "plots", "diff", "HEAD", "--json")))
    for cell, changed in (("objects_resnet18", True), ("objects_vit_b_16", False)):
        rows = data[f"{SMOKE_ROOT}/plots/loss/{cell}.csv"]
        curve = {rev: [r["baseline"] for r in rows if r["rev"] == rev and r["field"] == "baseline"]
                 for rev in ("HEAD", "workspace")}
        assert curve["HEAD"] and curve["workspace"], curve  # both revisions read (HEAD's from the cache)
        assert (curve["HEAD"] != curve["workspace"]) == changed, (cell, curve)
    metrics = json.loads(dvc(repo, "metrics", "diff", "HEAD", "--json", "--all"))
    cell = metrics[f"{SMOKE_ROOT}/metrics/objects_resnet18.json"]
    assert cell["baseline.accuracy.mean"]["old"] is not None and cell["baseline.accuracy.mean"]["new"] is not None
