"""Training: one loop for every method of the registry (megl.methods), driven by its flags.

Total loss (paper eq. 6): L = L_pred + λ_t·L_textual + λ_v·mean_i[1_V(i)·L_visual(i) + (1−1_V(i))·L_dc(i)].
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import pickle
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from megl import losses
from megl.config import for_cell, image_size_for
from megl.data.annotations import MEData, read_dataset
from megl.data.split import read_split
from megl.data.tensors import SplitTensors, decode_split, mean_map_of, trunk_features
from megl.errors import MEGLError
from megl.io import write_json, write_text
from megl.methods import MLLM_BACKBONE, Method, get_method
from megl.models.gradcam import saliency as saliency_map
from megl.runtime import resolve_device, set_determinism
from megl.runs import WEIGHTS, RunModel, environment_info, load_weights, read_json, save_weights

LOG_FIELDS = ["epoch", "step", "loss", "loss_pred", "loss_visual", "loss_dc", "loss_textual"]
DONE = "train_done.json"
CKPT_META, CKPT_WEIGHTS, CKPT_OPTIM = "checkpoint.json", "checkpoint.safetensors", "checkpoint_optim.pt"
log = logging.getLogger(__name__)


# ---------------------------------------------------------------- set-up
def dataset_entry(config: dict, dataset: str) -> dict:
    if dataset not in config["datasets"]:
        raise MEGLError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(config['datasets'])}")
    return config["datasets"][dataset]


def backbone_entry(config: dict, backbone: str, method: Method) -> dict | None:
    if method.kind == "mllm":
        if backbone != MLLM_BACKBONE:
            raise MEGLError(f"method {method.name!r} has no classifier backbone: use backbone {MLLM_BACKBONE!r}")
        return None
    if backbone not in config["backbones"]:
        raise MEGLError(f"unknown backbone {backbone!r}; valid backbones: {', '.join(config['backbones'])}")
    return config["backbones"][backbone]


def build_run_model(config: dict, method: Method, backbone_cfg: dict | None, num_classes: int,
                    pretrained_dir: Path | None, backbone_weights: Path | None = None) -> RunModel:
    """The classifier, and (for text-writing methods) SDTG on the frozen encoder and the LM.
    `backbone_weights`: the trunk the workflow pretrained (config `weights: source`)."""
    from megl.models.backbones import build_classifier

    classifier = build_classifier(backbone_cfg, num_classes, backbone_weights) if backbone_cfg is not None else None
    sdtg = clip = clip_tokenizer = state = None
    if method.writes_text:
        from megl.models.lm import prepare_lm
        from megl.models.sdtg import SDTG
        from megl.pretrain import load_lm, load_vision

        encoder, clip, clip_tokenizer = load_vision(config["vision_encoder"], pretrained_dir)
        lm, lm_tokenizer = load_lm(config["lm"], pretrained_dir)
        use_encoder = method.kind == "mllm" or method.saliency_path != "none"
        sdtg = SDTG(prepare_lm(lm, config["lm"]), lm_tokenizer, encoder if use_encoder else None,
                    feature_dim=classifier.feature_dim if classifier is not None else None,
                    prefix_tokens=config["sdtg"]["prefix_tokens"], prompt=config["sdtg"]["prompt"],
                    max_rationale_tokens=config["sdtg"]["max_rationale_tokens"])
    if method.visual_loss not in (None, "l1"):
        from megl.baselines import baseline_config, get_baseline

        state = get_baseline(method.visual_loss).make_state(baseline_config(config, method.visual_loss),
                                                            cam_grid(classifier, backbone_cfg["image_size"]))
    return RunModel(method, classifier, sdtg, state, clip, clip_tokenizer)


def cam_grid(classifier, image_size: int) -> tuple[int, int]:
    """(h, w) of the classifier's Grad-CAM grid, read off one forward pass."""
    with torch.no_grad():
        acts = classifier.forward_with_features(torch.zeros(1, 3, image_size, image_size)).cam_activations
    return tuple(acts.shape[-2:])


# ---------------------------------------------------------------- losses of one batch
def mllm_answer(class_name: str) -> str:
    """The answer sentence of the MLLM baselines; also the closed-set candidates at evaluation."""
    return f"the answer is {class_name.replace('_', ' ')}."


def mllm_target(method: Method, class_name: str, rationale: str) -> str:
    """What the MLLM baselines learn to write: the answer, then (Fine-tune-CoT) the rationale."""
    answer = mllm_answer(class_name)
    return answer if method.mllm_target == "answer" else f"{answer} because {rationale}"


