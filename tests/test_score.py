"""Scoring apart from training (megl.score): the prediction step hands over predictions.jsonl and
score_inputs.npz, scoring reads them with the run's own config; the training code never runs a metric,
the scoring code never loads torch; a run is self-describing (its config.yaml, not today's)."""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from megl.codedeps import code_deps
from megl.errors import MEGLError
from megl.evaluate import evaluate_run
from megl.score import cell_line, score_runs
from megl.score_inputs import MAP_KEYS, SCORE_INPUTS, read_run_outputs

TIMING = {"latency_ms", "fps"}


def test_run_cell_code_runs_no_metric_and_score_code_no_model():
    run_cell, score = set(code_deps("run-cell")), set(code_deps("score"))
    assert not [p for p in run_cell if p.startswith("src/megl/metrics/")], sorted(run_cell)
    assert {"src/megl/metrics/saliency.py", "src/megl/metrics/text.py", "src/megl/metrics/classification.py",
            "src/megl/score.py"} <= score
    assert not score & {"src/megl/predict.py", "src/megl/train.py", "src/megl/losses.py", "src/megl/timing.py",
                        "src/megl/cell.py", "src/megl/runs.py"}, sorted(score)
    assert not [p for p in score if p.startswith("src/megl/models/")], sorted(score)
    assert "src/megl/timing.py" in run_cell  # latency is measured on the model, where it runs


def test_the_score_command_starts_without_torch():
    code = ("import sys, megl.cli, megl.score, megl.metrics.saliency, megl.metrics.text, megl.metrics.classification; "
            "megl.cli.build_parser().parse_args(['score', 'x']); print('torch' in sys.modules,"
            " 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"




def _untimed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING}


def test_a_run_is_evaluated_with_its_own_config(evaluated, tiny_data):
    """Today's config names another model (other widths, image size): the run still rebuilds its own."""
    run, metrics, config = evaluated
    changed = copy.deepcopy(config)
    changed["backbones"]["resnet18"]["widths"] = [8, 8, 8, 8]
    changed["backbones"]["resnet18"]["image_size"] = 2 * config["backbones"]["resnet18"]["image_size"]
    changed["evaluate"]["miou_threshold"] = 0.9
    again = evaluate_run(changed, run, tiny_data.root, tiny_data.split, tiny_data.pretrained)
    assert _untimed(again) == _untimed(metrics)
    assert again["params"] == metrics["params"]


def test_score_inputs_hold_exact_float32_maps_and_rescoring_gives_the_same_file(evaluated):
    run, metrics, _ = evaluated
    before = json.loads((run / "metrics.json").read_text())
    with np.load(run / SCORE_INPUTS, allow_pickle=False) as npz:
        assert set(npz.files) == {*MAP_KEYS, "clip_sims", "facts"}
        assert npz["pred_maps"].dtype == np.float32 and len(npz["pred_maps"]) == metrics["n_miou"] > 0
        facts = json.loads(str(npz["facts"]))
    assert facts["run"] == metrics["run"] and facts["efficiency"]["params"] == metrics["params"]
    (run / "metrics.json").unlink()
    again = score_runs([run])[run]
    assert json.loads((run / "metrics.json").read_text()) == before == json.loads(json.dumps(again))


def test_scoring_reads_the_runs_own_evaluate_settings(evaluated, tmp_path):
    """A score setting (evaluate.miou_threshold) is read from the run's config.yaml."""
    import shutil

    run, metrics, _ = evaluated
    copy_dir = tmp_path / "run"
    shutil.copytree(run, copy_dir)
    config = yaml.safe_load((copy_dir / "config.yaml").read_text())
    config["evaluate"]["miou_threshold"] = 0.95
    (copy_dir / "config.yaml").write_text(yaml.safe_dump(config))
    rescored = score_runs([copy_dir])[copy_dir]
    assert rescored["miou_threshold"] == 0.95 and metrics["miou_threshold"] != 0.95
    assert rescored["miou"] != metrics["miou"] and rescored["accuracy"] == metrics["accuracy"]


def test_bad_score_inputs_stop_early_naming_file_record_and_field(evaluated, tmp_path):
    import shutil

    run, _, _ = evaluated
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    lines = (bad / "predictions.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    del record["label"]
    (bad / "predictions.jsonl").write_text("\n".join([lines[0], json.dumps(record), *lines[2:]]) + "\n")
    with pytest.raises(MEGLError, match=r"predictions.jsonl: record 2 has no field 'label'"):
        read_run_outputs(bad)
    shutil.copy(run / "predictions.jsonl", bad / "predictions.jsonl")
    with np.load(run / SCORE_INPUTS, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "clip_sims"}
    np.savez(bad / SCORE_INPUTS, **arrays)
    with pytest.raises(MEGLError, match=r"score_inputs.npz: field 'clip_sims' missing"):
        read_run_outputs(bad)
    (bad / SCORE_INPUTS).unlink()
    with pytest.raises(MEGLError, match=r"score_inputs.npz: missing"):
        score_runs([bad])


def test_cell_line_says_what_the_cell_scored():
    run = {"dataset": "objects", "backbone": "resnet18", "method": "megl", "seed": 0}
    metrics = [{"run": run, "accuracy": 0.8, "miou": 0.4}, {"run": run, "accuracy": 0.9, "miou": 0.5}]
    assert cell_line(metrics) == "objects × resnet18 × megl: 2 seeds, accuracy 0.850 ± 0.071, mIoU 0.450"
    one = cell_line([{"run": run, "accuracy": 0.5, "miou": None}])
    assert one == "objects × resnet18 × megl: 1 seed, accuracy 0.500"
