# Paths, the run matrix and the helpers the rules share. The matrix comes from megl.matrix, the one
# enumeration DVC's dvc.yaml follows too (tests/test_dvc.py checks both plan the same runs).
import os
import shlex
import shutil
import sys

from snakemake.settings.types import DeploymentMethod

from snakemake.exceptions import WorkflowError

from megl.codedeps import code_deps as _code_deps
from megl.config import dump_resolved, for_cell, resolve_config, resolved_config_path, section_for_backbone
from megl.io import write_text_if_changed
from megl.matrix import enumerate_runs
from megl.methods import MLLM_BACKBONE, get_method
from megl.models import SOURCE_PRETRAINED  # not megl.models.backbones: every Snakemake process would import torch
from megl.matrix import training_config as training_config_of

RUNS = enumerate_runs(config)
CONTROL_TWINS = {d: e["control_for"] for d, e in config["datasets"].items() if e.get("control_for")}
RESULTS = config.get("results_dir", "results")
# Under --use-conda the rules' env (workflow/envs/megl.yaml) provides `python`; otherwise the
# environment running Snakemake (the project's .venv) runs every step, named one way whether
# Snakemake was started as .venv/bin/snakemake or `python -m snakemake` (it is a rule param).
_PYTHON = os.path.join(sys.prefix, "bin", "python")
PYTHON = ("python" if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
          else _PYTHON if os.path.exists(_PYTHON) else sys.executable)
MEGL = f"{PYTHON} -m megl"
CONDA_ENV = "../envs/megl.yaml"
# The one config every megl command reads: the resolved config (config files + --config overrides +
# schema defaults, validated), written by the onstart handler (workflow/Snakefile) of a run that executes
# jobs, only when its content changed, atomically. Snakemake calls onstart after it holds this directory's
# lock and never in a dry-run (`-n` writes nothing) or in a cluster job (--no-hooks). It is no rule's input
# (its mtime re-runs nothing); the rules' params carry the values that re-run a job (docs/workflow.md).
CONFIG_FILE = str(resolved_config_path(config))
# The config file(s) this run was built from, as given (the manuscript names them: paper/generated/config.tex).
CONFIG_SOURCES = [os.path.relpath(f) for f in workflow.config_settings.configfiles] or ["config/config.yaml"]
RESOLVED_CONFIG_TEXT = dump_resolved(resolve_config(config, "snakemake config"))


def write_resolved_config():
    """onstart: the resolved config where every job of this run reads it."""
    write_text_if_changed(CONFIG_FILE, RESOLVED_CONFIG_TEXT)


# GPUs: Snakemake only counts them (--resources gpu=N); megl gpu-run assigns one per job (flock).
_gpu = workflow.global_resources.get("gpu")
N_GPUS = int(getattr(_gpu, "value", _gpu) or 0)
GPU_JOB = 1 if config["device"] != "cpu" else 0

TABLES = [f"{RESULTS}/tables/{s}.{ext}" for s in
          ("table2", "table3", "table4", "table5", "paper_vs_ours", "claims", "shortcut") for ext in ("csv", "md", "tex")]
TABLES += [f"{RESULTS}/tables/{s}.csv" for s in ("validity", "paper_vs_ours_tau")]  # megl.report.validity, Kendall's tau
# Every figure is always made (an "n/a" figure with the reason where the runs hold nothing to draw), under
# the results_dir: two configs never overwrite each other's figures.
FIGURES = [f"{RESULTS}/figures/{s}.{ext}" for s in ("accuracy", "miou", "ablation", "training", "forest", "qualitative")
           for ext in ("png", "pdf")]


# The manuscript's inputs (paper/generated/, read by paper/main.tex) and the HTML report come from the
# default results_dir; any other results_dir (smoke, full) gets its own, under it, and no PDF: two configs
# never overwrite each other's files.
MAIN_RESULTS = os.path.normpath(RESULTS) == "results"
PAPER_GENERATED = "paper/generated" if MAIN_RESULTS else f"{RESULTS}/paper/generated"
REPORT_HTML = "report.html" if MAIN_RESULTS else f"{RESULTS}/report.html"  # make report / make smoke write it
_CONFIGFILES = " ".join(f"--configfile {os.path.relpath(f)}" for f in workflow.config_settings.configfiles or [])
REPORT_COMMAND = ("make report" if not _CONFIGFILES and MAIN_RESULTS
                  else f"snakemake --profile profiles/default {_CONFIGFILES} --report {REPORT_HTML}")
# The tables the report shows as HTML pages (megl.report.html_tables, rule html_tables).
HTML_TABLES = [f"{RESULTS}/tables/{s}.html" for s in
               ("table2", "table3", "table4", "table5", "paper_vs_ours", "claims", "shortcut")]