def batch_losses(model: RunModel, batch: dict, cfg_train: dict, mean_map: torch.Tensor | None,
                 config: dict, rationales: list[str], class_names: list[str] | None = None
                 ) -> dict[str, torch.Tensor]:
    """Every loss term the method switches on, and their weighted total. `config`: the validated
    config (its `saliency_target` and `baselines` sections; `cfg_train` is its resolved `train`)."""
    method = model.method
    images, labels = batch["image"], batch["label"]
    terms: dict[str, torch.Tensor] = {}
    if method.kind == "mllm":
        targets = [mllm_target(method, class_names[i], r) for i, r in zip(labels.tolist(), rationales)]
        terms["loss_textual"] = model.sdtg.loss(images, None, None, targets)
        terms["loss"] = terms["loss_textual"]
        return terms

    saliency, features = None, batch.get("features")
    if method.needs_saliency_graph or method.saliency_path == "detached":
        logits, _, saliency, out = saliency_map(model.classifier, images, labels,
                                                create_graph=method.needs_saliency_graph, features=features)
    else:
        out = (model.classifier.forward_with_features(images) if features is None
               else model.classifier.head_forward(features))
        logits = out.logits
    terms["loss_pred"] = losses.prediction_loss(logits, labels)
    total = terms["loss_pred"]

    has_map = batch["has_map"]
    n = float(len(labels))
    share_annotated = has_map.float().sum() / n
    if method.visual_loss == "l1":
        terms["loss_visual"] = losses.visual_l1_loss(saliency, batch["visual_map"], has_map,
                                                     config.get("saliency_target"))
        total = total + cfg_train["lambda_v"] * share_annotated * terms["loss_visual"]
    elif method.visual_loss is not None:  # a baseline: its own loss and weight, on annotated samples
        from megl.baselines import baseline_config, get_baseline

        cfg = baseline_config(config, method.visual_loss)
        baseline = get_baseline(method.visual_loss)
        extra = {key: batch[key] for key in baseline.batch_keys if key in batch}
        terms["loss_visual"] = baseline.loss_fn(
            model.classifier, images, labels, saliency, batch["visual_map"], has_map, cfg, model.explanation_state,
            **extra)
        total = total + cfg["weight"] * share_annotated * terms["loss_visual"]
    if method.consistency:
        terms["loss_dc"] = losses.distribution_consistency_loss(saliency, mean_map, has_map)
        total = total + cfg_train["lambda_v"] * (1 - share_annotated) * terms["loss_dc"]
    if method.textual:
        text_saliency = {"grad": saliency, "detached": None if saliency is None else saliency.detach(),
                         "none": None}[method.saliency_path]
        k = cfg_train.get("text_batch_size") or len(rationales)  # L_textual on the first k of the (shuffled) batch
        terms["loss_textual"] = model.sdtg.loss(images[:k], None if text_saliency is None else text_saliency[:k],
                                                out.tokens[:k], rationales[:k])
        total = total + cfg_train["lambda_t"] * terms["loss_textual"]
    terms["loss"] = total
    return terms


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


def fit(model: RunModel, train: SplitTensors, config: dict, seed: int, device: torch.device,
        mean_map: torch.Tensor | None, class_names: list[str] | None, *, start_epoch: int = 0,
        log_rows: list[dict] | None = None, optimizer=None, on_epoch_end=None, label: str = "") -> list[dict]:
    """Train `model` on the decoded training split; return the per-step log rows.

    Batches are drawn from a permutation seeded by (seed, epoch), so an interrupted run resumed at
    an epoch boundary sees exactly the batches of an uninterrupted one. `on_epoch_end(epoch, rows)`
    is called after every epoch (the single-run command checkpoints there)."""
    cfg_train = config["train"]
    optimizer = optimizer or make_optimizer(model, cfg_train)
    per_epoch, epochs = steps_per_epoch(len(train), cfg_train), int(cfg_train["epochs"])
    total, base_lr = per_epoch * epochs, float(cfg_train["lr"])
    use_bf16 = bool(cfg_train.get("amp_bf16", True)) and device.type == "cuda"
    rows = list(log_rows or [])
    add_method_inputs(model, train, config, device)
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
            rationales = pick_rationales(batch["rationales"], seed, epoch, step)
            for group in optimizer.param_groups:
                group["lr"] = base_lr * lr_factor(epoch * per_epoch + step, total, cfg_train.get("schedule", "constant"),
                                                  float(cfg_train.get("warmup_fraction", 0.0)))
            optimizer.zero_grad(set_to_none=True)
            terms = backward_step(model, batch, cfg_train, mean_map, config, rationales, class_names, use_bf16)
            optimizer.step()
            values = {k: float(v.item()) for k, v in terms.items()}
            rows.append({"epoch": epoch, "step": step, **{k: f"{v:.6f}" for k, v in values.items()}})
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{values.get('loss', math.nan):.4f}", refresh=False)
            bar.update()
        log.info("%sepoch %d/%d: %s (%.1f s)", label, epoch + 1, epochs,
                 ", ".join(f"{k} {v / per_epoch:.4f}" for k, v in sums.items()), time.time() - started)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, rows)
    bar.close()
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


