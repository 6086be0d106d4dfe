"""Prediction of one trained run on the test split: predictions.jsonl, saliency.npz (figure samples) and
score_inputs.npz (what scoring needs that only the model can give: maps, CLIP similarities, efficiency).

`megl run-cell` (every seed of a cell) and `megl evaluate` (one run, megl.evaluate) both go through
`predict_into`; metrics.json is the scoring step's (megl.score). Nothing here imports megl.metrics:
editing how a score is computed re-runs no training (docs/workflow.md).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from megl import timing as efficiency
from megl.data.annotations import read_dataset
from megl.data.split import read_split
from megl.data.tensors import SplitTensors, decode_split, trunk_features
from megl.errors import MEGLError
from megl.io import atomic_path, write_text
from megl.mllm_protocol import (
    answer_has_eos,
    class_names_of,
    closed_set_protocol,
    mllm_answer,
    parse_answer,
    rationale_part,
)
from megl.models.build import build_run_model
from megl.models.gradcam import saliency as saliency_map
from megl.run_spec import RunSpec, resolve_run_spec
from megl.runs import WEIGHTS, load_weights, read_json
from megl.runtime import resolve_device, set_determinism
from megl.score_inputs import RUN_CONFIG, write_score_inputs

TOPK = 3
log = logging.getLogger(__name__)


def run_config_of(run_dir: Path) -> dict:
    """The config the run was trained with (run_dir/config.yaml, written by train.write_run_record)."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise MEGLError(f"{path}: missing; the run folder holds no config snapshot (retrain it: megl train --force)")
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key in ("train", "evaluate", "backbones", "device", "selection", "matrix"):  # what RunSpec reads
        if not isinstance(config, dict) or key not in config:
            raise MEGLError(f"{path}: field {key!r} missing; the run's config snapshot is damaged")
    return config


def predict_run(config: dict, run_dir: Path, data_root: Path, split_path: Path,
                pretrained_dir: Path | None = None, backbone_weights: Path | None = None) -> Prediction:
    """Rebuild the run in `run_dir` from its own config.yaml and weights, then `predict_into` it on the
    test split (with its validation accuracy). `config` (today's) gives the device only."""
    run_dir = Path(run_dir)
    identity = read_json(run_dir / "run.json")["run"]
    spec = resolve_run_spec(run_config_of(run_dir), identity["dataset"], identity["backbone"], identity["method"])
    set_determinism(identity["seed"], spec.train["num_threads"])
    device = resolve_device(config["device"])
    data = read_dataset(data_root)
    split = read_split(split_path, data)
    model = load_trained_model(spec, run_dir, data.num_classes, pretrained_dir, backbone_weights, device)
    size = spec.image_size
    val_acc = None
    if model.classifier is not None:
        val = decode_split(data, split["val"], size, with_full_maps=False)
        val.features = trunk_features(model.classifier, val.images, device)
        val_acc = split_accuracy(model, val, device)
    test = decode_split(data, split["test"], size)
    if model.classifier is not None:
        test.features = trunk_features(model.classifier, test.images, device)
    return predict_into(run_dir, identity, str(split_path), model, test, spec, device, class_names_of(data),
                        data.num_classes, val_acc, reseed=False)


def split_accuracy(model, split, device: torch.device) -> float:
    """Accuracy of the run's classifier on one decoded split (validation: selection and validity)."""
    model.train(False)
    correct = 0
    with torch.no_grad():
        for start in range(0, len(split), 256):
            batch = split.batch(torch.arange(start, min(start + 256, len(split))), device)
            out = (model.classifier.head_forward(batch["features"]) if "features" in batch
                   else model.classifier.forward_with_features(batch["image"]))
            correct += int((out.logits.argmax(1) == batch["label"]).sum())
    return correct / len(split)


def load_trained_model(spec: RunSpec, run_dir: Path, num_classes: int, pretrained_dir, backbone_weights,
                       device: torch.device):
    model = build_run_model(spec.sections(), spec.method_def, spec.entry, num_classes, pretrained_dir,
                            backbone_weights)
    model.load_saved_state(load_weights(run_dir / WEIGHTS), str(run_dir / WEIGHTS))
    model.to(device).train(False)
    return model


@dataclass
class Prediction:
    """What a model did on the test split: one record per sample, the maps for the saliency
    scores, CLIP similarities of the written rationales, and a few examples for the figures."""
    records: list[dict] = field(default_factory=list)
    pred_maps: list = field(default_factory=list)
    gt_maps: list = field(default_factory=list)
    full_pred: list = field(default_factory=list)
    full_gt: list = field(default_factory=list)
    kept: list = field(default_factory=list)
    sims: list = field(default_factory=list)
    candidates: list[str] | None = None  # MLLM runs: the closed-set answer texts, one per class


