"""Paper-scale device benchmark: every model family of a config at full size, random weights, a few timed
training steps per method family, scaled by `megl plan`'s step counts to GPU-hours.

    python -m megl.bench.paper_scale --config config/paper.yaml --out results/bench/paper_scale.json
    python -m megl.bench.paper_scale --small --device cpu --out /tmp/paper_scale.json   # the test's run

Nothing is downloaded: the classifiers are `build_classifier` with `weights: None`, the LM a transformers
Llama and CLIP a CLIPModel built from `megl.plan`'s configs (Vicuna-7B / ViT-L/14 dimensions, or the local
config.json when the folder is there), in the configured dtype, with a BPE tokenizer trained here on
random words (the LM's vocabulary, hence its logits, keeps its real size). Each step is the training
loop's own: `megl.objective.batch_losses` under bf16 autocast (CUDA), backward, `make_optimizer`'s AdamW step.

Families (megl.plan.family_of), per backbone where there is one:
  baseline  L_pred only (`baseline`)
  visual    Grad-CAM with double backward: `megl_visual_only` (L1 + L_dc); HAICS / RES cost the same
  cdep      CDEP's contextual decomposition (`cdep`)
  text      `megl`: + SDTG, LoRA LM, L_textual flowing back through frozen CLIP into I ⊙ Â
  mllm      `finetune_cot`: CLIP + LoRA LM fine-tuned on answer + rationale
  scoring   the MLLMs' closed-set evaluation (`SDTG.score_candidates`, every class a candidate)
Recorded per family: ms per step (median of the timed steps), peak memory, whether every loss stayed
finite and whether the gradient reached the classifier's first layer (for `text`, L_textual's alone) or,
for `mllm`, the LoRA adapters. One family's failure (e.g. out of memory) is recorded and the rest run.
`--small` shrinks every shape (tiny widths, 2 layers, batch 2) so the same code runs on a CPU in seconds.
"""
from __future__ import annotations

import argparse
import copy
import gc
import platform
import statistics
import sys
import time
import traceback
from functools import partial
from pathlib import Path

import torch

FAMILY_METHOD = {"baseline": "baseline", "visual": "megl_visual_only", "cdep": "cdep", "text": "megl",
                 "mllm": "finetune_cot"}
WORDS = ("the a person object holds red blue ball near under above left right small large because shape "
         "colour wears runs sits stands table dog cat tree car street field water hat shirt").split()


def small_config(config: dict) -> dict:
    """The config with every shape shrunk (the code path unchanged): for a CPU test of the script."""
    c = copy.deepcopy(config)
    for bb in c["backbones"].values():
        if bb["family"] == "resnet18":
            bb.update(widths=[4, 8, 8, 16], image_size=32, stem="small")
        else:
            bb.update(image_size=32, patch_size=8, hidden_dim=16, num_layers=2, num_heads=2, mlp_dim=32)
        bb.update(weights=None, frozen_stages=0)
    c["vision_encoder"] = {"kind": "tiny_clip", "tiny": {"hidden_size": 16, "num_layers": 2, "num_heads": 2,
                                                         "patch_size": 8, "projection_dim": 16}}
    lora = c["lm"].get("lora")
    c["lm"] = {"kind": "tiny", "tiny": {"hidden_size": 16, "num_layers": 2, "num_heads": 2, "vocab_size": 300},
               "lora": None if lora is None else {**lora, "r": min(int(lora["r"]), 4)},
               "gradient_checkpointing": c["lm"].get("gradient_checkpointing", False),
               "dtype": c["lm"].get("dtype")}  # the configured dtypes stay: the CPU test builds what the GPU builds
    c["vision_encoder"]["dtype"] = config["vision_encoder"].get("dtype")
    c["sdtg"] = {**c["sdtg"], "prefix_tokens": 4, "max_rationale_tokens": 6}
    c["train"] = {**c["train"], "batch_size": 2, "text_batch_size": None}
    c["evaluate"] = {**c["evaluate"], "batch_size": 2}
    return c


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3) if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def make_batch(batch: int, size: int, num_classes: int, rationale_words: int, device: torch.device, seed: int = 0):
    """Random images in [0, 1], labels, half the samples annotated, long random rationales (truncated by SDTG
    to sdtg.max_rationale_tokens, so the text sequences have their configured length)."""
    g = torch.Generator().manual_seed(seed)
    has_map = torch.arange(batch) % 2 == 0
    maps = (torch.rand(batch, 1, size, size, generator=g) > 0.7).float() * has_map.view(-1, 1, 1, 1)
    mean_map = torch.rand(size, size, generator=g)
    rationales = [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (rationale_words,), generator=g))
                  for _ in range(batch)]
    return ({"image": torch.rand(batch, 3, size, size, generator=g).to(device),
             "label": torch.randint(0, num_classes, (batch,), generator=g).to(device),
             "has_map": has_map.to(device), "visual_map": maps.to(device)},
            (mean_map / mean_map.sum()).to(device), rationales)