def add_method_inputs(model: RunModel, split: SplitTensors, config: dict, device: torch.device) -> None:
    """The per-sample inputs the method's baseline loss reads beside the batch (`Baseline.prepare`;
    CDEP: the frozen trunk's decomposition), computed once per split and reused by every later
    training on it with the same settings: they depend only on the frozen trunk, which every run of
    a (dataset, backbone) loads from the same weights, and on the settings in the key."""
    name = model.method.visual_loss
    if name in (None, "l1"):
        return
    from megl.baselines import baseline_config, get_baseline

    baseline = get_baseline(name)
    if baseline.prepare is None:
        return
    cfg = baseline_config(config, name)
    key = json.dumps({"baseline": name, **{k: v for k, v in cfg.items() if k != "weight"}}, sort_keys=True)
    if split.extras_key != key:
        split.extras = baseline.prepare(model.classifier, split, cfg, device)
        split.extras_key = key


def make_optimizer(model: RunModel, cfg_train: dict) -> torch.optim.Optimizer:
    """AdamW; `foreach=True` updates all tensors in one call (CPU defaults to a per-tensor loop) with
    bitwise the same result (tests/test_speed.py); `fused=True` would not be bitwise."""
    return torch.optim.AdamW(model.trainable_parameters(), lr=cfg_train["lr"], weight_decay=cfg_train["weight_decay"],
                             foreach=True)


def new_run_model(config: dict, method: Method, bb_cfg: dict | None, num_classes: int, seed: int,
                  pretrained_dir: Path | None, backbone_weights: Path | None, device: torch.device) -> RunModel:
    """The run's model with its seed-determined initialisation (everything not loaded from a file)."""
    torch.manual_seed(seed)
    return build_run_model(config, method, bb_cfg, num_classes, pretrained_dir, backbone_weights).to(device)


def training_split(data: MEData, split: dict, config: dict, bb_cfg: dict | None, method: Method,
                   classifier_for_features, device: torch.device) -> SplitTensors:
    """The decoded training split with the frozen trunk's features (computed here, as the cache step does)."""
    train = decode_split(data, split["train"], image_size_for(config, bb_cfg), with_full_maps=False)
    if classifier_for_features is not None:
        train.features = trunk_features(classifier_for_features, train.images, device)
    return train


# ---------------------------------------------------------------- one run (the single-run command)
def train_run(config: dict, *, dataset: str, backbone: str, method: str, seed: int, run_dir: Path,
              data_root: Path, split_path: Path, pretrained_dir: Path | None = None,
              backbone_weights: Path | None = None, resume: bool = False, force: bool = False) -> Path:
    """Train one run into `run_dir`; returns the path of the final weights."""
    config = for_cell(config, dataset, backbone)
    method_obj = get_method(method)
    dataset_entry(config, dataset)
    bb_cfg = backbone_entry(config, backbone, method_obj)
    cfg_train = config["train"]
    run_dir = Path(run_dir)
    _check_run_dir(run_dir, resume=resume, force=force)
    run_dir.mkdir(parents=True, exist_ok=True)

    set_determinism(seed, cfg_train["num_threads"])
    device = resolve_device(config["device"])
    data = read_dataset(data_root)
    split = read_split(split_path, data)
    model = new_run_model(config, method_obj, bb_cfg, data.num_classes, seed, pretrained_dir, backbone_weights, device)
    train = training_split(data, split, config, bb_cfg, method_obj, model.classifier, device)
    mean_map = mean_map_of(train).to(device) if method_obj.consistency else None
    optimizer = make_optimizer(model, cfg_train)
    start_epoch, log_rows = 0, []
    if resume and (run_dir / CKPT_META).exists():
        start_epoch, log_rows = _load_checkpoint(run_dir, model, optimizer)

    identity = {"dataset": dataset, "backbone": backbone, "method": method, "seed": seed}
    write_run_record(run_dir, config, identity, method_obj, data_root, split_path, pretrained_dir,
                     backbone_weights, device)
    class_names = class_names_of(data) if method_obj.kind == "mllm" else None
    started = time.time()
    rows = fit(model, train, config, seed, device, mean_map, class_names, start_epoch=start_epoch,
               log_rows=log_rows, optimizer=optimizer, label=f"{method} seed{seed} ",
               on_epoch_end=lambda epoch, rows: _save_checkpoint(run_dir, model, optimizer, epoch, rows))
    finish_run(run_dir, model, identity, cfg_train, rows, time.time() - started)
    for name in (CKPT_WEIGHTS, CKPT_OPTIM, CKPT_META):  # the finished run supersedes its checkpoints
        (run_dir / name).unlink(missing_ok=True)
    return run_dir / WEIGHTS


