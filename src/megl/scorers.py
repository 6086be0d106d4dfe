"""The scorers of metrics.json: each computes one block of a run's metrics from what its model produced
(`megl.score_inputs.RunOutputs`), with the settings of the run's own config.yaml (key `evaluate`).

`megl.metric_registry.SCORERS` lists them in metrics.json's order and `megl score` (megl.score) runs
them; the computations themselves are `megl.metrics` (docs/metrics.md). A scorer returns a dict: its
keys in order, and optionally `notes` (metric -> why it is null), which scoring merges into the one
`notes` object of metrics.json. A scorer with a `batch` function (the text scores) computes for all runs
of the cell in one call what its per-run function then reads.

No torch at import: the saliency scores import it only to resize a map (megl.metrics.saliency.resize_to).
"""
from __future__ import annotations

import numpy as np

from megl.metrics import classification
from megl.metrics import saliency as saliency_metrics
from megl.metrics import text as text_metrics
from megl.score_inputs import RunOutputs

GENERATE_PROTOCOL = "generate-and-parse: decode (evaluate.decoding), parse the class after 'the answer is'"


def identity(run: RunOutputs, _=None) -> dict:
    """Which run, how many test samples, its split and label mapping; its validation accuracy when known."""
    facts = run.facts
    out = {"run": facts["run"], "n_test": len(run.records), "split": facts["split"],
           "num_classes": int(facts["num_classes"])}
    if facts["val_accuracy"] is not None:
        out["val_accuracy"] = float(facts["val_accuracy"])
    return out


def classification_scores(run: RunOutputs, _=None) -> dict:
    """Accuracy and macro precision / recall / F1 of the test predictions (`classification_block`)."""
    return classification_block([r["label"] for r in run.records], [r["prediction"] for r in run.records],
                                int(run.facts["num_classes"]))


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


def saliency_scores(run: RunOutputs, _=None) -> dict:
    """mIoU, saliency AUPRC and Pearson of the Grad-CAM maps on the annotated test samples, and over every
    sample with a full map (`*_all`); null with a note for the MLLM baselines (no classifier map)."""
    maps, ev = run.maps, run.config["evaluate"]
    if run.method.is_mllm:
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


def text_batch(runs: list[RunOutputs]) -> dict[str, dict]:
    """Text scores per run folder of the runs whose method writes rationales, in one METEOR/PTB call."""
    hyps = {str(r.run_dir): {rec["id"]: rec["rationale"] for rec in r.records} for r in runs
            if r.method.writes_text and r.records and r.records[0]["rationale"] is not None}
    if not hyps:
        return {}
    first = next(r for r in runs if str(r.run_dir) in hyps)
    refs = {rec["id"]: rec["reference"] for rec in first.records}
    return text_metrics.text_metrics_many(refs, hyps, spice=first.config["evaluate"].get("spice", True))


def text_scores(run: RunOutputs, scores: dict | None) -> dict:
    """The run's text scores (from `text_batch`: None for a method that writes no rationale) and its
    CLIPScore."""
    if scores is None:
        reason = f"method {run.method.name} writes no rationale"
        out = text_metrics.null_text_metrics(reason)
        out["n_text"] = out.pop("n")
        return out
    out = {**scores, "notes": dict(scores.get("notes", {}))}
    out["n_text"] = out.pop("n")
    out["clipscore"] = text_metrics.clipscore(run.sims) if run.sims else None
    if not run.sims:
        out["notes"]["clipscore"] = "no CLIP model configured"
    return out


def mllm_scores(run: RunOutputs, _=None) -> dict:
    """MLLM runs only (others: nothing): the closed-set protocol's name, its length-normalised accuracy
    and a note when candidates were truncated (facts of the prediction step: they need the tokenizer);
    the `generate` block: generate-and-parse scored over all test samples (unparsed = wrong), null when
    nothing parsed."""
    if not run.method.is_mllm:
        return {}
    records, num_classes, mllm = run.records, int(run.facts["num_classes"]), run.facts["mllm"]
    labels = np.asarray([r["label"] for r in records])
    out: dict = {"classification_protocol": mllm["classification_protocol"],
                 "n_candidates_truncated": mllm["n_candidates_truncated"], "notes": {}}
    if mllm.get("closed_set_note"):
        out["notes"]["closed_set"] = mllm["closed_set_note"]
    out["accuracy_closed_norm"] = (float((labels == np.asarray([r["prediction_closed_norm"] for r in records]))
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
        out["notes"]["generate"] = note
    out["generate"] = block
    return out


def efficiency(run: RunOutputs, _=None) -> dict:
    """Parameters and latency: measured on the model by the prediction step (megl.timing), copied."""
    return dict(run.facts["efficiency"])


def scorer_versions(_run: RunOutputs, _=None) -> dict:
    """The pycocoevalcap version and the `java -version` line (docs/metrics.md, Text)."""
    return {"scorer_versions": dict(text_metrics.scorer_versions())}
