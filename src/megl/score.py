"""Scoring: each run's metrics.json from what its model produced, without the model.

The prediction step (`megl.predict.predict_into`, run by `megl run-cell` and `megl evaluate`) writes, per
run, predictions.jsonl (one record per test sample) and score_inputs.npz: the Grad-CAM and ground-truth
maps the saliency scores read (float32, as the model gave them), the CLIP similarities of the rationales,
and `facts` (JSON): identity, split, num_classes, val_accuracy, the efficiency block (a measurement of the
model on its hardware) and the MLLM closed-set facts that need the tokenizer. Everything else here is a
score (docs/metrics.md), computed by `megl.metrics`, with the settings of the run's own config.yaml.
So an edit to `megl.metrics` re-runs this step only, never a training (docs/workflow.md).

What metrics.json holds is the metric registry's (megl.metric_registry): its scorers, in order, each
computing one block (megl.scorers), then every metric that carries its own compute function. This module
runs them; it names no metric.

No torch at import: the saliency scores import it only to resize a map (megl.metrics.saliency.resize_to).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from megl import metric_registry
from megl.io import write_json
from megl.score_inputs import RunOutputs, read_run_outputs

log = logging.getLogger(__name__)

METRICS = "metrics.json"


# ---------------------------------------------------------------- scoring
def score_runs(run_dirs: list[Path]) -> dict[Path, dict]:
    """metrics.json of every run (a scorer's `batch`, e.g. the text scores, once for all of them); returns them."""
    runs = [read_run_outputs(d) for d in run_dirs]
    blocks = metric_registry.scoring_blocks()
    shared = {s.name: s.batch(runs) for s in blocks if s.batch is not None}
    out = {}
    for run in runs:
        metrics = metrics_of(run, {name: by_run.get(str(run.run_dir)) for name, by_run in shared.items()}, blocks)
        write_json(run.run_dir / METRICS, metrics)
        log.info("%s: accuracy %.4f, macro F1 %.4f, mIoU %s, mIoU (all maps) %s", run.run_dir, metrics["accuracy"],
                 metrics["f1_macro"], _fmt(metrics.get("miou")), _fmt(metrics.get("miou_all")))
        out[run.run_dir] = metrics
    return out


def metrics_of(run: RunOutputs, shared: dict[str, object] | None = None,
               blocks: tuple[metric_registry.Scorer, ...] | None = None) -> dict:
    """The metrics.json of one run: the blocks of the registry's scorers in order, the notes of all of them
    merged (in scorer order) at the place of `metric_registry.NOTES`. `shared`: scorer name -> what its
    `batch` gave for this run."""
    blocks = metric_registry.scoring_blocks() if blocks is None else blocks
    shared = shared or {}
    computed: dict[str, dict] = {}
    notes: dict = {}
    for scorer in blocks:
        block = dict(scorer.compute(run, shared.get(scorer.name)))
        notes.update(block.pop("notes", None) or {})
        computed[scorer.name] = block
    metrics: dict = {}
    for scorer in blocks:
        if scorer is metric_registry.NOTES:
            metrics["notes"] = notes
        else:
            metrics.update(computed[scorer.name])
    return metrics


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


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
