#!/usr/bin/env bash
# The one prepared device check (docs/benchmarks.md, "CUDA"): run on a lent GPU machine from the repo root.
#   bash tools/cuda_check.sh OUT_DIR
# 1. batch-1 latency (fp32, bf16) and MEGL double-backprop train steps of both paper-scale backbones;
# 2. the real workflow commands on the smoke config with device=cuda (pretrain, cache, two method cells per backbone,
#    megl_visual_only and cdep: selection + 2 seeds + evaluation each), timed.
set -uo pipefail
out=${1:?usage: tools/cuda_check.sh OUT_DIR}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}src HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/nvidia_smi.csv"
$py -m megl.bench.cuda_check --config config/paper.yaml --out "$out/cuda_check.json" > "$out/cuda_check.log" 2>&1
echo "cuda_check exit $?"; tail -c 3000 "$out/cuda_check.log"
work=$(mktemp -d)
C="--config config/smoke.yaml --set device=cuda"
t0=$SECONDS
{
  $py -m megl make-standin objects "$work/data" --n-images 240 --image-size 64 &&
  $py -m megl split "$work/data" --out "$work/split.json" &&
  for b in resnet18 vit_b_16; do
    $py -m megl pretrain-backbone $C --backbone $b --out "$work/$b.safetensors" &&
    $py -m megl cache-features $C --data-root "$work/data" --split "$work/split.json" --backbone $b \
      --backbone-weights "$work/$b.safetensors" --out "$work/$b.features.safetensors" &&
    for m in megl_visual_only cdep; do
      $py -m megl run-cell $C --dataset objects --backbone $b --method $m --runs-root "$work/runs/$b/$m" \
        --selection-out "$work/sel_${b}_$m.json" --data-root "$work/data" --split "$work/split.json" \
        --cache "$work/$b.features.safetensors" --backbone-weights "$work/$b.safetensors" || exit 1
    done
  done
} > "$out/smoke.log" 2>&1
rc=$?
echo "smoke exit $rc in $((SECONDS - t0)) s"; tail -n 30 "$out/smoke.log"
for b in resnet18 vit_b_16; do for m in megl_visual_only cdep; do
  cp "$work/runs/$b/$m/seed0/metrics.json" "$out/metrics_${b}_$m.json" 2>/dev/null; done; done
exit $rc
