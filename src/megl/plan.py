"""`megl plan`: what a config's run matrix costs before anyone books a GPU (docs/benchmarks.md, "Paper scale").

For every job of the matrix (one per dataset x backbone x method cell, `megl.matrix.cells`) the
models are built at their real shapes on PyTorch's meta device (no weights, no download, no GPU):
the classifier by `megl.models.backbones.build_classifier`, the LM as a transformers Llama wrapped by
`megl.models.lm.apply_lora`, CLIP as a transformers CLIPModel. From them: parameters (total and
trainable), bytes of weights at the configured dtype, gradients and AdamW state, an activation
estimate, and the optimiser steps the job trains (selection candidates included).

Activation estimate (bytes kept for backward in one training step), counted, not guessed: the real
forward (the classifier's Grad-CAM with its double-backward graph, CDEP's decomposition, one LM
decoder layer with its LoRA adapters, one CLIP encoder layer) runs on meta tensors under
`torch.autograd.graph.saved_tensors_hooks`, which sees every tensor autograd saves; run at batch 1 and
2, the difference is the per-sample (per-token for a layer) size and the constant (the weights a
layer saves) drops out. Then
    classifier: per_sample * batch
    LM:         per_token_per_layer * layers * k * seq + 10 * k * seq * vocab
                (logits: bf16, fp32 copy, fp32 log-softmax)
    LM with activation checkpointing: 2 * hidden * layers * k * seq (each layer's bf16 input)
                + per_token_per_layer * k * seq (one layer recomputed) + the logits term
    CLIP vision: per_token_per_layer * layers * k * (patches + 1), only when L_textual's gradient
                flows into Â (saliency path `grad`); the frozen tower otherwise runs without a graph
with k the text batch (train.text_batch_size or the batch; at most train.micro_batch_size, as is the
classifier's batch here) and seq = 1 (BOS) + sdtg.prefix_tokens +
prompt tokens (words and punctuation of sdtg.prompt) + sdtg.max_rationale_tokens + 1 (EOS).
The meta forward runs in each model's stored dtype: the classifier's numbers are fp32 (bf16
autocast on CUDA roughly halves them), the LM's and CLIP's are at their configured dtype.
`total_bytes` follows `lm.gradient_checkpointing`; `total_bytes_plain` / `_checkpointed` give both cases.
A job "fits" a card when 1.2 x (weights + gradients + optimiser + activations) <= its memory: the
20 % covers temporaries of the backward, the CUDA context and allocator fragmentation.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from megl.config import for_cell
from megl.errors import MEGLError
from megl.matrix import cells, enumerate_runs
from megl.methods import MLLM_BACKBONE, Method, get_method

# Paper Table 1 (shared/design/method.md): samples and classes of the official datasets.
PAPER_DATASETS = {"objects": {"samples": 4790, "classes": 40, "maps": 402},
                  "actions": {"samples": 11511, "classes": 127, "maps": 1185}}
# The LM of LLaVA-1.5-7B (lmsys/vicuna-7b-v1.5's config.json) and CLIP ViT-L/14 (openai/clip-vit-large-patch14).
VICUNA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False)
CLIP_L14_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       patch_size=14, image_size=224, projection_dim=768)
CLIP_L14_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     max_position_embeddings=77, vocab_size=49408, projection_dim=768)
CARDS_GB = (24, 40, 80)
HEADROOM = 1.2
LOGIT_BYTES = 10  # per (token, vocab entry): bf16 logits, their fp32 copy, fp32 log-softmax kept for backward
DTYPES = {None: torch.float32, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "auto": torch.float16}  # auto: the checkpoint's dtype; Vicuna / CLIP ship fp16
GIB = 2 ** 30


def family_of(method: Method) -> str:
    """The benchmark family whose step cost stands for the method's (megl.bench.paper_scale)."""
    if method.is_mllm:
        return "mllm"
    if method.writes_text:
        return "text"
    if method.visual_loss == "cdep":
        return "cdep"
    return "visual" if method.needs_saliency_graph else "baseline"


