"""What the prediction step hands to scoring, per run folder, and how scoring reads it back.

- predictions.jsonl: one record per test sample (id, label, prediction, rationale, reference, ...);
- score_inputs.npz (np.savez, read with allow_pickle=False): `pred_maps`/`gt_maps` (the Grad-CAM maps
  and human masks of the annotated samples), `full_pred`/`full_gt` (every sample with a full mask),
  float32 (N, H, W) exactly as the model gave them; `clip_sims` (float64) the CLIP similarity of each
  written rationale; `facts`, a JSON string: run identity, split, num_classes, val_accuracy,
  efficiency (params, latency: a measurement of the model on its hardware), mllm (closed-set facts
  that need the tokenizer, or null);
- config.yaml: the run's own config (megl.rundir.write_run_record); scoring reads its `evaluate` settings.

numpy, json and yaml only: both the prediction step (torch) and the scoring step (no torch) import it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from megl.errors import MEGLError
from megl.io import atomic_path
from megl.methods import Method, get_method

PREDICTIONS = "predictions.jsonl"
SCORE_INPUTS = "score_inputs.npz"
RUN_CONFIG = "config.yaml"
MAP_KEYS = ("pred_maps", "gt_maps", "full_pred", "full_gt")
FACT_KEYS = ("run", "split", "num_classes", "val_accuracy", "efficiency", "mllm")


def write_score_inputs(run_dir: Path, maps: dict[str, list], sims: list[float], facts: dict) -> None:
    """score_inputs.npz of one run, atomically: the maps (N, H, W) per MAP_KEYS as given (float32), the CLIP
    similarities (float64: Python floats, exact) and `facts` as a JSON string."""
    missing = [k for k in FACT_KEYS if k not in facts]
    if missing:
        raise MEGLError(f"{run_dir / SCORE_INPUTS}: facts lack {missing}")
    arrays = {k: np.stack(maps[k]) if maps[k] else np.zeros((0, 0, 0), np.float32) for k in MAP_KEYS}  # no cast: exact
    with atomic_path(Path(run_dir) / SCORE_INPUTS, suffix=".npz") as tmp:
        np.savez(tmp, **arrays, clip_sims=np.asarray(sims, dtype=np.float64),
                 facts=np.array(json.dumps(facts, sort_keys=True)))


@dataclass
class RunOutputs:
    """What scoring reads of one run."""
    run_dir: Path
    facts: dict
    records: list[dict]
    maps: dict[str, np.ndarray]
    sims: list[float]
    config: dict

    @property
    def method(self) -> Method:
        return get_method(self.facts["run"]["method"])


def read_run_outputs(run_dir: Path) -> RunOutputs:
    """The run's predictions, score inputs and own config; a missing or malformed one stops here."""
    run_dir = Path(run_dir)
    for name in (PREDICTIONS, SCORE_INPUTS, RUN_CONFIG):
        if not (run_dir / name).is_file():
            raise MEGLError(f"{run_dir / name}: missing; predict the run first (megl run-cell or megl evaluate)")
    path = run_dir / SCORE_INPUTS
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise MEGLError(f"{path}: unreadable ({exc}); predict the run again") from None
    for key in (*MAP_KEYS, "clip_sims", "facts"):
        if key not in arrays:
            raise MEGLError(f"{path}: field {key!r} missing; predict the run again")
    try:
        facts = json.loads(str(arrays["facts"]))
    except json.JSONDecodeError as exc:
        raise MEGLError(f"{path}: field 'facts' is not JSON ({exc.msg}); predict the run again") from None
    missing = [k for k in FACT_KEYS if k not in facts]
    if missing:
        raise MEGLError(f"{path}: field 'facts' lacks {missing}; predict the run again")
    records = []
    with open(run_dir / PREDICTIONS, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MEGLError(f"{run_dir / PREDICTIONS}: record {n} is not JSON ({exc.msg})") from None
            for field in ("id", "label", "prediction", "rationale", "reference"):
                if field not in rec:
                    raise MEGLError(f"{run_dir / PREDICTIONS}: record {n} has no field {field!r}")
            records.append(rec)
    config = yaml.safe_load((run_dir / RUN_CONFIG).read_text(encoding="utf-8"))
    if not isinstance(config, dict) or "evaluate" not in config:
        raise MEGLError(f"{run_dir / RUN_CONFIG}: no 'evaluate' section; the run's config snapshot is damaged")
    return RunOutputs(run_dir, facts, records, {k: arrays[k] for k in MAP_KEYS},
                      [float(x) for x in arrays["clip_sims"]], config)


