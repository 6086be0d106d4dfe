#!/usr/bin/env bash
# The paper-scale device check (docs/benchmarks.md, "Paper scale"): run on a lent GPU machine from the repo root.
#   bash tools/paper_scale.sh OUT_DIR [bench|reproduce|all]      (default: all)
# bench:     megl plan, then python -m megl.bench.paper_scale on config/paper.yaml: every model family at full size
#            (random weights, bf16, the configured batch), ms/step, peak memory, finite losses, gradient reached,
#            GPU-hours of the whole matrix on 1 and 4 GPUs. About 3-6 min on an H100 (the 7B LM is built on the card).
# reproduce: the embedded default (`make reproduce`) with device=cuda, then `megl compare` of its summary against
#            docs/reference/default_summary.csv (the CPU run). Needs Java for the text scorers (`megl preflight`
#            stops the run otherwise) and, without a built .venv, snakemake importable by $PYTHON.
#            Run it as a separate call when the device budget is short: it takes longer than the bench.
set -uo pipefail
out=${1:?usage: tools/paper_scale.sh OUT_DIR [bench|reproduce|all]}
what=${2:-all}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}src HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
rc=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/nvidia_smi.csv"
if [[ $what == bench || $what == all ]]; then
  $py -m megl plan --config config/paper.yaml --json "$out/plan.json" > "$out/plan.txt" 2> "$out/plan.log"
  echo "plan exit $?"
  t0=$SECONDS
  $py -m megl.bench.paper_scale --config config/paper.yaml --out "$out/paper_scale.json" > "$out/paper_scale.log" 2>&1
  b=$?; rc=$((rc || b))
  echo "paper_scale exit $b in $((SECONDS - t0)) s"; grep -v -i warn "$out/paper_scale.log" | tail -n 40
fi
if [[ $what == reproduce || $what == all ]]; then
  command -v java >/dev/null || echo "note: no java on this machine: the text-writing cells' scorers (METEOR, PTB) will stop the run"
  t0=$SECONDS
  if [[ -x .venv/bin/snakemake ]]; then
    make reproduce SNAKE_ARGS="--config device=cuda --resources gpu=1" > "$out/reproduce.log" 2>&1
  else  # the machine's own Python with the workflow's packages (no venv build: nothing can be downloaded there)
    $py -m snakemake --profile profiles/default --cores all --config device=cuda --resources gpu=1 \
      > "$out/reproduce.log" 2>&1
  fi
  r=$?; rc=$((rc || r))
  echo "reproduce (device=cuda) exit $r in $((SECONDS - t0)) s"; tail -n 20 "$out/reproduce.log"
  if [[ -f results/metrics/summary.csv ]]; then
    cp results/metrics/summary.csv "$out/summary_cuda.csv"
    $py -m megl compare --reference docs/reference/default_summary.csv --summary results/metrics/summary.csv \
      --out "$out/compare_cuda_vs_cpu.md" > /dev/null 2> "$out/compare.log"
    echo "compare exit $?"; head -n 40 "$out/compare_cuda_vs_cpu.md"
  fi
fi
exit $rc
