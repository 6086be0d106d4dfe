"""Training: one loop for every method of the registry (megl.methods), driven by its flags.

The loss of a batch: megl.objective; the model: megl.models.build; the run folder: megl.rundir.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from megl import rundir
from megl.config import for_cell
from megl.data.annotations import MEData, read_dataset
from megl.data.split import read_split
from megl.data.tensors import SplitTensors, decode_split, mean_map_of, trunk_features
from megl.errors import MEGLError
from megl.mllm_protocol import class_names_of
from megl.models.build import dataset_entry, new_run_model
from megl.objective import batch_losses
from megl.run_spec import RunSpec, resolve_run_spec
from megl.runs import WEIGHTS, RunModel
from megl.runtime import resolve_device, set_determinism

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- rationales
def pick_rationales(batch_rationales: list[tuple[str, ...]], seed: int, epoch: int, step: int) -> list[str]:
    """One ground-truth rationale per sample, drawn reproducibly from (seed, epoch, step)."""
    rng = np.random.default_rng([seed, epoch, step])
    return [r[int(rng.integers(len(r)))] for r in batch_rationales]


# ---------------------------------------------------------------- the loop
def lr_factor(step: int, total: int, schedule: str, warmup_fraction: float) -> float:
    """Learning-rate multiplier at optimiser step `step` of `total`: linear warm-up over the first
    `warmup_fraction` of the steps, then constant or cosine decay to 0."""
    warm = int(round(warmup_fraction * total))
    if step < warm:
        return (step + 1) / warm
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise MEGLError(f"train.schedule: {schedule!r} not one of cosine, constant")
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def steps_per_epoch(n: int, cfg_train: dict) -> int:
    bs = int(cfg_train["batch_size"])
    steps = n // bs if n > bs else 1  # drop the last partial batch when there is more than one
    return min(steps, int(cfg_train["max_steps_per_epoch"])) if cfg_train.get("max_steps_per_epoch") else steps


def fit(model: RunModel, train: SplitTensors, spec: RunSpec, seed: int, device: torch.device,
        mean_map: torch.Tensor | None, class_names: list[str] | None, *, start_epoch: int = 0,
        log_rows: list[dict] | None = None, optimizer=None, on_epoch_end=None, label: str = "") -> list[dict]:
    """Train `model` on the decoded training split; return the per-step log rows.

    Batches are drawn from a permutation seeded by (seed, epoch), so an interrupted run resumed at
    an epoch boundary sees exactly the batches of an uninterrupted one. `on_epoch_end(epoch, rows)`
    is called after every epoch (the single-run command checkpoints there). `spec`: all the run reads."""
    cfg_train, sections = spec.train, spec.sections()
    optimizer = optimizer or make_optimizer(model, cfg_train)
    per_epoch, epochs = steps_per_epoch(len(train), cfg_train), int(cfg_train["epochs"])
    total, base_lr = per_epoch * epochs, float(cfg_train["lr"])
    use_bf16 = bool(cfg_train.get("amp_bf16", True)) and device.type == "cuda"
    rows = list(log_rows or [])
    add_method_inputs(model, train, spec, device)
    if model.sdtg is not None:  # the MLLM path's frozen CLIP(I): once per training image (models/sdtg.py)
        model.sdtg.start_image_token_cache(len(train))
    started = time.time()
    # progress over every step: drawn when stderr is a terminal, off in logs (disable=None)
    bar = tqdm(total=total, initial=start_epoch * per_epoch, desc=label.strip(" :") or "train", unit="step",
               disable=None, leave=False, dynamic_ncols=True)
    for epoch in range(start_epoch, epochs):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(train), generator=generator)
        model.train(True)
        sums: dict[str, float] = {}
        for step in range(per_epoch):
            index = order[step * cfg_train["batch_size"]:(step + 1) * cfg_train["batch_size"]]
            batch = train.batch(index, device)
            batch["index"] = index  # the image-token cache's key
            rationales = pick_rationales(batch["rationales"], seed, epoch, step)
            for group in optimizer.param_groups:
                group["lr"] = base_lr * lr_factor(epoch * per_epoch + step, total,
                                                  cfg_train.get("schedule", "constant"),
                                                  float(cfg_train.get("warmup_fraction", 0.0)))
            optimizer.zero_grad(set_to_none=True)
            terms = backward_step(model, batch, cfg_train, mean_map, sections, rationales, class_names, use_bf16)
            optimizer.step()
            values = {k: float(v.item()) for k, v in terms.items()}
            rows.append({"epoch": epoch, "step": step, **{k: f"{v:.6f}" for k, v in values.items()}})
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{values.get('loss', math.nan):.4f}", refresh=False)
            bar.update()
        bar.refresh()  # every epoch's end is drawn, whatever tqdm's rate limit skipped
        log.info("%sepoch %d/%d: %s (%.1f s)", label, epoch + 1, epochs,
                 ", ".join(f"{k} {v / per_epoch:.4f}" for k, v in sums.items()), time.time() - started)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, rows)
    bar.close()
    if model.sdtg is not None:
        model.sdtg.stop_image_token_cache()
    return rows


def backward_step(model: RunModel, batch: dict, cfg_train: dict, mean_map: torch.Tensor | None, config: dict,
                  rationales: list[str], class_names: list[str] | None, use_bf16: bool) -> dict[str, torch.Tensor]:
    """Loss terms and gradients of one optimiser step's batch: at once, or, with `train.micro_batch_size`,
    chunk by chunk (gradient accumulation: each chunk's loss weighted by its share of the batch, so the
    gradients add up to the whole batch's; exact where every term is a mean over samples, i.e. not for
    BatchNorm statistics, RES's batch-scoped threshold, or L_textual's token mean over texts of different
    lengths). Returns the terms (chunked: their share-weighted sums, detached)."""
    n, micro = len(rationales), cfg_train.get("micro_batch_size")
    if not micro or micro >= n:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            terms = batch_losses(model, batch, cfg_train, mean_map, config, rationales, class_names)
        terms["loss"].backward()
        return terms
    if cfg_train.get("text_batch_size"):
        raise MEGLError("train.micro_batch_size: not supported with train.text_batch_size (set one of them to null)")
    sums: dict[str, torch.Tensor] = {}
    for start in range(0, n, int(micro)):
        part = slice(start, start + int(micro))
        chunk = {k: v[part] if isinstance(v, (torch.Tensor, list, tuple)) else v for k, v in batch.items()}
        share = len(rationales[part]) / n
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            terms = batch_losses(model, chunk, cfg_train, mean_map, config, rationales[part], class_names)
        (terms["loss"] * share).backward()
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + share * value.detach()
    return sums


def add_method_inputs(model: RunModel, split: SplitTensors, spec: RunSpec, device: torch.device) -> None:
    """The per-sample inputs the method's baseline loss reads beside the batch (`Baseline.prepare`;
    CDEP: the frozen trunk's decomposition), computed once per split and reused by every later
    training on it with the same settings: they depend only on the frozen trunk, which every run of
    a (dataset, backbone) loads from the same weights, and on the settings in the key."""
    name = model.method.visual_loss
    if name in (None, "l1"):
        return
    from megl.baselines import get_baseline

    baseline = get_baseline(name)
    if baseline.prepare is None:
        return
    cfg = spec.baseline_config()
    key = json.dumps({"baseline": name, **{k: v for k, v in cfg.items() if k != "weight"}}, sort_keys=True)
    if split.extras_key != key:
        split.extras = baseline.prepare(model.classifier, split, cfg, device)
        split.extras_key = key


def make_optimizer(model: RunModel, cfg_train: dict) -> torch.optim.Optimizer:
    """AdamW; `foreach=True` updates all tensors in one call (CPU defaults to a per-tensor loop) with
    bitwise the same result (tests/test_speed.py); `fused=True` would not be bitwise."""
    return torch.optim.AdamW(model.trainable_parameters(), lr=cfg_train["lr"], weight_decay=cfg_train["weight_decay"],
                             foreach=True)


def training_split(data: MEData, split: dict, spec: RunSpec, classifier_for_features,
                   device: torch.device) -> SplitTensors:
    """The decoded training split with the frozen trunk's features (computed here, as the cache step does)."""
    train = decode_split(data, split["train"], spec.image_size, with_full_maps=False)
    if classifier_for_features is not None:
        train.features = trunk_features(classifier_for_features, train.images, device)
    return train