class TextStack:
    """The LM (LoRA, optional checkpointing, as `prepare_lm` builds it for a run), CLIP and the tokenizer,
    built once."""

    def __init__(self, config: dict, device: torch.device):
        from transformers import CLIPModel, LlamaForCausalLM

        from megl.models.clip import FrozenVisionEncoder
        from megl.models.lm import prepare_lm
        from megl.models.tokenizer import train_tokenizer
        from megl.plan import DTYPES, clip_config, lm_config

        self.tokenizer = train_tokenizer([" ".join(WORDS)] * 8 + WORDS, 300, None)
        lcfg, self.lm_source = lm_config(config)
        ccfg, self.clip_source = clip_config(config)
        lm_dtype = DTYPES[config["lm"].get("dtype")]
        clip_dtype = DTYPES[config["vision_encoder"].get("dtype")]
        torch.manual_seed(0)
        self.lm = prepare_lm(_build(LlamaForCausalLM, lcfg, lm_dtype, device), config["lm"])
        self.clip = _build(CLIPModel, ccfg, clip_dtype, device)
        self.encoder = FrozenVisionEncoder(self.clip)
        self.lm_params = sum(p.numel() for p in self.lm.parameters())
        self.clip_params = sum(p.numel() for p in self.clip.parameters())

    def sdtg(self, config: dict, feature_dim: int | None, with_encoder: bool, device: torch.device):
        from megl.models.sdtg import SDTG

        s = config["sdtg"]
        return SDTG(self.lm, self.tokenizer, self.encoder if with_encoder else None, feature_dim,
                    s["prefix_tokens"], s["prompt"], s["max_rationale_tokens"]).to(device)


def _build(cls, cfg, dtype: torch.dtype, device: torch.device):
    """A randomly initialised transformers model built directly on `device` in `dtype` (no fp32 copy first)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return cls(cfg)
    finally:
        torch.set_default_dtype(previous)


def family_model(config: dict, family: str, backbone: str | None, num_classes: int, text: TextStack | None,
                 device: torch.device):
    from megl.baselines import baseline_config, get_baseline
    from megl.methods import get_method
    from megl.models.backbones import build_classifier
    from megl.models.build import cam_grid
    from megl.runs import RunModel

    method = get_method(FAMILY_METHOD[family])
    classifier = state = sdtg = None
    if backbone is not None:
        bb = {**config["backbones"][backbone], "weights": None, "frozen_stages": 0}
        classifier = build_classifier(bb, num_classes)
        if method.visual_loss not in (None, "l1"):
            state = get_baseline(method.visual_loss).make_state(baseline_config(config, method.visual_loss),
                                                                cam_grid(classifier, int(bb["image_size"])))
        classifier.to(device)
    if method.writes_text:
        sdtg = text.sdtg(config, classifier.feature_dim if classifier is not None else None,
                         method.uses_vision_encoder, device)
    return RunModel(method, classifier, sdtg, state, None, None)


def time_family(config: dict, family: str, backbone: str | None, num_classes: int, text: TextStack | None,
                device: torch.device, warmup: int, steps: int) -> dict:
    """Warm-up and timed steps of the training loop's own step for one family."""
    from megl.train import backward_step, make_optimizer

    cfg_train = config["train"]
    model = family_model(config, family, backbone, num_classes, text, device)
    model.train(True)
    size = int(config["backbones"][backbone]["image_size"]) if backbone else \
        max(int(b["image_size"]) for b in config["backbones"].values())
    batch, mean_map, rationales = make_batch(int(cfg_train["batch_size"]), size, num_classes,
                                             2 * int(config["sdtg"]["max_rationale_tokens"]), device)
    class_names = [f"class {i}" for i in range(num_classes)]
    optimizer = make_optimizer(model, cfg_train)
    use_bf16 = bool(cfg_train.get("amp_bf16", True)) and device.type == "cuda"
    first = next(p for p in model.classifier.parameters() if p.requires_grad) if model.classifier is not None else None
    reached, text_reached = _gradient_checks(model, batch, cfg_train, mean_map, config,
                                             rationales, class_names, use_bf16, first)
    _reset_peak(device)
    times, finite = [], True
    for i in range(warmup + steps):
        if i == warmup and i > 0 and device.type == "cuda":  # the peak of the timed steps only
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        terms = backward_step(model, batch, cfg_train, mean_map, config, rationales, class_names,
                              use_bf16)  # fit's own step: whole batch or train.micro_batch_size chunks
        optimizer.step()
        _sync(device)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
        finite &= all(bool(torch.isfinite(v).all()) for v in terms.values())
    out = {"method": model.method.name, "backbone": backbone or "mllm", "batch": int(cfg_train["batch_size"]),
           "steps_timed": steps, "ms_per_step": round(statistics.median(times), 3),
           "ms_all": [round(t, 3) for t in times], "peak_mem_gib": _peak_gib(device),
           "losses": {k: float(v.detach().float()) for k, v in terms.items()}, "losses_finite": finite,
           "grad_reaches": "classifier first layer" if first is not None else "LoRA adapters",
           "grad_reached": bool(reached),
           "trainable_params": sum(p.numel() for p in model.trainable_parameters())}
    if text_reached is not None:
        out["text_grad_reaches_first_layer"] = text_reached
    optimizer.zero_grad(set_to_none=True)  # the shared LM's LoRA gradients must not weigh on the next family
    del model, optimizer, terms
    return out


