"""Evaluation of the multimodal-LLM baselines on the tiny stand-in: closed-set headline metrics,
the generate-and-parse block beside them, predictions.jsonl fields, and latency that runs the LM."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import megl.predict as evaluate_mod
from megl.data.annotations import read_dataset
from megl.evaluate import evaluate_run
from megl.methods import MLLM_BACKBONE
from megl.mllm_protocol import mllm_answer, parse_answer
from megl.models.sdtg import SDTG
from megl.train import train_run

torch.set_num_threads(1)

CLASSIFICATION = ("accuracy", "precision_macro", "recall_macro", "f1_macro")


@pytest.fixture(scope="module")
def llava_run(tiny_data, tmp_path_factory):
    config = copy.deepcopy(tiny_data.config)
    run = tmp_path_factory.mktemp("mllm") / "llava_vqa"
    train_run(config, dataset="objects", backbone=MLLM_BACKBONE, method="llava_vqa", seed=0, run_dir=run,
              data_root=tiny_data.root, split_path=tiny_data.split, pretrained_dir=tiny_data.pretrained)
    return run, config


def evaluate(tiny_data, config, run):
    return evaluate_run(config, run, tiny_data.root, tiny_data.split, tiny_data.pretrained)


def predictions(run) -> list[dict]:
    return [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]


def lm_core(sdtg):
    return next(m for m in sdtg.lm.modules() if type(m).__name__ == "LlamaModel")


def test_mllm_metrics_closed_set_generate_block_and_latency(tiny_data, llava_run, monkeypatch):
    run, config = llava_run
    data = read_dataset(tiny_data.root)
    class_names = [data.id_to_class[c] for c in data.class_ids]
    # the timed callable must run the LM: count its forwards inside one call of the timed function
    seen = {}
    real_measure = evaluate_mod.efficiency.measure_latency

    def spy(fn, warmup, repeats, device):
        sdtg = spy.sdtg
        calls = []
        handle = lm_core(sdtg).register_forward_hook(lambda *a: calls.append(1))
        try:
            fn()
        finally:
            handle.remove()
        seen["lm_forwards"] = len(calls)
        return real_measure(fn, warmup, repeats, device)

    real_efficiency = evaluate_mod._mllm_efficiency

    def capture(sdtg, *a, **k):
        spy.sdtg = sdtg
        return real_efficiency(sdtg, *a, **k)

    monkeypatch.setattr(evaluate_mod.efficiency, "measure_latency", spy)
    monkeypatch.setattr(evaluate_mod, "_mllm_efficiency", capture)
    m = evaluate(tiny_data, config, run)

    # headline: closed-set, a real number
    for k in CLASSIFICATION + ("accuracy_closed_norm",):
        assert isinstance(m[k], float) and 0.0 <= m[k] <= 1.0, k
    assert m["classification_protocol"].startswith("closed-set") and "EOS" in m["classification_protocol"]
    recs = predictions(run)
    assert len(recs) == m["n_test"]
    labels = np.array([r["label"] for r in recs])
    assert m["accuracy"] == pytest.approx(np.mean(labels == [r["prediction"] for r in recs]))
    assert m["accuracy_closed_norm"] == pytest.approx(np.mean(labels == [r["prediction_closed_norm"] for r in recs]))
    for r in recs:
        assert {"answer", "prediction_generate", "prediction_closed_norm", "closed_topk"} <= set(r)
        assert r["prediction_generate"] == parse_answer(r["answer"], class_names)
        top = r["closed_topk"]
        assert len(top) == 3 and r["prediction"] == top[0][0]
        assert [t[1] for t in top] == sorted((t[1] for t in top), reverse=True)
        assert all(t[1] < 0 and t[2] < 0 for t in top)  # log-likelihoods

    # generate-and-parse beside it
    g = m["generate"]
    parsed = sum(r["prediction_generate"] >= 0 for r in recs)
    assert g["n"] == m["n_test"] and g["n_parsed"] == parsed and g["n_unanswered"] == m["n_test"] - parsed
    if parsed:
        assert g["accuracy"] == pytest.approx(np.mean(labels == [r["prediction_generate"] for r in recs]))
    else:
        assert g["accuracy"] is None and g["f1_macro"] is None
        assert g["note"] == f"no parseable answer in {m['n_test']} test samples" == m["notes"]["generate"]

    # candidates longer than sdtg.max_rationale_tokens are scored truncated (as trained), and say so
    sdtg = spy.sdtg
    lengths = [len(sdtg.tokenizer(" " + mllm_answer(c), add_special_tokens=False)["input_ids"]) for c in class_names]
    n_cut = sum(n > config["sdtg"]["max_rationale_tokens"] for n in lengths)
    assert m["n_candidates_truncated"] == n_cut
    assert ("closed_set" in m["notes"]) == (n_cut > 0)

    # latency: prefill + decoding of the longest answer's tokens (+ EOS for llava_vqa)
    longest = max(len(s) for s in sdtg.target_ids([mllm_answer(c) for c in class_names], eos=True))
    assert m["latency_new_tokens"] == longest
    assert seen["lm_forwards"] == longest  # 1 prefill + (longest - 1) decoding steps
    assert "prefill" in m["latency_protocol"] and f"{longest} new tokens" in m["latency_protocol"]
    assert m["latency_ms"] > 0 and m["fps"] > 0
    assert json.loads((run / "metrics.json").read_text()) == json.loads(json.dumps(m))


def test_generate_block_parses_and_never_reports_a_fake_zero(tiny_data, llava_run, monkeypatch):
    """generate-and-parse: an answer naming class 0 scores P(label = 0); text naming no class leaves
    the block null with a note, while the closed-set headline does not depend on the generated text."""
    run, config = llava_run
    data = read_dataset(tiny_data.root)
    name0 = data.id_to_class[data.class_ids[0]]
    real_generate = SDTG.generate

    def fixed(text):
        def gen(self, images, *a, **k):
            if k.get("min_new_tokens"):  # the latency call: keep the real LM decoding
                return real_generate(self, images, *a, **k)
            return [text] * images.shape[0]
        return gen

    monkeypatch.setattr(SDTG, "generate", fixed(f"The answer is {name0.replace('_', ' ')}. because"))
    m0 = evaluate(tiny_data, config, run)
    labels = [r["label"] for r in predictions(run)]
    assert all(r["prediction_generate"] == 0 for r in predictions(run))
    assert m0["generate"]["accuracy"] == pytest.approx(sum(lab == 0 for lab in labels) / len(labels))
    assert m0["generate"]["n_parsed"] == len(labels) and m0["generate"]["n_unanswered"] == 0
    assert m0["miou"] is None and m0["bleu4"] is None and m0["clipscore"] is None

    monkeypatch.setattr(SDTG, "generate", fixed("no idea"))
    m = evaluate(tiny_data, config, run)
    g = m["generate"]
    assert g["n_parsed"] == 0 and g["n_unanswered"] == m["n_test"]
    assert all(g[k] is None for k in CLASSIFICATION)
    assert g["note"] == f"no parseable answer in {m['n_test']} test samples"
    assert all(r["prediction_generate"] == -1 for r in predictions(run))
    for k in CLASSIFICATION:  # the closed-set numbers are untouched by what generate wrote
        assert m[k] == m0[k] and isinstance(m[k], float)
