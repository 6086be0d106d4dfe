"""Efficiency: parameter count and batch-1 latency / FPS of the classification forward pass (no decoding)."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from megl.errors import MEGLError


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once); all of them unless trainable_only."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only))


def measure_latency(fn: Callable[[], object], warmup: int, repeats: int, device: str | torch.device) -> dict:
    """Median wall time of fn() in ms over `repeats` timed calls after `warmup` untimed ones; fps = 1000/median.

    On CUDA the device is synchronised before and after each timed call so queued kernels count.
    """
    if warmup < 0 or repeats < 1:
        raise MEGLError(f"latency: need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    dev = torch.device(device)
    cuda = dev.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        fn()
    sync()
    times_ms = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times_ms.append((time.perf_counter() - t0) * 1000.0)
    median = statistics.median(times_ms)
    if median <= 0:  # pragma: no cover - perf_counter is monotonic with sub-µs resolution
        raise MEGLError("latency: measured a non-positive median time")
    return {
        "latency_ms": median,
        "fps": 1000.0 / median,
        "latency_ms_min": min(times_ms),
        "latency_ms_max": max(times_ms),
        "repeats": repeats,
        "warmup": warmup,
        "device": str(dev),
    }


def latency_of_classifier(
    model: nn.Module,
    image_size: int | tuple[int, int],
    device: str | torch.device,
    warmup: int,
    repeats: int,
    bf16: bool,
) -> dict:
    """Latency/FPS of model(x) for one random 3×H×W image (batch 1), eval mode, no grad.

    The model must already be on `device`. bf16 autocast is used only on CUDA (`bf16_used` says
    whether it was). The model's train/eval mode is restored afterwards.
    """
    dev = torch.device(device)
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    p = next(model.parameters(), None)
    if p is not None and p.device.type != dev.type:
        raise MEGLError(f"latency: model is on {p.device} but latency was asked on {dev}")
    use_bf16 = bool(bf16) and dev.type == "cuda"
    x = torch.randn(1, 3, h, w, device=dev)
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast:
            result = measure_latency(lambda: model(x), warmup, repeats, dev)
    finally:
        model.train(was_training)
    result.update(batch_size=1, image_size=[h, w], bf16_used=use_bf16)
    return result