# ---------------------------------------------------------------- data and step counts
def dataset_size(config: dict, name: str) -> dict:
    """Samples and classes of a dataset: paper Table 1 for the official ones, the stand-in's settings otherwise."""
    entry = config["datasets"][name]
    if entry.get("source") == "standin":
        from megl.data import standin

        kind = entry["standin"]["kind"]
        classes = standin.KINDS[kind].classes
        return {"samples": int(entry["standin"]["n_images"]), "classes": len(classes), "source": f"standin {kind}"}
    if name in PAPER_DATASETS:
        return {**PAPER_DATASETS[name], "source": "paper Table 1"}
    raise MEGLError(f"config: key datasets.{name}: megl plan knows no sample count for it (paper Table 1 has "
                    f"{', '.join(PAPER_DATASETS)}; stand-ins read datasets.{name}.standin.n_images)")


def split_sizes(n: int, split: dict) -> dict:
    """Approximate split sizes (the real split stratifies per class, so counts may differ by a few)."""
    train, val = round(n * float(split["train"])), round(n * float(split["val"]))
    return {"train": train, "val": val, "test": n - train - val}


def trainings_of(config: dict, method: Method) -> dict:
    """How many trainings one (dataset, backbone, method) job runs (megl.cell.run_cell): every selection
    candidate with the selection seed, then every reported seed afresh (the selection seed is never one)."""
    from megl.cell import guidance_grid

    seeds = [int(s) for s in config["matrix"]["seeds"]]
    candidates = len(guidance_grid(config, method))
    return {"candidates": candidates, "seeds": len(seeds), "trainings": candidates + len(seeds)}


# ---------------------------------------------------------------- models on the meta device
def _count(module) -> dict:
    params = list(module.parameters())
    trainable = [p for p in params if p.requires_grad]
    return {"params": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in trainable),
            "weight_bytes": sum(p.numel() * p.element_size() for p in params),
            "trainable_bytes": sum(p.numel() * p.element_size() for p in trainable)}


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves while `fn()` runs (each tensor once)."""
    seen: dict[int, tuple] = {}

    def pack(t):
        seen[id(t)] = (t, t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(size for _, size in seen.values())


def per_unit(fn_of_n) -> int:
    """Saved bytes per unit of the batch (or token) axis: fn(2) - fn(1), the constant part dropped."""
    return saved_bytes(lambda: fn_of_n(2)) - saved_bytes(lambda: fn_of_n(1))


@dataclass
class TextModels:
    lm: dict
    lm_per_token_layer: int
    lm_dims: dict
    clip: dict
    clip_vision: dict
    clip_per_token_layer: int
    clip_dims: dict
    lora: dict | None


def _local_config(path, loader):
    """A model folder's config.json when it is present locally (read only; never downloaded)."""
    if path and (Path(path) / "config.json").is_file():
        return loader(str(path), local_files_only=True)
    return None


def lm_config(config: dict):
    from transformers import AutoConfig, LlamaConfig

    lm = config["lm"]
    if lm["kind"] == "tiny":
        t = lm["tiny"]
        h = int(t["hidden_size"])
        return LlamaConfig(vocab_size=int(t["vocab_size"]), hidden_size=h, intermediate_size=4 * h,
                           num_hidden_layers=int(t["num_layers"]), num_attention_heads=int(t["num_heads"]),
                           num_key_value_heads=int(t["num_heads"]), tie_word_embeddings=True), "lm.tiny"
    local = None if lm.get("gguf_file") else _local_config(lm.get("path"), AutoConfig.from_pretrained)
    return (local, str(lm["path"])) if local is not None else (LlamaConfig(**VICUNA_7B), "Vicuna-7B v1.5 (assumed)")


def clip_config(config: dict):
    from transformers import CLIPConfig

    v = config["vision_encoder"]
    if v["kind"] in ("tiny", "tiny_clip"):
        t = v["tiny"]
        h = int(t["hidden_size"])
        common = dict(hidden_size=h, intermediate_size=4 * h, num_hidden_layers=int(t["num_layers"]),
                      num_attention_heads=int(t["num_heads"]))
        size = max(int(b["image_size"]) for b in config["backbones"].values())
        return CLIPConfig(text_config=dict(common, vocab_size=int(config["lm"]["tiny"]["vocab_size"])),
                          vision_config=dict(common, image_size=size, patch_size=int(t["patch_size"])),
                          projection_dim=int(t["projection_dim"])), "vision_encoder.tiny"
    local = _local_config(v.get("path"), CLIPConfig.from_pretrained)
    if local is not None:
        return local, str(v["path"])
    return CLIPConfig(vision_config=CLIP_L14_VISION, text_config=CLIP_L14_TEXT,
                      projection_dim=768), "CLIP ViT-L/14 (assumed)"