def predict(model, test: SplitTensors, ev: dict, device: torch.device, class_names: list[str]) -> Prediction:
    """Run the model over the test split in batches: labels, Grad-CAM maps, rationales. `ev`: the `evaluate` section."""
    method = model.method
    out = Prediction()
    if method.is_mllm:
        out.candidates = [mllm_answer(name) for name in class_names]
    for start in range(0, len(test), ev["batch_size"]):
        batch = test.batch(torch.arange(start, min(start + ev["batch_size"], len(test))), device)
        images = batch["image"]
        rationales = answers = None
        if method.is_mllm:
            mllm = _mllm_batch(model.sdtg, method, images, out.candidates, class_names, ev)
            answers, probs, preds, sal = mllm["answers"], None, mllm["closed"], None
            rationales = [rationale_part(t) for t in answers] if method.mllm_target == "answer_rationale" else None
        else:
            # Grad-CAM of the predicted class
            logits, _, sal, tokens = saliency_map(model.classifier, images, features=batch.get("features"))
            sal = sal.detach()
            probs = logits.detach().float().softmax(1)
            preds = probs.argmax(1).tolist()
            if method.textual:
                text_sal = sal if method.saliency_path != "none" else None
                with torch.no_grad():
                    rationales = model.sdtg.generate(images, text_sal, tokens.tokens.detach(), **_decoding(ev))
        if rationales is not None and model.clip is not None:
            from megl.models.clip import clip_text_image_similarity

            with torch.no_grad():
                out.sims.extend(clip_text_image_similarity(model.clip, model.clip_tokenizer, images,
                                                           rationales).float().cpu().tolist())
        for i, sid in enumerate(batch["sample_id"]):
            rec = {"id": sid, "label": int(batch["label"][i]), "prediction": int(preds[i]),
                   "rationale": rationales[i] if rationales is not None else None,
                   "reference": list(batch["rationales"][i])}
            if answers is not None:
                rec.update(_mllm_record(mllm, i))
            if probs is not None:
                top = probs[i].topk(min(TOPK, probs.shape[1]))
                rec["topk"] = [[int(c), round(float(p), 6)] for p, c in zip(top.values, top.indices)]
            out.records.append(rec)
            if sal is not None:
                _keep_maps(out, batch, i, sid, sal, ev)
    return out


def _keep_maps(out: Prediction, batch: dict, i: int, sid: str, sal: torch.Tensor, ev: dict) -> None:
    full = "full_map" in batch
    if bool(batch["has_map"][i]):
        out.pred_maps.append(sal[i].cpu().numpy())
        out.gt_maps.append(batch["visual_map"][i, 0].cpu().numpy())
    if full:
        out.full_pred.append(sal[i].cpu().numpy())
        out.full_gt.append(batch["full_map"][i, 0].cpu().numpy())
    if len(out.kept) < ev["n_saliency_samples"]:
        gt = batch["full_map"][i, 0] if full else batch["visual_map"][i, 0]
        out.kept.append((sid, batch["image"][i].cpu().numpy(), gt.cpu().numpy(), sal[i].cpu().numpy()))


def predict_into(run_dir: Path, identity: dict, split_name: str, model, test: SplitTensors, spec: RunSpec,
                 device: torch.device, class_names: list[str], num_classes: int, val_accuracy: float | None,
                 reseed: bool = True) -> Prediction:
    """The one prediction sequence of a trained run (megl run-cell and megl evaluate): predict on the test
    split, measure the model's efficiency, write predictions.jsonl, saliency.npz and score_inputs.npz.
    `reseed`: set the run's seed first (a cell predicts its seeds one after another)."""
    if reseed:
        set_determinism(int(identity["seed"]), spec.train["num_threads"])
    model.train(False)
    prediction = predict(model, test, spec.evaluate, device, class_names)
    write_prediction(run_dir, identity, split_name, model, model.method, prediction, spec, device, num_classes,
                     val_accuracy)
    return prediction


