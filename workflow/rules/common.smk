# Paths and the run matrix. The matrix comes from megl.matrix, the one enumeration DVC uses too.
import sys

from megl.config import validate_config
from megl.matrix import enumerate_runs

validate_config(config, "snakemake config")
RUNS = enumerate_runs(config)
RESULTS = config.get("results_dir", "results")
MEGL = f"{sys.executable} -m megl"
CONFIG_FILE = workflow.overwrite_configfiles[-1] if workflow.overwrite_configfiles else "config/config.yaml"

# GPUs: Snakemake only counts them (--resources gpu=N); megl gpu-run assigns one per job (flock).
_gpu = workflow.global_resources.get("gpu")
N_GPUS = int(getattr(_gpu, "value", _gpu) or 0)
GPU_JOB = 1 if config["device"] != "cpu" else 0


def gpu_prefix(wildcards, resources):
    """Wrap a GPU job so that it holds one GPU slot for its whole life."""
    return f"{MEGL} gpu-run --n-gpus {N_GPUS} --" if resources.gpu and N_GPUS else ""


def data_root(dataset):
    source = config["datasets"][dataset]["source"]
    return f"data/standin/{dataset}" if source == "standin" else f"data/official/{dataset}"


def run_folder(run):
    return f"{RESULTS}/{run.path}"


def all_metrics():
    return [f"{run_folder(r)}/metrics.json" for r in RUNS]
