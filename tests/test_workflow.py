"""The Snakemake workflow as users run it: lint, the SLURM profile, a whole smoke run in a copy of the
repository, its report, and which jobs a changed hyperparameter re-runs (parsed from Snakemake's plan)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import zip_official

from megl.bench.workflow import copy_repo, snakemake_cmd, tool_env

SMOKE_RUNS = 8  # config/smoke.yaml: 1 dataset x 2 backbones x 2 methods x 2 seeds
SMOKE_CELLS = 4  # one run_cell job per (dataset, backbone, method); it trains both seeds, then one score job
SMOKE_RESULTS = "results/smoke"  # config/smoke.yaml's results_dir: a smoke run writes only there
SMOKE_REPORT = f"{SMOKE_RESULTS}/report.html"


def snakemake(cwd: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(snakemake_cmd(*args), cwd=cwd, env=tool_env(), capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{out[-6000:]}")
    return out


def planned_jobs(cwd: Path, *args: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job `snakemake --dry-run` plans, read from its printed plan."""
    jobs: list[tuple[str, dict[str, str]]] = []
    for line in snakemake(cwd, "--dry-run", *args).splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            jobs.append((m.group(1), {}))
        elif (m := re.match(r"^\s+wildcards: (.*)$", line)) and jobs:
            jobs[-1][1].update(kv.split("=", 1) for kv in m.group(1).split(", "))
    return jobs


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    return copy_repo(tmp_path_factory.mktemp("wf") / "repo")


def test_lint_is_clean(repo_copy):
    out = snakemake(repo_copy, "--lint")
    assert "Congratulations, your workflow is in a good condition!" in out, out


