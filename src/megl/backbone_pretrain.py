"""The embedded stand-in for ImageNet pretraining: each small backbone is trained once on a
generated *source* task, and every run fine-tunes from that trunk (docs/experiment.md).

The source task is never the target data and never its classes: scenes from the objects and
actions generators, drawn with another seed and no shortcut mark, labelled by coarser attributes
than the target classes (the shape of the target object: 5 classes; whether the figure plays with
a ball or a box: 2 classes). The digits dataset (real handwriting) is not in it at all.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from megl.data.standin import ACTION_CLASSES, KINDS, OBJ_SHAPES, OBJECT_CLASSES
from megl.errors import MEGLError
from megl.io import atomic_path, write_json
from megl.models.backbones import build_classifier

log = logging.getLogger(__name__)
SOURCE_CLASSES = [f"shape_{s}" for s in OBJ_SHAPES] + ["plays_with_ball", "plays_with_box"]


def _source_label(kind: str, label: int) -> int:
    if kind == "objects":
        return OBJ_SHAPES.index(OBJECT_CLASSES[label].split("_")[1])
    return len(OBJ_SHAPES) + (0 if "ball" in ACTION_CLASSES[label] else 1)


def source_images(n_images: int, image_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 N×3×S×S, labels N) of the source task, byte-deterministic for a seed."""
    if n_images < len(SOURCE_CLASSES):
        raise MEGLError(f"pretrain.n_images must be >= {len(SOURCE_CLASSES)}, got {n_images}")
    images, labels = [], []
    for i in range(n_images):
        kind = ("objects", "actions")[i % 2]
        spec = KINDS[kind]
        rng = np.random.default_rng([seed, i])
        target = int(rng.integers(len(spec.classes)))
        im, _, _, _ = spec.render(rng, target, image_size, None)
        images.append(torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1))
        labels.append(_source_label(kind, target))
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def pretrain_backbone(backbone_cfg: dict, pretrain_cfg: dict, out: Path, report_path: Path | None = None,
                      device: torch.device | None = None) -> dict:
    """Train the whole classifier on the source task and save it (head included; fine-tuning drops
    the head). Returns the report: source-task accuracy on a held-out fifth, losses per epoch."""
    device = device or torch.device("cpu")
    seed = int(pretrain_cfg["seed"])
    torch.manual_seed(seed)
    size = int(backbone_cfg["image_size"])
    started = time.time()
    images, labels = source_images(int(pretrain_cfg["n_images"]), size, seed)
    n_val = len(images) // 5
    train_x, train_y, val_x, val_y = images[n_val:], labels[n_val:], images[:n_val], labels[:n_val]
    cfg = {**backbone_cfg, "weights": None, "frozen_stages": 0}
    model = build_classifier(cfg, len(SOURCE_CLASSES)).to(device)
    use_bf16 = device.type == "cuda"
    epochs, bs = int(pretrain_cfg["epochs"]), int(pretrain_cfg["batch_size"])
    opt = torch.optim.AdamW(model.parameters(), lr=float(pretrain_cfg["lr"]), weight_decay=0.05)
    steps = epochs * (len(train_x) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(pretrain_cfg["lr"]), total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for epoch in range(epochs):
        model.train(True)
        order = torch.randperm(len(train_x), generator=generator)
        total = 0.0
        for k in range(len(train_x) // bs):
            idx = order[k * bs:(k + 1) * bs]
            x = train_x[idx].float().div_(255.0)
            if pretrain_cfg.get("flip", True):  # horizontal flips: the source labels are mirror-invariant
                flip = torch.rand(len(idx), generator=generator) < 0.5
                x[flip] = x[flip].flip(-1)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
                loss = F.cross_entropy(model(x.to(device)).float(), train_y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        losses.append(round(total / max(1, len(train_x) // bs), 4))
        log.info("pretrain %s epoch %d/%d: loss %.4f", backbone_cfg["family"], epoch + 1, epochs, losses[-1])
    model.train(False)
    with torch.no_grad():
        val_acc = float((model(val_x.float().div(255.0).to(device)).argmax(1).cpu() == val_y).float().mean())
    from safetensors.torch import save_file

    with atomic_path(out, suffix=".safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}, str(tmp))
    report = {"classes": SOURCE_CLASSES, "n_train": len(train_x), "n_val": n_val, "epochs": epochs,
              "losses": losses, "source_val_accuracy": round(val_acc, 4), "seconds": round(time.time() - started, 1)}
    log.info("pretrain %s: source val accuracy %.4f in %.0f s", backbone_cfg["family"], val_acc, report["seconds"])
    if report_path is not None:
        write_json(report_path, report)
    return report