def write_prediction(run_dir: Path, identity: dict, split_name: str, model, method, prediction: Prediction,
                     spec: RunSpec, device: torch.device, num_classes: int, val_accuracy: float | None = None) -> None:
    """predictions.jsonl, saliency.npz and score_inputs.npz of one run, each written atomically.
    `val_accuracy` (the trained model on the validation split) feeds the cell validity check."""
    ev = spec.evaluate
    records = prediction.records
    size = model.classifier.image_size if model.classifier is not None else spec.image_size
    candidates = prediction.candidates
    facts = {"run": identity, "split": split_name, "num_classes": int(num_classes),
             "val_accuracy": float(val_accuracy) if val_accuracy is not None else None,
             "mllm": _mllm_facts(method, model.sdtg, candidates) if method.is_mllm else None,
             "efficiency": _efficiency_block(model, method, size, device, ev, candidates)}
    write_text(run_dir / "predictions.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    kept = prediction.kept
    if kept:
        with atomic_path(run_dir / "saliency.npz", suffix=".npz") as tmp:
            np.savez_compressed(tmp, ids=np.array([k[0] for k in kept]),
                                images=np.stack([k[1] for k in kept]).astype(np.float16),
                                gt=np.stack([k[2] for k in kept]).astype(np.float16),
                                saliency=np.stack([k[3] for k in kept]).astype(np.float16))
    maps = {"pred_maps": prediction.pred_maps, "gt_maps": prediction.gt_maps, "full_pred": prediction.full_pred,
            "full_gt": prediction.full_gt}
    write_score_inputs(run_dir, maps, prediction.sims, facts)
    log.info("%s: %d test predictions written", run_dir, len(records))


# ---------------------------------------------------------------- MLLM baselines (docs/metrics.md)


def _mllm_batch(sdtg, method, images, candidates: list[str], class_names: list[str], ev: dict) -> dict:
    """Generated text (parsed: the paper's protocol) and closed-set scores of every class for one batch."""
    answers = sdtg.generate(images, None, None, **_decoding(ev))
    total, mean = (t.cpu() for t in sdtg.score_candidates(images, None, None, candidates,
                                                          eos=answer_has_eos(method)))
    top = total.topk(min(TOPK, total.shape[1]), dim=1)
    return {"answers": answers, "parsed": [parse_answer(t, class_names) for t in answers],
            "closed": top.indices[:, 0].tolist(), "closed_norm": mean.argmax(1).tolist(),
            "topk": [[[int(c), round(float(v), 4), round(float(mean[r, c]), 4)] for v, c in zip(vals, idx)]
                     for r, (vals, idx) in enumerate(zip(top.values, top.indices))]}


def _mllm_record(mllm: dict, i: int) -> dict:
    """predictions.jsonl fields of an MLLM sample; `prediction` itself is the closed-set argmax."""
    return {"answer": mllm["answers"][i],                 # the whole generated text
            "prediction_generate": mllm["parsed"][i],     # its parsed class, -1 when it names none
            "prediction_closed_norm": mllm["closed_norm"][i],
            "closed_topk": mllm["topk"][i]}               # [class, sum log-prob, mean log-prob], best first


def _mllm_facts(method, sdtg, candidates: list[str]) -> dict:
    """What scoring needs to know of the closed-set protocol that only the tokenizer can tell: its name,
    how many answer candidates exceed sdtg.max_rationale_tokens (scored truncated, as they were
    trained) and how many classes their truncation makes indistinguishable."""
    full = sdtg.tokenizer([" " + c for c in candidates], add_special_tokens=False)["input_ids"]
    n_cut = sum(1 for ids in full if len(ids) > sdtg.max_rationale_tokens)
    note = None
    if n_cut:
        kept = [tuple(ids) for ids in sdtg.target_ids(candidates, eos=False)]
        clash = sum(1 for ids in kept if kept.count(ids) > 1)
        note = (f"{n_cut} of {len(candidates)} answer candidates exceed sdtg.max_rationale_tokens="
                f"{sdtg.max_rationale_tokens} and are scored truncated, as they were trained; "
                f"{clash} classes share their truncated tokens with another and cannot be told apart")
    return {"classification_protocol": closed_set_protocol(method), "n_candidates_truncated": n_cut,
            "closed_set_note": note}


def mllm_latency_fn(sdtg, image: torch.Tensor, new_tokens: int):
    """What MLLM latency times: prefill of [BOS] V prompt for one image, then greedy decoding of
    exactly `new_tokens` tokens (EOS suppressed until then)."""
    def run():
        sdtg.generate(image, None, None, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    return run


def _mllm_efficiency(sdtg, method, candidates: list[str], size: int, device, lat: dict) -> dict:
    """Parameters of encoder + projections + LM; latency of answering one image (mllm_latency_fn) with
    as many new tokens as the longest answer candidate has (EOS included where training wrote one)."""
    eos = answer_has_eos(method)
    new_tokens = max(len(s) for s in sdtg.target_ids(candidates, eos=eos))
    x = torch.rand(1, 3, size, size, device=device)
    use_bf16 = device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
        timing = efficiency.measure_latency(mllm_latency_fn(sdtg, x, new_tokens), lat["warmup"], lat["repeats"],
                                            device)
    protocol = (f"batch 1: prefill (visual prefix + prompt) + greedy decoding of {new_tokens} new tokens "
                f"(the longest 'the answer is <class>.'{' + EOS' if eos else ''})")
    return {"params": efficiency.count_parameters(sdtg), "latency_ms": timing["latency_ms"], "fps": timing["fps"],
            "latency_device": str(device), "latency_protocol": protocol, "latency_new_tokens": new_tokens,
            "latency_bf16": use_bf16}


def _decoding(ev: dict) -> dict:
    return {"max_new_tokens": ev["decoding"]["max_new_tokens"], "num_beams": ev["decoding"].get("num_beams", 1)}


def _efficiency_block(model, method, size: int, device, ev: dict, candidates: list[str] | None = None) -> dict:
    """Classifier alone at batch 1 without decoding (paper Table 5); MLLMs: prefill + answer decoding."""
    lat = ev["latency"]
    if method.is_mllm:
        return _mllm_efficiency(model.sdtg, method, candidates, size, device, lat)
    else:
        params = efficiency.count_parameters(model.classifier)
        timing = efficiency.latency_of_classifier(model.classifier, size, device, lat["warmup"], lat["repeats"],
                                                  bf16=True)
    return {"params": params, "latency_ms": timing["latency_ms"], "fps": timing["fps"],
            "latency_device": str(device)}