# Preflight (workflow/rules/preflight.smk): the tools the runs need, checked before any training.
# The PDF is a default target per MEGL_PDF: `auto` (unset: when latexmk is installed), `1` (always: the
# preflight fails without latexmk) or `0` (never; the tests pin it, so that an installed latexmk does
# not change their DAG). Naming paper/main.pdf as a target asks for it whatever MEGL_PDF says (the
# targets are not parsed yet when this file is read, hence the command line).
PREFLIGHT = f"{RESULTS}/preflight.json"
_MEGL_PDF = os.environ.get("MEGL_PDF", "auto")
if _MEGL_PDF not in ("auto", "0", "1"):
    raise WorkflowError(f"MEGL_PDF={_MEGL_PDF!r}: use auto (the default), 1 or 0")
PDF_DEFAULT = bool(shutil.which("latexmk")) if _MEGL_PDF == "auto" else _MEGL_PDF == "1"
PDF_ASKED = PDF_DEFAULT or any(str(a).endswith("paper/main.pdf") for a in sys.argv)


# Code is an input: every rule that runs `megl COMMAND` takes the package files that command imports
# or reads (megl.codedeps, static analysis), so editing one re-runs its steps and what follows them.
_MEGL_SRC = os.path.relpath(os.path.join(workflow.basedir, "src", "megl"))


def code_deps(command):
    """The src/megl files `megl COMMAND` imports (transitively, lazy imports too) or reads."""
    return _code_deps(command, root=_MEGL_SRC, prefix=_MEGL_SRC)


def report_outputs():
    outputs = [PREFLIGHT] + TABLES + HTML_TABLES + FIGURES + [f"{PAPER_GENERATED}/.inputs_done", f"{RESULTS}/metrics"]
    if PDF_DEFAULT and MAIN_RESULTS:
        outputs.append("paper/main.pdf")
    return outputs


def print_story():
    """The onsuccess story (workflow/Snakefile): where the report, claims, tables and figures are."""
    from megl.report.story import story

    print("\n".join(story(RESULTS, REPORT_HTML, REPORT_COMMAND)), flush=True)


def gpu_prefix(wildcards, resources):
    """Wrap a GPU job so that it holds one GPU slot for its whole life."""
    return f"{MEGL} gpu-run --n-gpus {N_GPUS} --" if resources.gpu and N_GPUS else ""


def data_root(dataset):
    source = config["datasets"][dataset]["source"]
    return f"{RESULTS}/standin/{dataset}" if source == "standin" else f"data/official/{dataset}"


def run_folder(run):
    return f"{RESULTS}/{run.path}"


def all_metrics():
    return [f"{run_folder(r)}/metrics.json" for r in RUNS]


def backbone_weights(backbone):
    """The trunk file a backbone starts from: the pretrain_backbone step's output for `weights: source`,
    a local file, or nothing (trained from scratch)."""
    if backbone == MLLM_BACKBONE:
        return []
    weights = config["backbones"][backbone].get("weights")
    if weights == SOURCE_PRETRAINED:
        return f"{RESULTS}/backbones/{backbone}.safetensors"
    return weights or []


def cell_inputs(wildcards):
    method = get_method(wildcards.method)
    inputs = {"data": data_root(wildcards.dataset), "split": f"{RESULTS}/data/{wildcards.dataset}/split.json"}
    if method.writes_text:
        inputs["encoders"] = f"{RESULTS}/encoders/{wildcards.dataset}"
    if method.kind == "classifier":
        inputs["cache"] = f"{RESULTS}/features/{wildcards.dataset}/{wildcards.backbone}.safetensors"
        weights = backbone_weights(wildcards.backbone)
        if weights:
            inputs["weights"] = weights
    return inputs


def cell_optional_args(wildcards, input):
    args = [f"--{name} {input[key]}" for name, key in
            (("pretrained", "encoders"), ("cache", "cache"), ("backbone-weights", "weights")) if key in input.keys()]
    return " ".join(args)


def cell_outputs(name):
    """(seed, path) of one file in every seed's run folder of a cell; {dataset} etc. stay wildcards."""
    return [(seed, f"{RESULTS}/runs/{{dataset}}/{{backbone}}/{{method}}/seed{seed}/{name}")
            for seed in config["matrix"]["seeds"]]


def cell_config(wildcards):
    """What this cell's runs read, as the rule's params: the run spec the job itself resolves (megl.run_spec)."""
    return training_config_of(config, wildcards.method, wildcards.backbone, wildcards.dataset)