def build_text_models(config: dict) -> TextModels:
    """The LM (with LoRA as configured) and CLIP at their real shapes, on meta; counts and per-token saves."""
    from transformers import CLIPModel, LlamaForCausalLM

    from megl.models.lm import apply_lora

    lcfg, lsource = lm_config(config)
    dtype = DTYPES[config["lm"].get("dtype")] if config["lm"]["kind"] != "tiny" else torch.float32
    with torch.device("meta"):
        lm = apply_lora(LlamaForCausalLM(lcfg).to(dtype), config["lm"].get("lora"))
    lm.train()
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    layer, rotary, h = base.model.layers[0], base.model.rotary_emb, int(lcfg.hidden_size)

    def lm_layer(n: int):  # one decoder layer on n tokens (batch 1), as SDTG.loss runs it
        x = torch.empty(1, n, h, device="meta", dtype=dtype, requires_grad=True)
        pos = torch.arange(n, device="meta")[None]
        layer(x, attention_mask=None, position_ids=pos, position_embeddings=rotary(x, pos))

    ccfg, csource = clip_config(config)
    cdtype = DTYPES[config["vision_encoder"].get("dtype")] if config["vision_encoder"]["kind"] == "pretrained" \
        else torch.float32
    with torch.device("meta"):
        clip = CLIPModel(ccfg).to(cdtype)
    clip.requires_grad_(False)  # frozen (FrozenVisionEncoder)
    vlayer, vh = clip.vision_model.encoder.layers[0], int(ccfg.vision_config.hidden_size)

    def clip_layer(n: int):  # the frozen layer with its input requiring grad (the saliency path)
        vlayer(torch.empty(1, n, vh, device="meta", dtype=cdtype, requires_grad=True), None)

    lora = config["lm"].get("lora")
    return TextModels(
        lm={**_count(lm), "source": lsource, "dtype": str(dtype).replace("torch.", "")},
        lm_per_token_layer=per_unit(lm_layer),
        lm_dims={"hidden": h, "layers": int(lcfg.num_hidden_layers), "vocab": int(lcfg.vocab_size),
                 "intermediate": int(lcfg.intermediate_size)},
        clip={**_count(clip), "source": csource, "dtype": str(cdtype).replace("torch.", "")},
        clip_vision=_count(clip.vision_model),
        clip_per_token_layer=per_unit(clip_layer),
        clip_dims={"hidden": vh, "layers": int(ccfg.vision_config.num_hidden_layers),
                   "tokens": (int(ccfg.vision_config.image_size) // int(ccfg.vision_config.patch_size)) ** 2 + 1},
        lora=None if lora is None else {"r": int(lora["r"]), "target_modules": list(lora["target_modules"]),
                                        "analytic": lora_params(base, lora)},
    )


def lora_params(lm, lora: dict) -> int:
    """LoRA's adapter size from the shapes alone: sum over adapted Linear layers of r * (in + out)."""
    targets = set(lora["target_modules"])
    total = 0
    for name, module in lm.named_modules():
        base = getattr(module, "base_layer", None)
        if name.split(".")[-1] in targets and base is not None:
            total += int(lora["r"]) * (base.in_features + base.out_features)
    return total


def classifier_stats(bb_cfg: dict, num_classes: int, method: Method, saved_per_sample: int | None = None) -> dict:
    """The classifier on meta (`build_classifier`, random init) and the bytes its training step saves
    per sample (counted unless given: the meta forward is slow, and the class count barely changes it)."""
    from megl.models.backbones import build_classifier
    from megl.models.gradcam import saliency

    with torch.device("meta"):
        model = build_classifier({**bb_cfg, "weights": None, "frozen_stages": 0}, num_classes)
    frozen = int(bb_cfg.get("frozen_stages", 0))
    if frozen:
        model.freeze(frozen)
    model.train()
    size = int(bb_cfg["image_size"])

    def step(n: int):
        images = torch.empty(n, 3, size, size, device="meta")
        labels = torch.zeros(n, dtype=torch.long, device="meta")
        if method.needs_saliency_graph or method.saliency_path == "detached":
            saliency(model, images, labels, create_graph=method.needs_saliency_graph)
        else:
            model.forward_with_features(images)
        if method.visual_loss == "cdep":
            from megl.baselines.cdep import cd_forward

            cd_forward(model, images, torch.ones(n, 1, size, size, device="meta"))

    return {**_count(model), "feature_dim": int(model.feature_dim),
            "saved_per_sample": per_unit(step) if saved_per_sample is None else saved_per_sample}


# ---------------------------------------------------------------- the plan
def prompt_tokens(prompt: str) -> int:
    """Estimated token count of the prompt (words and punctuation marks; Llama's tokenizer gives about that)."""
    return len(re.findall(r"\w+|[^\w\s]", prompt or ""))


def text_seq_len(config: dict) -> int:
    s = config["sdtg"]
    return 1 + int(s["prefix_tokens"]) + prompt_tokens(s["prompt"]) + int(s["max_rationale_tokens"]) + 1


def job_plan(config: dict, dataset: str, backbone: str, method_name: str, sizes: dict,
             text: TextModels | None, classifiers: dict) -> dict:
    from megl.train import steps_per_epoch

    method = get_method(method_name)
    cfg = for_cell(config, dataset, backbone)  # as megl.cell.run_cell reads it (train by backbone, trunk depth)
    tr = cfg["train"]
    batch = int(tr["batch_size"])
    micro = int(tr.get("micro_batch_size") or batch)  # activations are those of one chunk (megl.train.backward_step)
    data = sizes[dataset]
    split = split_sizes(data["samples"], config["split"])
    per_epoch = steps_per_epoch(split["train"], tr)
    runs = trainings_of(config, method)
    job = {"dataset": dataset, "backbone": backbone, "method": method_name, "family": family_of(method),
           "trainings": runs["trainings"], "candidates": runs["candidates"], "seeds": runs["seeds"],
           "train_samples": split["train"], "test_samples": split["test"], "epochs": int(tr["epochs"]),
           "steps_per_training": per_epoch * int(tr["epochs"]), "batch": batch, "micro_batch": micro}
    job["steps"] = job["trainings"] * job["steps_per_training"]
    if classifiers is None:  # steps only (megl.bench.paper_scale): no model is built
        return job
    params = trainable = weights = trainable_bytes = 0
    act = {"classifier": 0, "lm": 0, "lm_plain": 0, "lm_checkpointed": 0, "logits": 0, "clip": 0}
    if not method.is_mllm:
        mode = (method.needs_saliency_graph, method.saliency_path == "detached", method.visual_loss == "cdep")
        depth = int(cfg["backbones"][backbone].get("frozen_stages", 0))
        key = (backbone, data["classes"], depth, mode)  # the class count changes the head only: saves once per mode
        if key not in classifiers:
            known = next((v["saved_per_sample"] for k, v in classifiers.items()
                          if (k[0], k[2], k[3]) == (backbone, depth, mode)), None)
            classifiers[key] = classifier_stats(cfg["backbones"][backbone], data["classes"], method, known)
        c = classifiers[key]
        params, trainable = c["params"], c["trainable"]
        weights, trainable_bytes = c["weight_bytes"], c["trainable_bytes"]
        act["classifier"] = c["saved_per_sample"] * min(batch, micro)
    if method.writes_text:
        k = min(int(tr.get("text_batch_size") or batch) if not method.is_mllm else batch, micro)
        seq, d = text_seq_len(config), text.lm_dims
        proj = (d["hidden"] * (c["feature_dim"] + 1) if not method.is_mllm else 0) + \
            (d["hidden"] * (text.clip_dims["hidden"] + 1) if method.uses_vision_encoder else 0)  # W_I, W_A (fp32)
        params += text.lm["params"] + text.clip["params"] + proj
        trainable += text.lm["trainable"] + proj
        weights += text.lm["weight_bytes"] + text.clip["weight_bytes"] + 4 * proj
        trainable_bytes += text.lm["trainable_bytes"] + 4 * proj
        act["lm_plain"] = text.lm_per_token_layer * d["layers"] * k * seq
        act["lm_checkpointed"] = (2 * d["hidden"] * d["layers"] + text.lm_per_token_layer) * k * seq
        act["lm"] = act["lm_checkpointed" if config["lm"].get("gradient_checkpointing") else "lm_plain"]
        act["logits"] = LOGIT_BYTES * k * seq * d["vocab"]
        if method.saliency_path == "grad":
            act["clip"] = text.clip_per_token_layer * text.clip_dims["layers"] * k * text.clip_dims["tokens"]
        job.update(text_batch=k, seq_len=seq)
    fixed = weights + 2 * trainable_bytes + 2 * trainable_bytes  # weights, gradients, AdamW exp_avg + exp_avg_sq
    rest = fixed + act["classifier"] + act["logits"] + act["clip"]
    total, plain, ckpt = rest + act["lm"], rest + act["lm_plain"], rest + act["lm_checkpointed"]
    job.update(params=params, trainable=trainable, weight_bytes=weights, grad_bytes=trainable_bytes,
               optimizer_bytes=2 * trainable_bytes, activation_bytes=act, total_bytes=total,
               total_bytes_plain=plain, total_bytes_checkpointed=ckpt,
               fits={f"{gb}GB": fits(total, gb) for gb in CARDS_GB},
               fits_plain={f"{gb}GB": fits(plain, gb) for gb in CARDS_GB},
               fits_checkpointed={f"{gb}GB": fits(ckpt, gb) for gb in CARDS_GB})
    return job


def fits(total_bytes: int, gb: int) -> bool:
    return HEADROOM * total_bytes <= gb * 1e9


def plan(config: dict, memory: bool = True) -> dict:
    """The whole matrix: one entry per (dataset, backbone, method) job, per-method sums and totals.
    memory=False: step counts only (nothing is built)."""
    groups = sorted({(c.dataset, c.backbone, c.method) for c in cells(config)},
                    key=lambda g: (g[0], g[1] == MLLM_BACKBONE, g[1], g[2]))
    sizes = {d: dataset_size(config, d) for d in dict.fromkeys(g[0] for g in groups)}
    needs_text = memory and any(get_method(m).writes_text for _, _, m in groups)
    text = build_text_models(config) if needs_text else None
    classifiers: dict | None = {} if memory else None
    jobs = [job_plan(config, d, b, m, sizes, text, classifiers) for d, b, m in groups]
    methods: dict[str, dict] = {}
    for j in jobs:
        m = methods.setdefault(j["method"], {"family": j["family"], "jobs": 0, "trainings": 0, "steps": 0,
                                             "max_total_bytes": 0})
        m["jobs"] += 1
        m["trainings"] += j["trainings"]
        m["steps"] += j["steps"]
        m["max_total_bytes"] = max(m["max_total_bytes"], j.get("total_bytes", 0))
    out = {"datasets": {d: {**s, **split_sizes(s["samples"], config["split"])} for d, s in sizes.items()},
           "jobs": jobs, "methods": methods,
           "totals": {"jobs": len(jobs), "runs": len(enumerate_runs(config)),
                      "trainings": sum(j["trainings"] for j in jobs), "steps": sum(j["steps"] for j in jobs)},
           "headroom": HEADROOM, "cards_gb": list(CARDS_GB),
           "gradient_checkpointing": bool(config["lm"].get("gradient_checkpointing", False))}
    classifiers_by_backbone = {}
    for (b, k, depth, _), c in (classifiers or {}).items():
        name = f"{b} ({k} classes" + (f", {depth} frozen stages)" if depth else ")")
        classifiers_by_backbone.setdefault(name, {x: c[x] for x in ("params", "trainable")})
    out["models"] = {"classifiers": classifiers_by_backbone}
    if text is not None:
        out["models"].update({
            "lm": {**text.lm, **text.lm_dims, "per_token_per_layer_saved_bytes": text.lm_per_token_layer},
            "lora": text.lora, "clip": text.clip,
            "clip_vision": {**text.clip_vision, **text.clip_dims,
                            "per_token_per_layer_saved_bytes": text.clip_per_token_layer},
            "text_seq_len": text_seq_len(config)})
    return out


# ---------------------------------------------------------------- printing
def _gib(b: int) -> str:
    return f"{b / GIB:.1f}"


def _m(n: int) -> str:
    return f"{n / 1e6:,.1f}M" if n < 1e9 else f"{n / 1e9:.2f}B"


def format_plan(p: dict) -> str:
    lines = []
    models = p["models"]
    lines.append("models (meta device, real shapes):")
    for name, c in models["classifiers"].items():
        lines.append(f"  classifier {name}: {c['params']:,} params, {c['trainable']:,} trainable")
    if "lm" in models:
        lm, lora, clip, cv = models["lm"], models["lora"], models["clip"], models["clip_vision"]
        lines.append(f"  LM {lm['source']}: {lm['params'] - lm['trainable']:,} base params ({lm['dtype']}), "
                     f"{lm['trainable']:,} trainable"
                     + (f" (LoRA r={lora['r']} on {', '.join(lora['target_modules'])}; "
                        f"r*(in+out) summed: {lora['analytic']:,})" if lora else ""))
        lines.append(f"  CLIP {clip['source']}: {clip['params']:,} params ({clip['dtype']}), vision tower "
                     f"{cv['params']:,}; frozen")
        lines.append(f"  text sequence: {models['text_seq_len']} tokens; saved per token per layer: "
                     f"LM {lm['per_token_per_layer_saved_bytes']:,} B, "
                     f"CLIP {cv['per_token_per_layer_saved_bytes']:,} B")
    lines.append("")
    head = (f"{'dataset':8} {'backbone':9} {'method':25} {'train':>5} {'steps':>7} {'params':>8} {'trainable':>9} "
            f"{'wts':>5} {'grad':>5} {'optim':>5} {'act':>5} {'total':>6} {'plain':>6} {'ckpt':>6}  fits 24/40/80 GB")
    lines += [f"per job (GiB; act = activations as configured, lm.gradient_checkpointing = "
              f"{p['gradient_checkpointing']}; total as configured; plain / ckpt: without / with checkpointing):", head]
    for j in p["jobs"]:
        a = j["activation_bytes"]
        act = a["classifier"] + a["lm"] + a["logits"] + a["clip"]
        fit = "/".join("y" if j["fits_plain"][f"{g}GB"] else ("c" if j["fits_checkpointed"][f"{g}GB"] else "-")
                       for g in p["cards_gb"])
        lines.append(f"{j['dataset']:8} {j['backbone']:9} {j['method']:25} {j['trainings']:5d} {j['steps']:7,d} "
                     f"{_m(j['params']):>8} {_m(j['trainable']):>9} {_gib(j['weight_bytes']):>5} "
                     f"{_gib(j['grad_bytes']):>5} {_gib(j['optimizer_bytes']):>5} {_gib(act):>5} "
                     f"{_gib(j['total_bytes']):>6} {_gib(j['total_bytes_plain']):>6} "
                     f"{_gib(j['total_bytes_checkpointed']):>6}  {fit}")
    lines.append("fits: y = even without checkpointing, c = only with lm.gradient_checkpointing, - = no "
                 f"(needs {p['headroom']} x total <= the card's memory)")
    lines.append("")
    lines.append(f"{'method':25} {'family':8} {'jobs':>4} {'trainings':>9} {'steps':>9} {'max GiB':>8}")
    for name, m in p["methods"].items():
        lines.append(f"{name:25} {m['family']:8} {m['jobs']:4d} {m['trainings']:9d} {m['steps']:9,d} "
                     f"{_gib(m['max_total_bytes']):>8}")
    t = p["totals"]
    lines.append(f"{'total':25} {'':8} {t['jobs']:4d} {t['trainings']:9d} {t['steps']:9,d}   ({t['runs']} runs)")
    ds = ", ".join(f"{d}: {s['samples']} samples ({s['source']}), {s['classes']} classes, train {s['train']}"
                   for d, s in p["datasets"].items())
    lines.append(f"data: {ds}")
    return "\n".join(lines)


def gpu_hours(p: dict, ms_per_step: dict[tuple[str, str], float], gpus: int = 1) -> dict:
    """Training GPU-hours per method and in all from measured ms per step of each (family, backbone);
    `gpus` jobs run at once (the workflow's --resources gpu=N), so the wall time is at least the
    largest job's and at least total / gpus."""
    per_method: dict[str, float] = {}
    missing = set()
    longest = 0.0
    for j in p["jobs"]:
        key = (j["family"], j["backbone"])
        if key not in ms_per_step:
            missing.add(key)
            continue
        hours = j["steps"] * ms_per_step[key] / 3.6e6
        per_method[j["method"]] = per_method.get(j["method"], 0.0) + hours
        longest = max(longest, hours)
    total = sum(per_method.values())
    return {"per_method_gpu_hours": {k: round(v, 3) for k, v in per_method.items()},
            "total_gpu_hours": round(total, 3), "gpus": gpus,
            "wall_hours_lower_bound": round(max(total / gpus, longest), 3),
            "missing": sorted("/".join(k) for k in missing)}


__all__ = ["plan", "format_plan", "gpu_hours", "family_of", "PAPER_DATASETS", "VICUNA_7B", "CLIP_L14_VISION"]
