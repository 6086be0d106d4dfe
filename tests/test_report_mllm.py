"""MLLM rows of Table 2: generate-and-parse accuracy beside the closed-set accuracy, and
`no parseable answer (0/N)` instead of a 0 when nothing parsed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from megl.report.collect import collect_runs, expected_runs, required_keys
from megl.report.tables import GENERATE_COLUMN, summarise, table2


def write_run(root: Path, backbone: str, method: str, seed: int, **values) -> Path:
    record = {k: 0.5 for k in required_keys()}
    record.update(params=11_000_000, latency_ms=8.5, fps=117.6, n_test=40)
    record.update(values)
    record["run"] = {"dataset": "objects", "backbone": backbone, "method": method, "seed": seed}
    path = root / "runs" / "objects" / backbone / method / f"seed{seed}" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def gen(accuracy, n_parsed, n=40):
    return {"accuracy": accuracy, "precision_macro": accuracy, "recall_macro": accuracy, "f1_macro": accuracy,
            "n": n, "n_parsed": n_parsed, "n_unanswered": n - n_parsed}


MATRIX = {"datasets": ["objects"], "backbones": ["resnet18"], "methods": ["megl"],
          "mllm_methods": ["llava_vqa", "finetune_cot"], "seeds": [0, 1]}


@pytest.fixture()
def table(tmp_path):
    paths = [write_run(tmp_path, "resnet18", "megl", s, accuracy=0.7) for s in (0, 1)]
    for s, (acc, parsed) in enumerate(((0.25, 30), (0.35, 36))):
        paths.append(write_run(tmp_path, "mllm", "llava_vqa", s, accuracy=0.6, accuracy_closed_norm=0.55,
                               generate=gen(acc, parsed)))
    for s in (0, 1):  # nothing parsed in either seed: null accuracy with a note, never 0
        paths.append(write_run(tmp_path, "mllm", "finetune_cot", s, accuracy=0.4,
                               generate={**gen(None, 0), "note": "no parseable answer in 40 test samples"}))
    runs = collect_runs(paths)
    return runs, table2(summarise(runs, expected_runs(MATRIX)))


def test_collect_reads_the_optional_mllm_keys(table):
    runs, _ = table
    llava = runs[runs["method"] == "llava_vqa"].sort_values("seed")
    assert llava["generate_accuracy"].tolist() == [0.25, 0.35]
    assert llava["generate_n_parsed"].tolist() == [30, 36]
    assert llava["accuracy_closed_norm"].tolist() == [0.55, 0.55]
    cot = runs[runs["method"] == "finetune_cot"]
    assert cot["generate_accuracy"].isna().all() and (cot["generate_n_parsed"] == 0).all()
    assert runs.loc[runs["method"] == "megl", "generate_accuracy"].isna().all()  # optional: absent is fine


def test_table2_shows_generate_and_parse_beside_closed_set(table):
    _, t2 = table
    cols = list(t2.columns)
    assert cols.index(GENERATE_COLUMN) == cols.index("Accuracy") + 1
    row = lambda method: t2[t2["Method"] == method].iloc[0]  # noqa: E731
    assert row("LLaVA")["Accuracy"] == ".6000 ± .0000 (n=2)"
    assert row("LLaVA")[GENERATE_COLUMN] == ".3000 ± .0707 (n=2), parsed 66/80"
    assert row("LLaVA Fine-Tune-CoT")[GENERATE_COLUMN] == "no parseable answer (0/80)"
    assert row("LLaVA Fine-Tune-CoT")["Accuracy"] == ".4000 ± .0000 (n=2)"
    assert row("MEGL")[GENERATE_COLUMN] == "-"


def test_old_mllm_metrics_without_generate_block(tmp_path):
    p = write_run(tmp_path, "mllm", "llava_vqa", 0, accuracy=0.0)
    t2 = table2(summarise(collect_runs([p])))
    assert t2.loc[0, GENERATE_COLUMN] == "n/a (not reported)"