def class_names_of(data: MEData) -> list[str]:
    return [data.id_to_class[c] for c in data.class_ids]


def write_run_record(run_dir: Path, config: dict, identity: dict, method: Method, data_root, split_path,
                     pretrained_dir, backbone_weights, device) -> None:
    """run.json (identity, method flags, inputs, environment) and the config snapshot the run used."""
    import yaml

    write_json(run_dir / "run.json", {"run": identity, "method": vars(method), "data_root": str(data_root),
                                      "split": str(split_path),
                                      "pretrained": str(pretrained_dir) if pretrained_dir else None,
                                      "backbone_weights": str(backbone_weights) if backbone_weights else None,
                                      "environment": environment_info(), "device": str(device)})
    write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))


def finish_run(run_dir: Path, model: RunModel, identity: dict, cfg_train: dict, rows: list[dict],
               seconds: float) -> None:
    """Final weights, the step log, then the marker that says the run is finished."""
    save_weights(model.state_to_save(), run_dir / WEIGHTS)
    write_text(run_dir / "train_log.csv", _log_csv(rows))
    write_json(run_dir / DONE, {"run": identity, "epochs": cfg_train["epochs"], "steps": len(rows),
                                "final_loss": float(rows[-1]["loss"]) if rows else None,
                                "train_seconds_this_process": round(seconds, 2)})


def _check_run_dir(run_dir: Path, *, resume: bool, force: bool) -> None:
    if (run_dir / DONE).exists() and not force:
        raise MEGLError(f"{run_dir}: run already finished; pass --force to train it again")
    if force:
        for name in (DONE, WEIGHTS, CKPT_META, CKPT_WEIGHTS, CKPT_OPTIM, "train_log.csv"):
            (run_dir / name).unlink(missing_ok=True)
    elif (run_dir / CKPT_META).exists() and not resume:
        raise MEGLError(f"{run_dir}: holds an unfinished run; pass --resume to continue it or --force to restart")


def _log_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_FIELDS, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _save_checkpoint(run_dir: Path, model: RunModel, optimizer, epoch: int, log_rows: list[dict]) -> None:
    """Weights, optimiser and RNG state, then the log, then the meta file that commits them."""
    save_weights(model.state_to_save(), run_dir / CKPT_WEIGHTS)
    from megl.io import atomic_path

    with atomic_path(run_dir / CKPT_OPTIM, suffix=".pt") as tmp:
        torch.save({"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}, tmp)
    write_text(run_dir / "train_log.csv", _log_csv(log_rows))
    write_json(run_dir / CKPT_META, {"epoch": epoch, "steps": len(log_rows)})


def _load_checkpoint(run_dir: Path, model: RunModel, optimizer) -> tuple[int, list[dict]]:
    way_out = "the checkpoint cannot be resumed; pass --force instead of --resume to retrain the run from scratch"
    meta = read_json(run_dir / CKPT_META)
    model.load_saved_state(load_weights(run_dir / CKPT_WEIGHTS, way_out), str(run_dir / CKPT_WEIGHTS))
    try:
        extra = torch.load(run_dir / CKPT_OPTIM, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise MEGLError(f"{run_dir / CKPT_OPTIM}: unreadable optimiser state, truncated or corrupt "
                        f"({type(exc).__name__}); {way_out}") from None
    optimizer.load_state_dict(extra["optimizer"])
    torch.set_rng_state(extra["torch_rng"])
    with open(run_dir / "train_log.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))[: meta["steps"]]
    return int(meta["epoch"]), rows