def fake_latexmk(folder: Path) -> Path:
    """A `latexmk` that answers `-v` like the real one: enough for shutil.which and the preflight."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "latexmk"
    script.write_text("#!/bin/sh\necho 'Latexmk, John Collins, fake for a test'\n")
    script.chmod(0o755)
    return folder


def test_installed_latexmk_changes_no_plan_unless_asked(repo_copy, tmp_path, monkeypatch):
    """MEGL_PDF=0 (the tests' pin): the same plan with and without a latexmk on PATH; unset (auto), an
    installed latexmk makes the PDF a default target of the default results_dir (another results_dir,
    e.g. the smoke's, never builds the manuscript); naming paper/main.pdf asks for it either way."""
    def plan(*config: str) -> list[str]:
        args = config or ("--configfile", "config/smoke.yaml")
        return sorted(rule for rule, _ in planned_jobs(repo_copy, *args, "--cores", "1"))

    monkeypatch.setenv("MEGL_PDF", "0")
    without = plan()
    monkeypatch.setenv("PATH", f"{fake_latexmk(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}")
    assert shutil.which("latexmk") == str(tmp_path / "bin" / "latexmk")
    assert plan() == without and "paper_pdf" not in without
    monkeypatch.setenv("MEGL_PDF", "auto")
    assert "paper_pdf" not in plan()  # the smoke's results_dir: no manuscript
    assert "paper_pdf" in plan("--configfile", "config/config.yaml")
    monkeypatch.setenv("MEGL_PDF", "yes")
    assert "MEGL_PDF='yes'" in snakemake(repo_copy, "--configfile", "config/smoke.yaml", "-n", check=False)


def test_a_dry_run_prints_no_unawaited_coroutine_warning(repo_copy):
    """Snakemake's own RuntimeWarning (snakemake/snakemake#4280) is silenced by workflow/Snakefile."""
    out = snakemake(repo_copy, "--configfile", "config/smoke.yaml", "--cores", "1", "-n")
    assert "Job stats" in out and "was never awaited" not in out and "tracemalloc" not in out, out[-3000:]


def test_slurm_profile_dry_run(repo_copy):
    jobs = planned_jobs(repo_copy, "--workflow-profile", "none", "--profile", "profiles/slurm", "--jobs", "1",
                        "--configfile", "config/smoke.yaml")
    assert sum(rule == "run_cell" for rule, _ in jobs) == SMOKE_CELLS


def test_reasons_are_hidden_unless_verbose(repo_copy):
    """profiles/default sets quiet: [reason]: no "reason:" line per job; --verbose shows them again."""
    quiet = snakemake(repo_copy, "--dry-run", "--configfile", "config/smoke.yaml")
    loud = snakemake(repo_copy, "--dry-run", "--configfile", "config/smoke.yaml", "--verbose")
    assert "run_cell" in quiet and "reason:" not in quiet, quiet[-2000:]
    assert loud.count("reason:") >= SMOKE_CELLS, loud[-2000:]


# ------------------------------------------------------------------ the resolved config
OVERRIDES = ("--config", "train={epochs: 3, lr: 1e-3}", "selection={grid: {weight: [2.0]}}")
PREFLIGHT = f"{SMOKE_RESULTS}/preflight.json"  # the cheapest job: a run that executes it writes the resolved config


def test_config_override_reaches_the_resolved_config_and_every_command(repo_copy):
    import yaml

    from megl.config import load_config

    snakemake(repo_copy, PREFLIGHT, "--force", "--cores", "1", "--configfile", "config/smoke.yaml", *OVERRIDES)
    resolved = repo_copy / SMOKE_RESULTS / "config.resolved.yaml"
    config = yaml.safe_load(resolved.read_text())
    assert (config["train"]["epochs"], config["train"]["lr"], config["train"]["batch_size"]) == (3, 0.001, 32)
    assert config["selection"]["grid"]["weight"] == [2.0] and config["selection"]["grid"]["lambda_t"] == [0.1, 1.0]
    assert config["train"]["schedule"] == "constant"  # schema default; config.yaml's cosine is not merged in
    assert "by_backbone" not in config["train"]  # --configfile replaces config/config.yaml
    assert config == load_config(resolved)
    out = snakemake(repo_copy, "--dry-run", "--printshellcmds", "--configfile", "config/smoke.yaml", *OVERRIDES)
    commands = [line for line in out.splitlines() if " -m megl " in line and "--config " in line]
    assert any(" run-cell " in c for c in commands), out[-3000:]
    assert all(f"--config {SMOKE_RESULTS}/config.resolved.yaml " in c for c in commands), commands
    assert "config/smoke.yaml" not in "\n".join(commands)
    # the one mention: the manuscript names the file the run was built from (it reads no setting of it)
    assert any(" -m megl paper " in line and "--config-file config/smoke.yaml" in line for line in out.splitlines())


def test_a_dry_run_writes_no_resolved_config(repo_copy):
    """`snakemake -n` only plans: the file the jobs of a finished or running workflow read stays as it is
    (the onstart handler writes it, and Snakemake calls none in a dry-run)."""
    resolved = repo_copy / SMOKE_RESULTS / "config.resolved.yaml"
    snakemake(repo_copy, PREFLIGHT, "--force", "--cores", "1", "--configfile", "config/smoke.yaml")
    before = (resolved.read_text(), resolved.stat().st_mtime_ns)
    snakemake(repo_copy, "--dry-run", "--configfile", "config/smoke.yaml", *OVERRIDES)
    assert (resolved.read_text(), resolved.stat().st_mtime_ns) == before
    other = repo_copy / "results" / "config.resolved.yaml"  # the default's results_dir, never run here
    snakemake(repo_copy, "--dry-run")
    assert not other.exists()


def test_a_dotted_or_misspelt_override_is_refused(repo_copy):
    out = snakemake(repo_copy, "--dry-run", "--config", "train.epochs=1", check=False)
    assert "valid identifier" in out, out[-2000:]
    out = snakemake(repo_copy, "--dry-run", "--config", "baselines={haics: {weigth: 0.2}}", check=False)
    assert "key baselines.haics:" in out and "'weigth'" in out, out[-2000:]


# ------------------------------------------------------------------ one real smoke run, then questions
def write_official_zip(repo: Path, zip_rel: str, top: str, n_images: int = 24) -> Path:
    """A small stand-in dataset zipped as the authors ship theirs (one top folder), at `repo/zip_rel`."""
    data = repo / ".official_standin"
    subprocess.run([sys.executable, "-m", "megl", "make-standin", "objects", str(data), "--n-images", str(n_images),
                    "--image-size", "32"], cwd=repo, env=tool_env(), check=True, capture_output=True)
    return zip_official(data, repo / zip_rel, top)


def test_official_data_is_unpacked_validated_and_split(repo_copy):
    """`source: official`: the zip is unpacked (the dataset folder itself, not the archive's wrapper
    folder), validated and split by the same rules the stand-ins go through."""
    config = yaml.safe_load((repo_copy / "config" / "smoke.yaml").read_text())
    zip_rel = "data/raw/Object_Classification.zip"
    config["datasets"]["objects"] = {"source": "official", "zip": zip_rel}
    (repo_copy / "config" / "official.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    write_official_zip(repo_copy, zip_rel, "Object_Classification")
    snakemake(repo_copy, "--configfile", "config/official.yaml", "--cores", "1",
              f"{SMOKE_RESULTS}/data/objects/split.json")
    assert (repo_copy / "data" / "official" / "objects" / "exp_annotation.json").is_file()
    split = json.loads((repo_copy / SMOKE_RESULTS / "data" / "objects" / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) + len(split["test"]) == 24


def assert_claims_follow_validity(tables: Path, n_cells: int) -> None:
    """validity.csv has a line per classifier cell; the claims are tested on the valid cells only
    (the smoke's one-epoch runs may all be invalid: then claims.csv holds its header alone)."""
    import pandas as pd

    validity = pd.read_csv(tables / "validity.csv")
    valid = validity[validity["valid"].astype(bool)]
    assert len(validity) == n_cells and validity.loc[~validity["valid"].astype(bool), "reason"].notna().all()
    claims = pd.read_csv(tables / "claims.csv")
    assert set(zip(claims["dataset"], claims["backbone"])) == set(zip(valid["dataset"], valid["backbone"]))
    assert (tables / "claims.tex").stat().st_size > 0 and "Cell validity" in (tables / "claims.md").read_text()


SMOKE_OUTPUT: dict[Path, str] = {}  # what the smoke run printed, per copy


def files_outside(repo: Path, inside: str) -> dict[str, int]:
    """Every file of the copy outside `inside` (and Snakemake's own .snakemake/), with its mtime."""
    return {p.relative_to(repo).as_posix(): p.stat().st_mtime_ns for p in repo.rglob("*")
            if p.is_file() and not p.relative_to(repo).as_posix().startswith((f"{inside}/", ".snakemake/"))
            and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("smoke") / "repo")
    before = files_outside(repo, SMOKE_RESULTS)
    SMOKE_OUTPUT[repo] = snakemake(repo, "--configfile", "config/smoke.yaml", "--cores", "2")
    after = files_outside(repo, SMOKE_RESULTS)
    # everything a smoke run writes lands under its results_dir: the default's results/, report.html,
    # paper/generated/ and figures/ are left as they were
    assert after == before, sorted(set(after.items()) ^ set(before.items()))
    return repo


@pytest.mark.slow
def test_smoke_run_tells_where_its_results_are(smoke_run):
    """The onsuccess story: report, claims, tables and figures by path; no per-job "reason:" line."""
    out = SMOKE_OUTPUT[smoke_run]
    assert f"report   {SMOKE_REPORT}  (not built yet: snakemake --profile profiles/default --configfile " \
           f"config/smoke.yaml --report {SMOKE_REPORT})" in out, out[-3000:]
    assert f"claims   {SMOKE_RESULTS}/tables/claims.md" in out
    assert f"tables   {SMOKE_RESULTS}/tables/table2.md" in out and f"{SMOKE_RESULTS}/tables/validity.csv" in out
    assert f"figures  {SMOKE_RESULTS}/figures/accuracy.png" in out and f"{SMOKE_RESULTS}/figures/qualitative.png" in out
    assert "reason:" not in out.lower().replace("reasons:", "")


@pytest.mark.slow
def test_smoke_run_fills_tables_figures_and_metrics(smoke_run):
    results = smoke_run / SMOKE_RESULTS
    metrics = sorted((results / "runs").glob("*/*/*/seed*/metrics.json"))
    assert len(metrics) == SMOKE_RUNS
    for path in metrics:
        m = json.loads(path.read_text())
        assert 0.0 <= m["accuracy"] <= 1.0 and m["n_test"] > 0, path
    for stem in ("table2", "table3", "table4", "table5", "paper_vs_ours"):
        csv = results / "tables" / f"{stem}.csv"
        assert len(csv.read_text().strip().splitlines()) >= 2, f"{csv} has no data row"
        assert (results / "tables" / f"{stem}.tex").stat().st_size > 0
        assert csv.read_text().splitlines()[1].split(",")[0] in (results / "tables" / f"{stem}.html").read_text()
    assert_claims_follow_validity(results / "tables", n_cells=2)
    table2 = (results / "tables" / "table2.md").read_text()
    assert "±" in table2, table2  # mean ± std over the two seeds
    for stem in ("accuracy", "miou", "ablation", "training", "forest", "qualitative"):
        assert (results / "figures" / f"{stem}.png").stat().st_size > 1000
        assert (results / "figures" / f"{stem}.pdf").stat().st_size > 0
    assert not list((smoke_run / "figures").glob("*.p*")), "figures go under the results_dir"
    assert (results / "paper" / "generated" / "table2.tex").exists()  # the manuscript's inputs, its own copy
    assert not (smoke_run / "paper" / "generated" / "table2.tex").exists()
    assert not (smoke_run / "results" / "dvc").exists(), "Snakemake must not write DVC's root"


@pytest.mark.slow
def test_smoke_run_is_complete_and_reports(smoke_run):
    assert planned_jobs(smoke_run, "--configfile", "config/smoke.yaml") == []
    snakemake(smoke_run, "--configfile", "config/smoke.yaml", "--report", SMOKE_REPORT)
    html = (smoke_run / SMOKE_REPORT).read_text(errors="replace")
    assert len(html) > 100_000 and "accuracy.png" in html
    assert not (smoke_run / "report.html").exists()


def _edit(path: Path, old: str, new: str) -> str:
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: expected one {old!r}"
    path.write_text(text.replace(old, new))
    return text


@pytest.mark.slow
def test_changing_a_method_hyperparameter_reruns_only_that_method(smoke_run):
    config = smoke_run / "config" / "smoke.yaml"
    # MEGL's text-weight grid; the baseline has no text weight
    original = _edit(config, "    lambda_t: [0.1, 1.0]", "    lambda_t: [0.2, 1.0]")
    try:
        jobs = planned_jobs(smoke_run, "--configfile", "config/smoke.yaml")
    finally:
        config.write_text(original)
    per_rule: dict[str, list[dict]] = {}
    for rule, wildcards in jobs:
        per_rule.setdefault(rule, []).append(wildcards)
    # no paper_pdf: the tests pin MEGL_PDF=0 (conftest.py), latexmk installed or not
    expected = ["all", "figures", "paper_inputs", "run_cell", "score", "summarize", "tables", "html_tables"]
    assert sorted(per_rule) == sorted(expected), per_rule
    assert len(per_rule["run_cell"]) == 2 and {w["method"] for w in per_rule["run_cell"]} == {"megl"}
    cells = {rule: sorted((w["dataset"], w["backbone"], w["method"]) for w in per_rule[rule])
             for rule in ("score", "run_cell")}
    assert cells["score"] == cells["run_cell"]  # the same cells, planned in any order

    # a method outside the smoke matrix: nothing to re-run
    _edit(config, "  haics:\n    weight: 0.1", "  haics:\n    weight: 0.3")
    try:
        assert planned_jobs(smoke_run, "--configfile", "config/smoke.yaml") == []
    finally:
        config.write_text(original)


@pytest.mark.slow
def test_a_config_override_reruns_what_the_same_file_edit_would(smoke_run):
    """`--config` changes the params like a file edit (planning it leaves the finished run's resolved config
    alone: a run that executes the jobs writes it, test_config_override_reaches_the_resolved_config...)."""
    import yaml

    jobs = planned_jobs(smoke_run, "--configfile", "config/smoke.yaml",
                        "--config", "selection={grid: {lambda_t: [0.2, 1.0]}}")
    cells = [w for rule, w in jobs if rule == "run_cell"]
    assert len(cells) == 2 and {w["method"] for w in cells} == {"megl"}, jobs
    resolved = yaml.safe_load((smoke_run / SMOKE_RESULTS / "config.resolved.yaml").read_text())
    assert resolved["selection"]["grid"]["lambda_t"] == [0.1, 1.0]  # the finished run's, as smoke.yaml says
    assert planned_jobs(smoke_run, "--configfile", "config/smoke.yaml",
                        "--config", "baselines={haics: {weight: 0.3}}") == []
    assert planned_jobs(smoke_run, "--configfile", "config/smoke.yaml") == []  # back to the file: nothing to do


def _append(path: Path, text: str):
    """Edit `path` (append `text`); returns the function that restores its content and times."""
    original, stat = path.read_bytes(), path.stat()
    path.write_bytes(original + text.encode())

    def restore():
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    return restore


@pytest.mark.slow
def test_editing_a_module_reruns_the_steps_that_import_it(smoke_run):
    """Code is an input (megl.codedeps): an edited losses.py re-runs the cells that train with it and
    the aggregation, not the stand-in generation or split; an edited doc re-runs nothing."""
    restore = _append(smoke_run / "src" / "megl" / "losses.py", "\n# edited\n")
    try:
        jobs = planned_jobs(smoke_run, "--configfile", "config/smoke.yaml")
    finally:
        restore()
    rules = {rule for rule, _ in jobs}
    assert sum(rule == "run_cell" for rule, _ in jobs) == SMOKE_CELLS
    assert sum(rule == "score" for rule, _ in jobs) == SMOKE_CELLS
    assert {"run_cell", "score", "tables", "html_tables", "figures", "summarize", "paper_inputs"} <= rules, rules
    assert not rules & {"make_standin", "validate_data", "split", "preflight", "pretrain_encoder",
                        "pretrain_backbone", "cache_features"}, rules

    # scoring apart from training (#22): an edited metric, or the metric registry and its scorers, re-scores
    # every cell and re-reports, re-trains nothing
    for metric in ("metrics/saliency.py", "metrics/text.py", "metric_registry.py", "scorers.py"):
        restore = _append(smoke_run / "src" / "megl" / metric, "\n# edited\n")
        try:
            jobs = planned_jobs(smoke_run, "--configfile", "config/smoke.yaml")
        finally:
            restore()
        rules = {rule for rule, _ in jobs}
        assert sum(rule == "score" for rule, _ in jobs) == SMOKE_CELLS, (metric, jobs)
        assert {"score", "tables", "figures", "summarize", "paper_inputs"} <= rules, (metric, rules)
        assert "run_cell" not in rules and "cache_features" not in rules, (metric, rules)

    restores = [_append(smoke_run / doc, "\nedited\n") for doc in ("README.md", "docs/workflow.md")]
    try:
        assert planned_jobs(smoke_run, "--configfile", "config/smoke.yaml") == []
    finally:
        for restore in restores:
            restore()


REPORT_FIGURES = ("accuracy", "miou", "ablation", "training", "forest", "qualitative")
REPORT_TABLES = ("table2", "table3", "table4", "table5", "paper_vs_ours", "claims")


def _caption_title(stem: str) -> str:
    """The bold first phrase of a caption file, e.g. 'Test accuracy per method.'"""
    text = (Path(__file__).resolve().parents[1] / "workflow" / "report" / f"{stem}.rst").read_text()
    return re.match(r"\*\*(.+?)\*\*", text).group(1)


def check_report(repo: Path) -> Path:
    """`make smoke`'s report command on a finished run: every figure and table of the DAG (tables as
    HTML pages, no markdown link), each with its own caption, and the stand-in marking; returns the report."""
    snakemake(repo, "--configfile", "config/smoke.yaml", "--report", SMOKE_REPORT)
    html = (repo / SMOKE_REPORT).read_text(errors="replace")
    for stem in REPORT_FIGURES:
        assert f"{stem}.png" in html, f"figure {stem} missing from the report"
    for stem in REPORT_TABLES:
        assert f"{stem}.html" in html, f"table {stem} missing from the report"
    assert "data:text/markdown" not in html
    for stem in REPORT_FIGURES + REPORT_TABLES:
        title = _caption_title(stem)
        assert title in html or json.dumps(title)[1:-1] in html, f"caption of {stem} missing: {title!r}"
    assert "stand-in" in html
    return repo / SMOKE_REPORT


@pytest.mark.slow
def test_report_holds_every_figure_and_table_with_its_caption(smoke_run):
    """...then, where Chromium is installed, renders it headless (test_report_build.render_headless: no
    console error, the page drawn), opens Table 2 in the report's own view as its eye button does and
    finds cells of table2.csv rendered as text there (test_report_build.render_report_result), and
    keeps the screenshots in this checkout's results/."""
    import pandas as pd
    from test_report_build import (
        SNAKEMAKE_REPORT_RENDERED,
        render_headless,
        render_report_result,
    )

    report = check_report(smoke_run)
    shots = Path(__file__).resolve().parents[1] / "results"
    # skips when Chromium is missing; the rules' report() categories are drawn in the menu
    render_headless(report, shots / "report_screenshot.png",
                    expect=SNAKEMAKE_REPORT_RENDERED + ("Figures", "Tables", "Runs"))
    table2 = pd.read_csv(smoke_run / SMOKE_RESULTS / "tables" / "table2.csv", dtype=str, keep_default_na=False)
    cells = (table2.iloc[0]["Accuracy"], table2.iloc[-1]["Method"], table2.iloc[0]["Backbone"])
    assert "±" in cells[0]  # a real measured cell, mean ± std over the two seeds
    render_report_result(report, "table2.html", shots / "report_table2_screenshot.png", expect=cells)
