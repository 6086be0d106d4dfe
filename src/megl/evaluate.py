"""Evaluation of one trained run on the test split: metrics.json, predictions.jsonl, saliency.npz.

Metrics as the paper's Tables 2, 3 and 5 (docs/metrics.md): classification, mIoU (+ a
threshold-free companion), text quality and CLIPScore, parameters, latency and FPS.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from megl.config import for_cell, image_size_for
from megl.data.annotations import read_dataset
from megl.data.split import read_split
from megl.data.tensors import SplitTensors, decode_split, trunk_features
from megl.io import atomic_path, write_json, write_text
from megl.methods import get_method
from megl.metrics import classification, efficiency
from megl.metrics import saliency as saliency_metrics
from megl.metrics import text as text_metrics
from megl.mllm_protocol import class_names_of, mllm_answer
from megl.models.build import backbone_entry, build_run_model
from megl.models.gradcam import saliency as saliency_map
from megl.runs import WEIGHTS, load_weights, read_json
from megl.runtime import resolve_device, set_determinism

TOPK = 3
log = logging.getLogger(__name__)


def evaluate_run(config: dict, run_dir: Path, data_root: Path, split_path: Path,
                 pretrained_dir: Path | None = None, backbone_weights: Path | None = None) -> dict:
    """Score the run in `run_dir` on the test split; write metrics.json (atomically) and return it."""
    run_dir = Path(run_dir)
    identity = read_json(run_dir / "run.json")["run"]
    method = get_method(identity["method"])
    config = for_cell(config, identity["dataset"], identity["backbone"])
    bb_cfg = backbone_entry(config, identity["backbone"], method)
    set_determinism(identity["seed"], config["train"]["num_threads"])
    device = resolve_device(config["device"])
    data = read_dataset(data_root)
    split = read_split(split_path, data)
    model = load_trained_model(config, run_dir, method, bb_cfg, data.num_classes, pretrained_dir,
                               backbone_weights, device)
    size = image_size_for(config, bb_cfg)
    val_acc = None
    if model.classifier is not None:
        val = decode_split(data, split["val"], size, with_full_maps=False)
        val.features = trunk_features(model.classifier, val.images, device)
        val_acc = split_accuracy(model, val, device)
    test = decode_split(data, split["test"], size)
    if model.classifier is not None:
        test.features = trunk_features(model.classifier, test.images, device)
    prediction = predict(model, test, config, device, class_names_of(data))
    text = score_text(method, prediction.records, config["evaluate"])
    return write_evaluation(run_dir, identity, str(split_path), model, method, prediction, text, config, device,
                            data.num_classes, val_acc)


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


def load_trained_model(config: dict, run_dir: Path, method, bb_cfg, num_classes: int, pretrained_dir,
                       backbone_weights, device: torch.device):
    model = build_run_model(config, method, bb_cfg, num_classes, pretrained_dir, backbone_weights)
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


def predict(model, test: SplitTensors, config: dict, device: torch.device, class_names: list[str]) -> Prediction:
    """Run the model over the test split in batches: labels, Grad-CAM maps, rationales."""
    method, ev = model.method, config["evaluate"]
    out = Prediction()
    if method.kind == "mllm":
        out.candidates = [mllm_answer(name) for name in class_names]
    for start in range(0, len(test), ev["batch_size"]):
        batch = test.batch(torch.arange(start, min(start + ev["batch_size"], len(test))), device)
        images = batch["image"]
        rationales = answers = None
        if method.kind == "mllm":
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


def score_text(method, records: list[dict], ev: dict) -> dict | None:
    """Text scores of one run (None when it writes no text); `megl.cell` scores many runs at once."""
    if not method.writes_text or records[0]["rationale"] is None:
        return None
    refs = {r["id"]: r["reference"] for r in records}
    return text_metrics.text_metrics(refs, {r["id"]: r["rationale"] for r in records}, spice=ev.get("spice", True))


def write_evaluation(run_dir: Path, identity: dict, split_name: str, model, method, prediction: Prediction,
                     text_scores: dict | None, config: dict, device: torch.device, num_classes: int,
                     val_accuracy: float | None = None) -> dict:
    """metrics.json, predictions.jsonl and saliency.npz of one run, each written atomically.
    `val_accuracy` (the trained model on the validation split) feeds the cell validity check."""
    ev = config["evaluate"]
    records = prediction.records
    metrics = {"run": identity, "n_test": len(records), "split": split_name, "num_classes": int(num_classes)}
    if val_accuracy is not None:
        metrics["val_accuracy"] = float(val_accuracy)
    metrics.update(_classification_block([r["label"] for r in records], [r["prediction"] for r in records],
                                         num_classes))
    saliency_block = _saliency_block(method, prediction, ev)
    text_block = _text_block(method, text_scores, prediction.sims)
    notes = {**saliency_block.pop("notes", {}), **text_block.pop("notes", {})}
    metrics.update(saliency_block)
    metrics.update(text_block)
    metrics["notes"] = notes
    size = model.classifier.image_size if model.classifier is not None else config_image_size(config)
    candidates = prediction.candidates
    if method.kind == "mllm":
        _add_mllm_metrics(metrics, method, records, num_classes, model.sdtg, candidates)
    metrics.update(_efficiency_block(model, method, size, device, ev, candidates))
    metrics["scorer_versions"] = dict(text_metrics.scorer_versions())

    write_text(run_dir / "predictions.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    kept = prediction.kept
    if kept:
        with atomic_path(run_dir / "saliency.npz", suffix=".npz") as tmp:
            np.savez_compressed(tmp, ids=np.array([k[0] for k in kept]),
                                images=np.stack([k[1] for k in kept]).astype(np.float16),
                                gt=np.stack([k[2] for k in kept]).astype(np.float16),
                                saliency=np.stack([k[3] for k in kept]).astype(np.float16))
    write_json(run_dir / "metrics.json", metrics)
    log.info("%s: accuracy %.4f, macro F1 %.4f, mIoU %s, mIoU (all maps) %s", run_dir, metrics["accuracy"],
             metrics["f1_macro"], _fmt(metrics.get("miou")), _fmt(metrics.get("miou_all")))
    return metrics


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def config_image_size(config: dict) -> int:
    return image_size_for(config, None)


# ---------------------------------------------------------------- MLLM baselines (docs/metrics.md)
def closed_set_protocol(method) -> str:
    eos = " + EOS" if answer_has_eos(method) else ""
    return (f"closed-set: argmax over the classes of log p(' the answer is <class>.'{eos} | visual prefix, prompt), "
            "summed over those tokens")


GENERATE_PROTOCOL = "generate-and-parse: decode (evaluate.decoding), parse the class after 'the answer is'"


def answer_has_eos(method) -> bool:
    """llava_vqa's training target ends with EOS after the answer; Fine-tune-CoT's goes on ' because …'."""
    return method.mllm_target == "answer"


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


def _add_mllm_metrics(metrics: dict, method, records: list[dict], num_classes: int, sdtg,
                      candidates: list[str]) -> None:
    """The closed-set protocol's name, its length-normalised accuracy and a note when candidates were
    truncated (as their training targets were); the `generate` block: generate-and-parse scored over
    all test samples (unparsed = wrong), null when nothing parsed."""
    labels = np.asarray([r["label"] for r in records])
    metrics["classification_protocol"] = closed_set_protocol(method)
    full = sdtg.tokenizer([" " + c for c in candidates], add_special_tokens=False)["input_ids"]
    n_cut = sum(1 for ids in full if len(ids) > sdtg.max_rationale_tokens)
    metrics["n_candidates_truncated"] = n_cut
    if n_cut:
        kept = [tuple(ids) for ids in sdtg.target_ids(candidates, eos=False)]
        clash = sum(1 for ids in kept if kept.count(ids) > 1)
        metrics["notes"]["closed_set"] = (
            f"{n_cut} of {len(candidates)} answer candidates exceed sdtg.max_rationale_tokens="
            f"{sdtg.max_rationale_tokens} and are scored truncated, as they were trained; "
            f"{clash} classes share their truncated tokens with another and cannot be told apart")
    metrics["accuracy_closed_norm"] = (float((labels == np.asarray([r["prediction_closed_norm"] for r in records]))
                                             .mean()) if len(records) else None)
    parsed = [r["prediction_generate"] for r in records]
    n_parsed = sum(1 for p in parsed if p >= 0)
    block = {"protocol": GENERATE_PROTOCOL, "n": len(records), "n_parsed": n_parsed,
             "n_unanswered": len(records) - n_parsed}
    if n_parsed:
        scores = _classification_block(labels.tolist(), parsed, num_classes)
        block.update({k: scores[k] for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro")})
    else:
        note = f"no parseable answer in {len(records)} test samples"
        block.update(accuracy=None, precision_macro=None, recall_macro=None, f1_macro=None, note=note)
        metrics["notes"]["generate"] = note
    metrics["generate"] = block


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


def rationale_part(text: str) -> str:
    """Fine-tune-CoT writes "the answer is X. because R": the text metrics score R alone."""
    return text.split(" because ", 1)[1].strip() if " because " in text else text.strip()


def parse_answer(answer: str, class_names: list[str]) -> int:
    """Index of the class named after "the answer is"; the longest matching name wins; -1 if none."""
    text = " ".join(answer.lower().replace("_", " ").split())
    head = text.split("the answer is", 1)[-1].split(".")[0].strip()
    matches = [i for i, name in enumerate(class_names) if head.startswith(name.lower().replace("_", " "))]
    if not matches:
        return -1
    return max(matches, key=lambda i: len(class_names[i]))


def _classification_block(y_true: list[int], y_pred: list[int], num_classes: int) -> dict:
    """Classification metrics; an MLLM answer naming no class (-1) counts as wrong: it lowers accuracy
    and its true class's recall, and no class's precision (`n_unanswered` says how many)."""
    unanswered = sum(1 for p in y_pred if p < 0)
    if not unanswered:
        return {**classification.classification_metrics(y_true, y_pred, num_classes), "n_unanswered": 0}
    # classification_metrics refuses labels outside 0..K-1; scored here over the labels 0..K-1 instead
    out = classification.classification_metrics(y_true, [max(p, 0) for p in y_pred], num_classes)
    t, p = np.asarray(y_true), np.asarray(y_pred)
    precision, recall, f1 = classification.macro_prf(t, p, num_classes)
    out.update(accuracy=float((t == p).mean()), precision_macro=float(precision), recall_macro=float(recall),
               f1_macro=float(f1), n_unanswered=unanswered)
    return out


def _saliency_block(method, p: Prediction, ev: dict) -> dict:
    if method.kind == "mllm":
        reason = "MLLM baselines have no classifier saliency map"
        return {"miou": None, "saliency_auprc": None, "miou_all": None, "saliency_auprc_all": None,
                "n_miou": 0, "notes": {k: reason for k in ("miou", "saliency_auprc", "miou_all")}}
    scores = saliency_metrics.saliency_scores(p.pred_maps, p.gt_maps, ev["miou_threshold"])
    out = {"miou": scores["miou"], "saliency_auprc": scores["auprc"], "saliency_pearson": scores["pearson"],
           "n_miou": scores["n"], "miou_threshold": scores["threshold"]}
    if p.full_pred:
        full = saliency_metrics.saliency_scores(p.full_pred, p.full_gt, ev["miou_threshold"])
        out.update({"miou_all": full["miou"], "saliency_auprc_all": full["auprc"], "n_miou_all": full["n"]})
    else:
        out.update({"miou_all": None, "saliency_auprc_all": None})
    return out


def _text_block(method, scores: dict | None, sims: list[float]) -> dict:
    if scores is None:
        reason = f"method {method.name} writes no rationale"
        out = text_metrics.null_text_metrics(reason)
        out["n_text"] = out.pop("n")
        return out
    out = {**scores, "notes": dict(scores.get("notes", {}))}
    out["n_text"] = out.pop("n")
    out["clipscore"] = text_metrics.clipscore(sims) if sims else None
    if not sims:
        out["notes"]["clipscore"] = "no CLIP model configured"
    return out


def _efficiency_block(model, method, size: int, device, ev: dict, candidates: list[str] | None = None) -> dict:
    """Classifier alone at batch 1 without decoding (paper Table 5); MLLMs: prefill + answer decoding."""
    lat = ev["latency"]
    if method.kind == "mllm":
        return _mllm_efficiency(model.sdtg, method, candidates, size, device, lat)
    else:
        params = efficiency.count_parameters(model.classifier)
        timing = efficiency.latency_of_classifier(model.classifier, size, device, lat["warmup"], lat["repeats"],
                                                  bf16=True)
    return {"params": params, "latency_ms": timing["latency_ms"], "fps": timing["fps"],
            "latency_device": str(device)}