def _gradient_checks(model, batch, cfg_train, mean_map, config, rationales, class_names, use_bf16,
                     first) -> tuple[bool, bool | None]:
    """One untimed forward/backward of the whole batch: does the total loss's gradient reach the classifier's
    first layer (no classifier: the LoRA adapters), and does L_textual's alone (None without L_textual)?"""
    from megl.objective import batch_losses

    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
        terms = batch_losses(model, batch, cfg_train, mean_map, config, rationales, class_names)
    text_reached = None
    if first is not None and "loss_textual" in terms:
        (g,) = torch.autograd.grad(terms["loss_textual"], [first], retain_graph=True, allow_unused=True)
        text_reached = g is not None and bool(g.float().abs().sum() > 0)
    terms["loss"].backward()
    if first is not None:
        reached = first.grad is not None and bool(first.grad.float().abs().sum() > 0)
    else:
        reached = any(p.grad is not None and bool(p.grad.float().abs().sum() > 0)
                      for n, p in model.sdtg.named_parameters() if "lora_" in n)
    for p in model.trainable_parameters():
        p.grad = None
    return reached, text_reached


def time_scoring(config: dict, num_classes: int, text: TextStack, device: torch.device, warmup: int,
                 steps: int) -> dict:
    """The MLLMs' closed-set evaluation: log-likelihood of every class's answer for one evaluation batch."""
    from megl.mllm_protocol import mllm_answer

    model = family_model(config, "mllm", None, num_classes, text, device)
    model.train(False)
    b = int(config["evaluate"]["batch_size"])
    size = max(int(bb["image_size"]) for bb in config["backbones"].values())
    images = torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    candidates = [mllm_answer(f"class {i}") for i in range(num_classes)]
    use_bf16 = device.type == "cuda"
    _reset_peak(device)
    times, finite = [], True
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            total, _ = model.sdtg.score_candidates(images, None, None, candidates)
        _sync(device)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
        finite &= bool(torch.isfinite(total).all())
    ms = statistics.median(times)
    return {"batch": b, "classes": num_classes, "ms_per_batch": round(ms, 3),
            "ms_per_sample_per_class": ms / (b * num_classes), "peak_mem_gib": _peak_gib(device),
            "scores_finite": finite}


