"""Cost of one training step: plain CE vs. batched differentiable Grad-CAM losses vs. full MEGL vs.
the authors' per-sample Grad-CAM loop, on one batch and one model, in one process.

    python -m megl.bench.train_step --out results/bench/train_step.json

(a) ce        forward, CE, backward, AdamW step
(b) explain   megl.objective.batch_losses, method megl_visual_only (L_pred + L1 + L_dc, batched Grad-CAM)
(c) megl      megl.objective.batch_losses, method megl (adds SDTG on a tiny CLIP + tiny Llama, random weights)
(d) loop      per image: its own forward and torch.autograd.grad(create_graph=True), then (b)'s losses
Each variant: median wall time over `repeats` rounds after `warmup` rounds; rounds interleave the four
variants so that machine-load drift hits all of them alike. See docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from megl import losses
from megl.io import write_json

TARGETS = {  # ratio: (limit, "<=" or ">=")
    "explanation_step_over_ce": (1.3, "<="),
    "loop_over_batched": (5.0, ">="),
    "megl_step_over_ce": (3.0, "<="),
}
WORDS = ("red green blue yellow circle square triangle star cross upper lower left right center small "
         "object image class because the is in of a with its shape colour mark distractor").split()


def make_batch(batch: int, size: int, num_classes: int, annotated: float, seed: int) -> dict:
    """Random images in [0, 1], labels, maps; the first round(annotated·batch) samples carry a map."""
    g = torch.Generator().manual_seed(seed)
    n_ann = max(1, round(annotated * batch))
    has_map = torch.zeros(batch, dtype=torch.bool)
    has_map[:n_ann] = True
    maps = torch.rand(batch, 1, size, size, generator=g) * has_map.view(-1, 1, 1, 1)
    mean_map = torch.rand(size, size, generator=g)
    return {"image": torch.rand(batch, 3, size, size, generator=g),
            "label": torch.randint(0, num_classes, (batch,), generator=g),
            "visual_map": maps, "has_map": has_map, "mean_map": mean_map / mean_map.sum(),
            "rationales": [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (12,), generator=g))
                           for _ in range(batch)]}


def build_sdtg(config: dict, classifier, texts: list[str], image_size: int):
    """SDTG on a tiny CLIP and a tiny Llama (LoRA as configured) with random weights: timing only."""
    from megl.models.clip import FrozenVisionEncoder, build_tiny_clip
    from megl.models.lm import apply_lora, build_tiny_lm
    from megl.models.sdtg import SDTG
    from megl.models.tokenizer import train_tokenizer

    tok = train_tokenizer(texts * 4, int(config["lm"]["tiny"]["vocab_size"]), None)
    clip = build_tiny_clip(config["vision_encoder"]["tiny"], image_size, len(tok), tok.pad_token_id,
                           tok.bos_token_id, tok.eos_token_id)
    lm = apply_lora(build_tiny_lm(config["lm"]["tiny"], tok), config["lm"].get("lora"))
    s = config["sdtg"]
    return SDTG(lm, tok, FrozenVisionEncoder(clip), classifier.feature_dim, s["prefix_tokens"], s["prompt"],
                s["max_rationale_tokens"])


def trunk_weights(bb: dict, folder: Path) -> Path | None:
    """A trunk file for a config whose weights are the workflow's pretrained trunk (`source`): a
    freshly initialised trunk of the same architecture, written to `folder` (timing does not depend
    on the weights' values, and the frozen stages stay frozen as in a cell). None otherwise."""
    from megl.models import SOURCE_PRETRAINED
    from megl.models.backbones import build_classifier

    if bb.get("weights") != SOURCE_PRETRAINED:
        return None
    from safetensors.torch import save_file

    fresh = build_classifier({**bb, "weights": None, "frozen_stages": 0}, 2)
    path = folder / "trunk.safetensors"
    save_file({k: v.detach().contiguous() for k, v in fresh.net.state_dict().items()}, str(path))
    return path


def loop_gradcam(classifier, images: torch.Tensor, labels: torch.Tensor):
    """The authors' pattern: one forward and one create_graph autograd.grad per image (not batched)."""
    from megl.models.gradcam import scale_per_sample

    logits, cams = [], []
    for i in range(images.shape[0]):
        out = classifier.forward_with_features(images[i:i + 1])
        score = out.logits[0, labels[i]]
        (grad,) = torch.autograd.grad(score, out.cam_activations, retain_graph=True, create_graph=True)
        cams.append(F.relu((grad.mean(dim=(2, 3), keepdim=True) * out.cam_activations).sum(dim=1)))
        logits.append(out.logits)
    return torch.cat(logits), scale_per_sample(torch.cat(cams))


def explanation_total(logits, sal, batch: dict, cfg_train: dict, target_cfg: dict) -> torch.Tensor:
    """Same total as batch_losses for megl_visual_only, from given logits and saliency."""
    has_map = batch["has_map"]
    share = has_map.float().mean()
    return (losses.prediction_loss(logits, batch["label"])
            + cfg_train["lambda_v"] * share * losses.visual_l1_loss(sal, batch["visual_map"], has_map, target_cfg)
            + cfg_train["lambda_v"] * (1 - share)
            * losses.distribution_consistency_loss(sal, batch["mean_map"], has_map))


def run(config: dict, *, batch_size: int, image_size: int, num_classes: int, annotated: float, warmup: int,
        repeats: int, threads: int, device: str, seed: int) -> dict:
    from megl.methods import get_method
    from megl.models.backbones import build_classifier
    from megl.objective import batch_losses
    from megl.runs import RunModel

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    dev = torch.device(device)
    bb = dict(config["backbones"]["resnet18"], image_size=image_size)
    cfg_train = config["train"]
    batch = make_batch(batch_size, image_size, num_classes, annotated, seed)
    with tempfile.TemporaryDirectory(prefix="megl-bench-") as tmp:
        classifier = build_classifier(bb, num_classes, trunk_weights(bb, Path(tmp)))
    sdtg = build_sdtg(config, classifier, batch["rationales"], image_size)
    classifier.to(dev).train(True)
    sdtg.to(dev).train(True)
    batch = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    visual = RunModel(get_method("megl_visual_only"), classifier, None, None, None, None)
    full = RunModel(get_method("megl"), classifier, sdtg, None, None, None)
    full.train(True)
    opt_cls = torch.optim.AdamW(classifier.parameters(), lr=cfg_train["lr"], weight_decay=cfg_train["weight_decay"])
    opt_full = torch.optim.AdamW(full.trainable_parameters(), lr=cfg_train["lr"],
                                 weight_decay=cfg_train["weight_decay"])

    def step(opt, loss_fn):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()

    variants = {
        "ce": lambda: step(opt_cls, lambda: F.cross_entropy(classifier(batch["image"]), batch["label"])),
        "explain": lambda: step(opt_cls, lambda: batch_losses(visual, batch, cfg_train, batch["mean_map"], config,
                                                              batch["rationales"])["loss"]),
        "megl": lambda: step(opt_full, lambda: batch_losses(full, batch, cfg_train, batch["mean_map"], config,
                                                            batch["rationales"])["loss"]),
        "loop": lambda: step(opt_cls, lambda: explanation_total(*loop_gradcam(classifier, batch["image"],
                                                                              batch["label"]), batch, cfg_train,
                                                                              config.get("saliency_target"))),
    }
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(warmup + repeats):
        for name, fn in variants.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if r >= warmup:
                times[name].append((time.perf_counter() - t0) * 1000)
    ms = {k: statistics.median(v) for k, v in times.items()}
    ratios = {"explanation_step_over_ce": ms["explain"] / ms["ce"],
              "loop_over_batched": ms["loop"] / ms["explain"],
              "megl_step_over_ce": ms["megl"] / ms["ce"]}
    holds = {k: (ratios[k] <= lim if op == "<=" else ratios[k] >= lim) for k, (lim, op) in TARGETS.items()}
    return {
        **{k: round(v, 3) for k, v in ratios.items()},
        "ms": {k: round(v, 3) for k, v in ms.items()},
        "ms_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "targets": {k: f"{op} {lim}" for k, (lim, op) in TARGETS.items()},
        "targets_hold": holds,
        "batch": batch_size, "image_size": image_size, "num_classes": num_classes,
        "annotated": int(batch["has_map"].sum()), "threads": torch.get_num_threads(),
        "warmup": warmup, "repeats": repeats, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "torch": torch.__version__, "backbone": {k: bb[k] for k in ("family", "widths", "image_size")},
        "params": {"classifier": sum(p.numel() for p in classifier.parameters()),
                   "sdtg_trainable": sum(p.numel() for p in sdtg.parameters() if p.requires_grad)},
    }


def table(res: dict) -> str:
    lines = [f"train step, batch {res['batch']}, {res['image_size']} px, {res['threads']} thread(s), "
             f"{res['device']}, torch {res['torch']}, median of {res['repeats']}",
             f"{'variant':10} {'ms':>10}"]
    lines += [f"{k:10} {v:10.1f}" for k, v in res["ms"].items()]
    lines.append(f"{'ratio':26} {'value':>7}  target   holds")
    for k, t in res["targets"].items():
        lines.append(f"{k:26} {res[k]:7.2f}  {t:7}  {'yes' if res['targets_hold'][k] else 'NO'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megl.bench.train_step", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--out", default="results/bench/train_step.json")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--annotated", type=float, default=0.1, help="share of samples with a map")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: config train.num_threads)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from megl.config import load_config

    config = load_config(args.config)
    threads = args.threads or int(config["train"]["num_threads"])
    res = run(config, batch_size=args.batch, image_size=args.image_size, num_classes=args.num_classes,
              annotated=args.annotated, warmup=args.warmup, repeats=args.repeats, threads=threads,
              device=args.device, seed=args.seed)
    res["config"] = args.config
    write_json(Path(args.out), res)
    print(table(res))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
