"""Scoring: each run's metrics.json from what its model produced, without the model.

The prediction step (`megl.predict.predict_into`, run by `megl run-cell` and `megl evaluate`) writes, per
run, predictions.jsonl (one record per test sample) and score_inputs.npz: the Grad-CAM and ground-truth
maps the saliency scores read (float32, as the model gave them), the CLIP similarities of the rationales,
and `facts` (JSON): identity, split, num_classes, val_accuracy, the efficiency block (a measurement of the
model on its hardware) and the MLLM closed-set facts that need the tokenizer. Everything else here is a
score (docs/metrics.md), computed by `megl.metrics`, with the settings of the run's own config.yaml.
So an edit to `megl.metrics` re-runs this step only, never a training (docs/workflow.md).

No torch at import: the saliency scores import it only to resize a map (megl.metrics.saliency.resize_to).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from megl.io import write_json
from megl.methods import Method
from megl.metrics import classification
from megl.metrics import saliency as saliency_metrics
from megl.metrics import text as text_metrics
from megl.score_inputs import RunOutputs, read_run_outputs

log = logging.getLogger(__name__)

METRICS = "metrics.json"
GENERATE_PROTOCOL = "generate-and-parse: decode (evaluate.decoding), parse the class after 'the answer is'"


# ---------------------------------------------------------------- scoring
def score_runs(run_dirs: list[Path]) -> dict[Path, dict]:
    """metrics.json of every run (the text scores of all of them in one METEOR/PTB call); returns them."""
    runs = [read_run_outputs(d) for d in run_dirs]
    text = text_scores(runs)
    out = {}
    for run in runs:
        metrics = metrics_of(run, text.get(str(run.run_dir)))
        write_json(run.run_dir / METRICS, metrics)
        log.info("%s: accuracy %.4f, macro F1 %.4f, mIoU %s, mIoU (all maps) %s", run.run_dir, metrics["accuracy"],
                 metrics["f1_macro"], _fmt(metrics.get("miou")), _fmt(metrics.get("miou_all")))
        out[run.run_dir] = metrics
    return out


def text_scores(runs: list[RunOutputs]) -> dict[str, dict]:
    """Text scores per run folder of the runs whose method writes rationales, in one call."""
    hyps = {str(r.run_dir): {rec["id"]: rec["rationale"] for rec in r.records} for r in runs
            if r.method.writes_text and r.records and r.records[0]["rationale"] is not None}
    if not hyps:
        return {}
    first = next(r for r in runs if str(r.run_dir) in hyps)
    refs = {rec["id"]: rec["reference"] for rec in first.records}
    return text_metrics.text_metrics_many(refs, hyps, spice=first.config["evaluate"].get("spice", True))


def metrics_of(run: RunOutputs, text: dict | None) -> dict:
    """The metrics.json of one run (keys and order: docs/metrics.md)."""
    facts, records, method, ev = run.facts, run.records, run.method, run.config["evaluate"]
    num_classes = int(facts["num_classes"])
    metrics = {"run": facts["run"], "n_test": len(records), "split": facts["split"], "num_classes": num_classes}
    if facts["val_accuracy"] is not None:
        metrics["val_accuracy"] = float(facts["val_accuracy"])
    metrics.update(classification_block([r["label"] for r in records], [r["prediction"] for r in records],
                                        num_classes))
    saliency_block = _saliency_block(method, run.maps, ev)
    text_block = _text_block(method, text, run.sims)
    notes = {**saliency_block.pop("notes", {}), **text_block.pop("notes", {})}
    metrics.update(saliency_block)
    metrics.update(text_block)
    metrics["notes"] = notes
    if method.is_mllm:
        _add_mllm_metrics(metrics, records, num_classes, facts["mllm"])
    metrics.update(facts["efficiency"])
    metrics["scorer_versions"] = dict(text_metrics.scorer_versions())
    return metrics


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def classification_block(y_true: list[int], y_pred: list[int], num_classes: int) -> dict:
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


def _add_mllm_metrics(metrics: dict, records: list[dict], num_classes: int, mllm: dict) -> None:
    """The closed-set protocol's name, its length-normalised accuracy and a note when candidates were
    truncated (facts of the prediction step: they need the tokenizer); the `generate` block:
    generate-and-parse scored over all test samples (unparsed = wrong), null when nothing parsed."""
    labels = np.asarray([r["label"] for r in records])
    metrics["classification_protocol"] = mllm["classification_protocol"]
    metrics["n_candidates_truncated"] = mllm["n_candidates_truncated"]
    if mllm.get("closed_set_note"):
        metrics["notes"]["closed_set"] = mllm["closed_set_note"]
    metrics["accuracy_closed_norm"] = (float((labels == np.asarray([r["prediction_closed_norm"] for r in records]))
                                             .mean()) if len(records) else None)
    parsed = [r["prediction_generate"] for r in records]
    n_parsed = sum(1 for p in parsed if p >= 0)
    block = {"protocol": GENERATE_PROTOCOL, "n": len(records), "n_parsed": n_parsed,
             "n_unanswered": len(records) - n_parsed}
    if n_parsed:
        scores = classification_block(labels.tolist(), parsed, num_classes)
        block.update({k: scores[k] for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro")})
    else:
        note = f"no parseable answer in {len(records)} test samples"
        block.update(accuracy=None, precision_macro=None, recall_macro=None, f1_macro=None, note=note)
        metrics["notes"]["generate"] = note
    metrics["generate"] = block


def _saliency_block(method: Method, maps: dict[str, np.ndarray], ev: dict) -> dict:
    if method.is_mllm:
        reason = "MLLM baselines have no classifier saliency map"
        return {"miou": None, "saliency_auprc": None, "miou_all": None, "saliency_auprc_all": None,
                "n_miou": 0, "notes": {k: reason for k in ("miou", "saliency_auprc", "miou_all")}}
    scores = saliency_metrics.saliency_scores(list(maps["pred_maps"]), list(maps["gt_maps"]), ev["miou_threshold"])
    out = {"miou": scores["miou"], "saliency_auprc": scores["auprc"], "saliency_pearson": scores["pearson"],
           "n_miou": scores["n"], "miou_threshold": scores["threshold"]}
    if len(maps["full_pred"]):
        full = saliency_metrics.saliency_scores(list(maps["full_pred"]), list(maps["full_gt"]), ev["miou_threshold"])
        out.update({"miou_all": full["miou"], "saliency_auprc_all": full["auprc"], "n_miou_all": full["n"]})
    else:
        out.update({"miou_all": None, "saliency_auprc_all": None})
    return out


def _text_block(method: Method, scores: dict | None, sims: list[float]) -> dict:
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


# ---------------------------------------------------------------- the one line a finished cell prints
def cell_line(metrics: list[dict]) -> str:
    """`objects × resnet18 × megl: 2 seeds, accuracy 0.831 ± 0.020, mIoU 0.412` (mean ± sample std)."""
    run = metrics[0]["run"]
    acc = np.asarray([m["accuracy"] for m in metrics], dtype=np.float64)
    spread = f" ± {acc.std(ddof=1):.3f}" if len(acc) > 1 else ""
    seeds = f"{len(metrics)} seed{'' if len(metrics) == 1 else 's'}"
    line = f"{run['dataset']} × {run['backbone']} × {run['method']}: {seeds}, accuracy {acc.mean():.3f}{spread}"
    mious = [m["miou"] for m in metrics if m.get("miou") is not None]
    if mious:
        line += f", mIoU {float(np.mean(mious)):.3f}"
    return line


def write_cell_scores(path: Path, line: str, metrics: dict[Path, dict]) -> None:
    """One cell's scores in one file (DVC's score stage output: the run folders are the cell stage's)."""
    write_json(path, {"line": line, "runs": {Path(d).name: m for d, m in metrics.items()}})
