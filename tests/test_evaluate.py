"""Evaluation outputs: answer parsing of the MLLM baselines, metrics.json written atomically,
predictions.jsonl and saliency.npz contents."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch

from megl.data.annotations import read_dataset
from megl.data.split import read_split
from megl.evaluate import evaluate_run
from megl.mllm_protocol import parse_answer
from megl.predict import TOPK

torch.set_num_threads(1)

CLASSES = ["red", "red_circle", "blue_square", "circle"]


@pytest.mark.parametrize("answer,expected", [
    ("the answer is red circle.", 1),                 # longest matching class name wins over "red"
    ("The answer is RED_CIRCLE. because it is round", 1),
    ("the answer is red.", 0),
    ("the answer is red square.", 0),                 # "red" is the only name it starts with
    ("hmm, well: the answer is blue   square. because", 2),
    ("circle", 3),                                    # no "the answer is": the whole text is the head
    ("the answer is a red circle.", -1),              # the class must come right after the phrase
    ("the answer is green triangle.", -1),            # names no class
    ("", -1),
    ("the answer is. red circle", -1),                # only the first sentence after the phrase counts
])
def test_parse_answer(answer, expected):
    assert parse_answer(answer, CLASSES) == expected


def test_parse_answer_order_independent():
    assert parse_answer("the answer is red circle.", list(reversed(CLASSES))) == 2




def temp_files(folder: pathlib.Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp" in p.name or p.name.startswith(".")]


def test_metrics_json_written_and_no_temp_files(evaluated):
    run, metrics, _ = evaluated
    assert json.loads((run / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert temp_files(run) == []


def test_metrics_json_survives_a_crash_while_rewriting(evaluated, tiny_data, monkeypatch):
    """A crash in the middle of writing metrics.json leaves the previous file intact and no temp file."""
    run, _, config = evaluated
    before = (run / "metrics.json").read_bytes()
    real_write_text = pathlib.Path.write_text

    def half_then_crash(self, text, *a, **k):
        if ".metrics.json." in self.name:
            real_write_text(self, text[: len(text) // 2], *a, **k)
            raise OSError("disk full (simulated)")
        return real_write_text(self, text, *a, **k)

    monkeypatch.setattr(pathlib.Path, "write_text", half_then_crash)
    with pytest.raises(OSError, match="simulated"):
        evaluate_run(config, run, tiny_data.root, tiny_data.split, tiny_data.pretrained)
    assert (run / "metrics.json").read_bytes() == before
    assert temp_files(run) == []


def test_predictions_jsonl(evaluated, tiny_data):
    run, metrics, _ = evaluated
    lines = (run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    test_ids = read_split(tiny_data.split)["test"]
    assert len(records) == len(test_ids) == metrics["n_test"]
    assert sorted(r["id"] for r in records) == sorted(test_ids)
    data = read_dataset(tiny_data.root)
    for r in records:
        assert set(r) == {"id", "label", "prediction", "topk", "rationale", "reference"}
        sample = data.by_id(r["id"])
        assert r["label"] == data.label_of(sample.class_id)
        assert r["reference"] == list(sample.rationales)
        assert r["rationale"] is None  # the baseline writes no text
        assert len(r["topk"]) == min(TOPK, data.num_classes)
        probs = [p for _, p in r["topk"]]
        assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
        assert r["prediction"] == r["topk"][0][0]
    acc = np.mean([r["label"] == r["prediction"] for r in records])
    assert metrics["accuracy"] == pytest.approx(acc)


def test_saliency_npz(evaluated, tiny_data):
    run, metrics, config = evaluated
    n = min(config["evaluate"]["n_saliency_samples"], metrics["n_test"])
    size = config["backbones"]["resnet18"]["image_size"]
    with np.load(run / "saliency.npz", allow_pickle=False) as z:
        assert set(z.files) == {"ids", "images", "gt", "saliency"}
        ids, images, gt, sal = z["ids"], z["images"], z["gt"], z["saliency"]
    assert ids.shape == (n,)
    assert images.shape == (n, 3, size, size)
    assert gt.shape == (n, size, size)
    assert sal.shape == (n, size // 8, size // 8)  # ResNet18 (small stem) CAM grid: stride 8
    assert set(ids.tolist()) <= set(read_split(tiny_data.split)["test"])
    for arr in (images, gt, sal):
        assert np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1
