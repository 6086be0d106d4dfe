"""`megl evaluate`: predict with one trained run, then score it, the same two steps the workflow runs
per cell (`megl run-cell` predicts, `megl score` scores). The run is self-describing: its model and
settings come from its own config.yaml, not from today's config."""
from __future__ import annotations

from pathlib import Path

from megl.predict import predict_run
from megl.score import score_runs


def evaluate_run(config: dict, run_dir: Path, data_root: Path, split_path: Path,
                 pretrained_dir: Path | None = None, backbone_weights: Path | None = None) -> dict:
    """Predict (megl.predict.predict_run) and score (megl.score.score_runs) the run in `run_dir`;
    return its metrics (also written to run_dir/metrics.json). `config` (today's) gives the device only."""
    predict_run(config, run_dir, data_root, split_path, pretrained_dir, backbone_weights)
    return score_runs([Path(run_dir)])[Path(run_dir)]