def run(config: dict, device: torch.device, *, small: bool, warmup: int, steps: int) -> dict:
    from megl.matrix import cells, matrix_backbones
    from megl.methods import get_method
    from megl.plan import CARDS_GB, HEADROOM, family_of, gpu_hours, plan

    the_plan = plan(config, memory=False)  # step counts of the real matrix (before any shrinking)
    bench_config = small_config(config) if small else config
    num_classes = max(d["classes"] for d in the_plan["datasets"].values())
    if small:
        num_classes = min(num_classes, 8)  # scoring cost is per (sample, class): scaled back by the class count
    backbones = matrix_backbones(config["matrix"])
    families = sorted({family_of(get_method(c.method)) for c in cells(config)}, key=list(FAMILY_METHOD).index)
    report: dict = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
                    "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                                    else platform.processor()),
                    "small": small, "warmup": warmup, "steps": steps, "num_classes": num_classes,
                    "settings": {k: bench_config["train"].get(k) for k in ("batch_size", "micro_batch_size",
                                                                           "text_batch_size", "amp_bf16")}
                    | {"lm.gradient_checkpointing": bool(bench_config["lm"].get("gradient_checkpointing"))},
                    "families": {}, "scoring": None, "errors": {}}
    torch.manual_seed(0)
    for family in [f for f in families if f not in ("text", "mllm")]:
        for b in backbones:
            _one(report, f"{family}/{b}", partial(time_family, bench_config, family, b, num_classes, None, device,
                                                  warmup, steps))
    text = None
    if any(f in families for f in ("text", "mllm")):
        try:
            text = TextStack(bench_config, device)
            report["text_models"] = {"lm": text.lm_source, "lm_params": text.lm_params, "clip": text.clip_source,
                                     "clip_params": text.clip_params,
                                     "lm_dtype": str(next(text.lm.parameters()).dtype).replace("torch.", ""),
                                     "gradient_checkpointing": bool(bench_config["lm"].get("gradient_checkpointing"))}
        except Exception:  # record and go on: the visual families' numbers still come back
            report["errors"]["text_models"] = traceback.format_exc(limit=4)
    if text is not None:
        if "text" in families:
            for b in backbones:
                _one(report, f"text/{b}", partial(time_family, bench_config, "text", b, num_classes, text, device,
                                                  warmup, steps))
        if "mllm" in families:
            _one(report, "mllm/mllm", lambda: time_family(bench_config, "mllm", None, num_classes, text, device,
                                                          warmup, steps))
            try:
                report["scoring"] = time_scoring(bench_config, num_classes, text, device, warmup, steps)
            except Exception:
                report["errors"]["scoring"] = traceback.format_exc(limit=4)
    ms = {tuple(k.split("/")): v["ms_per_step"] for k, v in report["families"].items()}
    report["gpu_hours"] = {str(g): gpu_hours(the_plan, ms, g) for g in (1, 4)}
    if report["scoring"]:
        per = report["scoring"]["ms_per_sample_per_class"]
        eval_h = sum(j["test_samples"] * j["seeds"] * the_plan["datasets"][j["dataset"]]["classes"] * per
                     for j in the_plan["jobs"] if j["family"] == "mllm") / 3.6e6
        report["gpu_hours"]["mllm_closed_set_scoring"] = round(eval_h, 3)
    report["fits_measured"] = {k: None if v["peak_mem_gib"] is None else  # CPU: no device memory to measure
                               {f"{gb}GB": HEADROOM * v["peak_mem_gib"] * 2 ** 30 <= gb * 1e9 for gb in CARDS_GB}
                               for k, v in report["families"].items()}
    report["plan_totals"] = the_plan["totals"]
    return report


def _one(report: dict, key: str, fn) -> None:
    try:
        report["families"][key] = fn()
    except Exception:  # one device call must bring back every family it can (an OOM is a result too)
        report["errors"][key] = traceback.format_exc(limit=4)
    finally:
        _reset_peak(torch.device(report["device"]))


def table(report: dict) -> str:
    lines = [f"paper-scale benchmark on {report['device']} ({report['device_name']}), torch {report['torch']}"
             + (", --small shapes" if report["small"] else ""),
             f"{'family/backbone':22} {'method':18} {'batch':>5} {'ms/step':>9} {'peak GiB':>9} finite grad"]
    for k, v in report["families"].items():
        lines.append(f"{k:22} {v['method']:18} {v['batch']:5d} {v['ms_per_step']:9.1f} "
                     f"{v['peak_mem_gib'] if v['peak_mem_gib'] is not None else '-':>9} "
                     f"{'yes' if v['losses_finite'] else 'NO':6} {'yes' if v['grad_reached'] else 'NO'}")
    if report["scoring"]:
        s = report["scoring"]
        lines.append(f"closed-set scoring: {s['ms_per_batch']:.1f} ms per batch of {s['batch']} x "
                     f"{s['classes']} classes")
    for g in ("1", "4"):
        h = report["gpu_hours"][g]
        lines.append(f"training on {g} GPU(s): {h['total_gpu_hours']:.2f} GPU-hours, "
                     f"wall >= {h['wall_hours_lower_bound']:.2f} h"
                     + (f" (not measured: {', '.join(h['missing'])})" if h["missing"] else ""))
    for k in report["errors"]:
        lines.append(f"ERROR {k}: {report['errors'][k].strip().splitlines()[-1]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megl.bench.paper_scale", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="config/paper.yaml", help="config whose matrix and models are measured")
    p.add_argument("--device", default="cuda", help="cuda (the point) or cpu (with --small, to test the script)")
    p.add_argument("--small", action="store_true", help="shrunken shapes, batch 2 (CPU test of the same code)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per family (default: %(default)s)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per family (default: %(default)s)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a config key, dotted (e.g. lm.gradient_checkpointing=true); repeatable")
    p.add_argument("--out", default="results/bench/paper_scale.json", help="the report (JSON)")
    args = p.parse_args(argv)
    import yaml

    from megl.config import load_config
    from megl.io import write_json

    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    config = load_config(args.config, overrides)
    report = run(config, torch.device(args.device), small=args.small, warmup=args.warmup, steps=args.steps)
    report["config"] = args.config
    write_json(Path(args.out), report)
    print(table(report))
    print(f"wrote {args.out}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
