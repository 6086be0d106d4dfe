"""dvc.yaml: the same runs as Snakemake (names read from `dvc stage list`, runs from Snakemake's own
dry-run plan), its top-level plots against what `megl summarize` writes, the pipelines `megl dvc-pipeline`
derives for other config files, and a whole `dvc repro` of the smoke config's pipeline in a fresh copy of
the repository beside a Snakemake run of the same config (then `dvc plots show`, `dvc exp run -S`,
`dvc params diff`)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_report_summary import write_run
from test_workflow import SMOKE_RUNS, assert_claims_follow_validity, planned_jobs, write_official_zip

from megl.bench.workflow import copy_repo, tool_env
from megl.dvc_pipeline import MATRIX_VARS, derive_pipeline, matrix_vars_text
from megl.matrix import Run, enumerate_runs, matrix_datasets, matrix_mllm_methods
from megl.report.summary import write_summary

REPO = Path(__file__).resolve().parents[1]


def run(cwd: Path, *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}")
    return proc.stdout


DVC_ENV = "config/dvc_env.yaml"  # `python:` the interpreter of every stage (dvc.yaml vars)


def dvc_copy(dest: Path, config: dict | None = None) -> Path:
    """A fresh copy of the repository (git + DVC), with config/config.yaml replaced by `config` if given.
    The copy has no .venv: its stages run this interpreter, set the documented way (config/dvc_env.yaml)."""
    repo = copy_repo(dest)
    (repo / DVC_ENV).write_text(f"python: {sys.executable}\n")
    if config is not None:
        (repo / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (repo / MATRIX_VARS).write_text(matrix_vars_text(config, "config/config.yaml"))
    run(repo, "git", "init", "-q")
    run(repo, "git", "add", "-A")
    run(repo, "git", "-c", "user.name=test", "-c", "user.email=test@example.org", "commit", "-qm", "copy")
    return repo


def no_venv_env() -> dict[str, str]:
    """tool_env() without this interpreter's bin on PATH: a shell where the venv is not activated."""
    env = tool_env()
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    return env


def dvc(repo: Path, *args: str) -> str:
    """`.venv/bin/dvc ARGS` as the README writes it: the venv's dvc by path, the venv not activated, so a
    stage calling a bare `python` fails (No module named megl) and one calling `${python}` runs."""
    cmd = [str(Path(sys.executable).parent / "dvc"), *args]
    proc = subprocess.run(cmd, cwd=repo, env=no_venv_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}")
    return proc.stdout


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
FIGURE_STEMS = ("accuracy", "miou", "ablation", "training", "forest", "qualitative")


def stage_bodies(spec: dict) -> dict[str, dict]:
    return {name: (st["do"] if "foreach" in st else st) for name, st in spec["stages"].items()}


def test_every_stage_runs_the_projects_interpreter():
    """Every `megl` stage calls `${python} -m megl` (config/dvc_env.yaml: the venv's python), never a bare
    `python` that an unactivated venv does not provide; the derived pipelines keep it (and read the file)."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert "config/dvc_env.yaml" in spec["vars"]
    assert yaml.safe_load((REPO / DVC_ENV).read_text()) == {"python": ".venv/bin/python"}
    config = load("paper.yaml")
    derived = derive_pipeline(spec, config, "config/paper.yaml", "paper")
    assert "../../config/dvc_env.yaml" in derived["vars"]
    for pipeline in (spec, derived):
        cmds = {name: " ".join(body["cmd"].split()) for name, body in stage_bodies(pipeline).items()}
        assert cmds and all(c.startswith("${python} -m megl ") for c in cmds.values()), cmds


def test_dvc_shows_short_metrics_and_offline_image_plots():
    """No top-level vega plots (their HTML loads Vega from a CDN) and no top-level metrics (a missing
    one warns): the figures stage's PNGs are the plots, summarize's headline folder the metrics."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert "plots" not in spec and "metrics" not in spec
    assert spec["stages"]["figures"]["plots"] == ["${dvc_root}/figures"]  # cached: `dvc plots diff HEAD`
    summarize = spec["stages"]["summarize"]
    assert summarize["metrics"] == ["${dvc_root}/headline"] and "--headline ${dvc_root}/headline" in summarize["cmd"]
    assert {"${dvc_root}/metrics", "${dvc_root}/plots"} <= set(summarize["outs"])


def write_fake_figures(folder: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    for stem in FIGURE_STEMS:
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [1, 0])
        fig.savefig(folder / f"{stem}.png")
        plt.close(fig)


