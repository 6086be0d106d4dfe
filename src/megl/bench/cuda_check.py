"""One prepared device check for a lent GPU: CUDA smoke training, bf16, batch-1 latency.

    python -m megl.bench.cuda_check --config config/paper.yaml --out results/bench/cuda_check.json

Sections (each one recorded even when another fails):
- `latency`: batch-1 latency/FPS of both paper-scale backbones (fp32 and bf16 autocast), the
  paper's Table 5 protocol (classifier forward, no decoding).
- `train_step`: a few optimiser steps of the MEGL visual objective (L_pred + λ_v·(L1 | L_dc) on a
  differentiable Grad-CAM, double backprop) per backbone under bf16 autocast: ms/step, peak
  memory, whether every loss stayed finite and the classifier got a gradient through Â.
On a CPU it runs the same code (`--device cpu --quick`), which is how the tests keep it honest.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
import traceback
from pathlib import Path

import torch
import yaml

from megl import losses
from megl.io import write_json
from megl.models.backbones import build_classifier
from megl.models.gradcam import saliency
from megl.timing import count_parameters, latency_of_classifier


def _latency(cfg: dict, device: torch.device, warmup: int, repeats: int) -> dict:
    model = build_classifier(cfg, num_classes=40).to(device)
    out = {"params": count_parameters(model), "image_size": int(cfg["image_size"])}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        r = latency_of_classifier(model, int(cfg["image_size"]), device, warmup, repeats, bf16=bf16)
        out[name] = {"latency_ms": round(r["latency_ms"], 3), "fps": round(r["fps"], 2), "bf16_used": r["bf16_used"]}
    return out


def _train_step(cfg: dict, device: torch.device, batch: int, steps: int, target_cfg: dict) -> dict:
    torch.manual_seed(0)
    size, k = int(cfg["image_size"]), 40
    model = build_classifier(cfg, num_classes=k).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.rand(batch, 3, size, size, device=device)
    labels = torch.randint(0, k, (batch,), device=device)
    maps = (torch.rand(batch, 1, size, size, device=device) > 0.8).float()
    has_map = torch.arange(batch, device=device) % 2 == 0
    mean_map = torch.full((size, size), 1.0 / size ** 2, device=device)
    use_bf16 = device.type == "cuda"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, finite, grad_norms = [], True, []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits, _, sal, _ = saliency(model, images, labels, create_graph=True)
            l_pred = losses.prediction_loss(logits.float(), labels)
            l_vis = losses.visual_l1_loss(sal.float(), maps, has_map, target_cfg)
            l_dc = losses.distribution_consistency_loss(sal.float(), mean_map, has_map)
        # gradient that reaches the classifier through Â alone (double backprop)
        (g,) = torch.autograd.grad(l_vis, [p for p in model.parameters() if p.requires_grad][0],
                                   retain_graph=True, allow_unused=True)
        grad_norms.append(0.0 if g is None else float(g.float().norm()))
        loss = l_pred + 1.0 * (0.5 * l_vis + 0.5 * l_dc)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1000)
        finite &= all(bool(torch.isfinite(t).all()) for t in (l_pred, l_vis, l_dc))
    warm = times[1:] or times
    return {"batch": batch, "steps": steps, "bf16": use_bf16, "ms_per_step": round(sorted(warm)[len(warm) // 2], 2),
            "losses_finite": finite, "saliency_grad_reaches_first_param": any(n > 0 for n in grad_norms),
            "peak_mem_gib": (round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
                             if device.type == "cuda" else None)}


def run(config: dict, device: torch.device, quick: bool) -> dict:
    warmup, repeats, batch, steps = (1, 3, 2, 2) if quick else (20, 100, 32, 6)
    report: dict = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
                    "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                                    else platform.processor()),
                    "latency": {}, "train_step": {}, "errors": {}}
    for name, cfg in config["backbones"].items():
        cfg = {**cfg, "weights": None, "frozen_stages": 0}  # the architecture's speed: random weights, all trained
        for section, fn, args in (("latency", _latency, (warmup, repeats)),
                                  ("train_step", _train_step, (batch, steps, config.get("saliency_target")))):
            try:
                report[section][name] = fn(cfg, device, *args)
            except Exception:  # record and go on: one device call must bring back every section it can
                report["errors"][f"{section}/{name}"] = traceback.format_exc(limit=3)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megl.bench.cuda_check", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="config/paper.yaml", help="config whose `backbones` are checked")
    p.add_argument("--device", default="cuda", help="cuda (the point) or cpu (to test the script)")
    p.add_argument("--quick", action="store_true", help="tiny repeat counts (tests)")
    p.add_argument("--out", help="also write the report here (JSON)")
    args = p.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))  # no schema package on a bare GPU image
    report = run(config, torch.device(args.device), args.quick)
    print(json.dumps(report, indent=2))
    if args.out:
        write_json(Path(args.out), report)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