# ---------------------------------------------------------------- one run (the single-run command)
def train_run(config: dict, *, dataset: str, backbone: str, method: str, seed: int, run_dir: Path,
              data_root: Path, split_path: Path, pretrained_dir: Path | None = None,
              backbone_weights: Path | None = None, resume: bool = False, force: bool = False) -> Path:
    """Train one run into `run_dir`; returns the path of the final weights. The run reads its spec
    (megl.run_spec); the whole config, resolved for the cell, is written into run_dir/config.yaml."""
    spec = resolve_run_spec(config, dataset, backbone, method)
    config = for_cell(config, dataset, backbone)
    method_obj = spec.method_def
    dataset_entry(config, dataset)
    cfg_train = spec.train
    run_dir = Path(run_dir)
    rundir.check_run_dir(run_dir, resume=resume, force=force)
    run_dir.mkdir(parents=True, exist_ok=True)

    set_determinism(seed, cfg_train["num_threads"])
    device = resolve_device(spec.device)
    data = read_dataset(data_root)
    split = read_split(split_path, data)
    model = new_run_model(spec, data.num_classes, seed, pretrained_dir, backbone_weights, device)
    train = training_split(data, split, spec, model.classifier, device)
    mean_map = mean_map_of(train).to(device) if method_obj.consistency else None
    optimizer = make_optimizer(model, cfg_train)
    start_epoch, log_rows = 0, []
    if resume and (run_dir / rundir.CKPT_META).exists():
        start_epoch, log_rows = rundir.load_checkpoint(run_dir, model, optimizer)

    identity = {"dataset": dataset, "backbone": backbone, "method": method, "seed": seed}
    rundir.write_run_record(run_dir, config, identity, method_obj, data_root, split_path, pretrained_dir,
                     backbone_weights, device)
    class_names = class_names_of(data) if method_obj.is_mllm else None
    started = time.time()
    rows = fit(model, train, spec, seed, device, mean_map, class_names, start_epoch=start_epoch,
               log_rows=log_rows, optimizer=optimizer, label=f"{method} seed{seed} ",
               on_epoch_end=lambda epoch, rows: rundir.save_checkpoint(run_dir, model, optimizer, epoch, rows))
    rundir.finish_run(run_dir, model, identity, cfg_train, rows, time.time() - started)
    rundir.drop_checkpoints(run_dir)
    return run_dir / WEIGHTS