def assert_offline_plots(html_dir: Path, figures: list[str]) -> None:
    """`dvc plots show -o html_dir`: no script fetched over http(s), every figure an <img> of its file."""
    import re

    html = (html_dir / "index.html").read_text()
    assert not re.search(r"<script[^>]+src=[\"']?https?:", html), "the HTML loads a script from the network"
    assert "vega" not in html.lower()
    imgs = re.findall(r"<img[^>]+src=\"([^\"]+)\"", html)
    assert len(imgs) == len(figures), imgs
    for src, figure in zip(sorted(imgs), sorted(figures)):
        assert figure.replace("/", "_") in src
        assert (html_dir / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # real image content


def test_dvc_metrics_and_plots_show_on_a_run(tmp_path):
    """Stand-in runs for the smoke matrix with both MLLM baselines, `megl summarize` (headline included)
    and PNG figures: `dvc metrics show` prints a few columns per cell and no warning, `dvc plots show`
    an HTML page that draws every figure offline."""
    config = with_mllm(load("smoke.yaml"))
    repo = dvc_copy(tmp_path / "repo", config)
    root = repo / "results" / "dvc"
    for run in enumerate_runs(config):
        write_run(root, run.backbone, run.method, run.seed, accuracy=0.5 + 0.1 * run.seed)
    write_summary(config, root, root / "metrics", root / "plots", headline_dir=root / "headline")
    write_fake_figures(root / "figures")
    shown = subprocess.run([str(Path(sys.executable).parent / "dvc"), "metrics", "show"], cwd=repo,
                           env=no_venv_env(), capture_output=True, text=True)
    assert shown.returncode == 0 and "failed" not in shown.stdout + shown.stderr, shown
    lines = shown.stdout.strip().splitlines()
    assert lines[0].split() == ["Path", "accuracy", "miou"]
    cells = {f"{r.dataset}_{r.backbone}_{r.method}" for r in enumerate_runs(config)}
    assert len(lines) == 1 + len(cells) and max(map(len, lines)) < 120, shown.stdout
    data = json.loads(dvc(repo, "metrics", "show", "--json"))[""]["data"]
    assert sorted(Path(p).stem for p in data) == sorted(cells)
    assert data["results/dvc/headline/objects_mllm_llava_vqa.json"]["data"]["accuracy"] == 0.55  # mean of 0.5, 0.6
    assert set(data["results/dvc/headline/objects_resnet18_megl.json"]["data"]) == {"accuracy", "miou"}
    out = tmp_path / "html"
    dvc(repo, "plots", "show", "-o", str(out))
    assert_offline_plots(out, [f"{FIGURES}/{s}.png" for s in FIGURE_STEMS])


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
    assert derived["vars"] == ["../../config/mixed.yaml", "dvc_matrix.yaml", "../../config/dvc_env.yaml",
                               {"dvc_root": "results/dvc/pipelines/mixed"}]
    assert "config/config.yaml" not in yaml.safe_dump(derived)
    assert stages["summarize"]["metrics"] == ["${dvc_root}/headline"]


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


def smoke_figures() -> list[str]:
    return [f"{SMOKE_ROOT}/figures/{stem}.png" for stem in FIGURE_STEMS]


def stages_changed_by_editing(repo: Path, rel: str) -> set[str]:
    """The smoke pipeline's stages `dvc status` lists while `rel` has one more line (then restored)."""
    path = repo / rel
    original = path.read_text()
    path.write_text(original + "\n# edited\n")
    try:
        return {name.split(":", 1)[1] for name in json.loads(dvc(repo, "status", SMOKE, "--json"))}
    finally:
        path.write_text(original)


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
    changed = stages_changed_by_editing(repo, "src/megl/losses.py")
    assert {"cell@objects-resnet18-megl", "cell@objects-vit_b_16-baseline"} <= changed, changed
    untouched = {"make_standin@objects", "split@objects", "pretrain_encoder@objects",
                 "cache_features@objects-resnet18", "tables", "summarize"}
    assert not untouched & changed, changed
    # scoring apart from training (#22): an edited metric changes the score stages and the report's (it
    # reads the metric registry, which names the metrics' functions), no cell
    changed = stages_changed_by_editing(repo, "src/megl/metrics/saliency.py")
    expected = {f"score@objects-{b}-{m}" for b in ("resnet18", "vit_b_16") for m in ("baseline", "megl")}
    assert expected | {"tables", "summarize", "figures"} == changed, changed
    (repo / "README.md").write_text((repo / "README.md").read_text() + "\nedited\n")
    assert "up to date" in dvc(repo, "status", SMOKE)
    # the root pipeline has not run here: name the smoke pipeline's headline (docs/workflow.md)
    shown = json.loads(dvc(repo, "metrics", "show", "--json", f"{SMOKE_ROOT}/headline"))
    files = {path: entry["data"] for rev in shown.values() for path, entry in rev["data"].items()}
    # the headline: one short file per dataset x backbone x method (megl summarize --headline)
    per_cell = {Path(p).stem: m for p, m in files.items()}
    cells = [f"objects_{b}_{m}" for b in ("resnet18", "vit_b_16") for m in ("baseline", "megl")]
    assert sorted(per_cell) == sorted(cells)
    assert all(set(m) == {"accuracy", "miou"} for m in per_cell.values()), per_cell
    full = json.loads((root / "metrics" / "objects_resnet18.json").read_text())  # the full one, beside it
    assert full["baseline"]["accuracy"]["n"] == 2
    assert round(full["baseline"]["accuracy"]["mean"], 4) == per_cell["objects_resnet18_baseline"]["accuracy"]


@pytest.mark.slow
def test_dvc_plots_show_writes_every_declared_plot(smoke_repro, tmp_path):
    out = tmp_path / "dvc_plots"
    # the root pipeline has not run here, so its figures folder is missing (DVC then draws an empty vega
    # plot for it): name the smoke pipeline's, as docs/workflow.md says
    dvc(smoke_repro, "plots", "show", "-o", str(out), f"{SMOKE_ROOT}/figures")
    assert_offline_plots(out, smoke_figures())
    assert {p.suffix for p in (smoke_repro / SMOKE_ROOT / "figures").iterdir()} == {".png"}
    assert list((smoke_repro / SMOKE_ROOT / "figures_pdf").glob("*.pdf"))


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

    shown = json.loads(dvc(repo, "plots", "diff", "HEAD", "--json", "--targets", f"{SMOKE_ROOT}/figures"))["data"]
    for figure in smoke_figures():  # both revisions' images (HEAD's from the cache)
        assert sorted(r for e in shown[figure] for r in e["revisions"]) == ["HEAD", "workspace"], shown[figure]
    metrics = json.loads(dvc(repo, "metrics", "diff", "HEAD", "--json", "--all"))
    cell = metrics[f"{SMOKE_ROOT}/headline/objects_resnet18_baseline.json"]
    assert cell["accuracy"]["old"] is not None and cell["accuracy"]["new"] is not None
