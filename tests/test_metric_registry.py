"""The metric registry (megl.metric_registry) drives scoring and the report: `megl score` writes its
scorers' blocks in order and every metric with its own compute function; collect's keys, the tables'
columns and labels and the summary's headline metrics are read from it when they run. Adding a metric is
one entry (test_one_registry_entry_adds_a_metric_to_scoring_collect_and_a_table)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from megl import metric_registry as reg
from megl.metrics import text as text_metrics
from megl.report.claims import SALIENCY, claim_definitions
from megl.report.collect import collect_runs, metric_keys, mllm_absent_ok, required_keys, text_keys
from megl.report.tables import metric_label, summarise, table3, table5
from megl.score import metrics_of, score_runs
from megl.score_inputs import read_run_outputs


def test_every_table_column_is_a_labelled_metric_and_knows_its_tables():
    by_key = reg.by_key()
    for table, columns in reg.TABLE_COLUMNS.items():
        assert reg.table_columns(table) == columns  # no metric adds itself to a paper table today
        for key in columns:
            assert by_key[key].label, (table, key)
            assert table in by_key[key].tables
    assert by_key["accuracy"].tables == ("table2", "table4")
    assert by_key["val_accuracy"].tables == ()


def test_the_report_reads_the_registry():
    assert required_keys() == reg.keys(required=True) and "n_test" in required_keys()
    assert metric_keys() == reg.keys(required=True) + reg.keys(required=False)
    assert mllm_absent_ok() == ("miou", "saliency_auprc")  # the classifier-only keys every metrics.json names


def test_the_text_columns_are_the_scorers_keys_and_clipscore():
    """metrics.text (the COCO scorers) and the report name the same text metrics."""
    assert set(text_keys()) == {*text_metrics.TEXT_KEYS, "clipscore"}
    assert set(reg.TABLE_COLUMNS["table3"]) == set(text_keys())


def test_every_claim_compares_metrics_where_higher_is_better():
    by_key = reg.by_key()
    for cid, (_, comparisons) in claim_definitions().items():
        for _, _, metric in comparisons:
            for key in {metric, "miou_all"} if metric == SALIENCY else {metric}:
                assert by_key[key].higher_is_better is True, (cid, key)


@pytest.mark.parametrize("table, build", [("table3", table3), ("table5", table5)])
def test_a_tables_columns_are_its_registry_columns(tmp_path, table, build):
    record = {k: 0.5 for k in required_keys()} | {"run": {"dataset": "objects", "backbone": "resnet18",
                                                         "method": "megl", "seed": 0}}
    path = tmp_path / "runs" / "objects" / "resnet18" / "megl" / "seed0" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    out = build(summarise(collect_runs([path])))
    assert list(out.columns[3:]) == [reg.by_key()[k].label for k in reg.table_columns(table)]


def test_every_metric_names_one_scorer_of_the_registry_or_its_own_function():
    assert len({s.name for s in reg.SCORERS}) == len(reg.SCORERS) and reg.NOTES in reg.SCORERS
    for m in reg.METRICS:
        assert (m.scorer in reg.SCORERS) != (m.compute is not None), m.key
    with pytest.raises(ValueError, match="one"):
        reg.Metric("x", None, "extra", False, True, "every run")
    with pytest.raises(ValueError, match="no table"):
        reg.Metric("x", None, "extra", False, True, "every run", compute=len, in_tables=("table9",))


# ---------------------------------------------------------------- on a real run (conftest: evaluated)
@pytest.fixture
def run_copy(evaluated, tmp_path):
    """A copy of the tiny trained + predicted baseline run (rescoring it leaves the module's run alone)."""
    run, metrics, _ = evaluated
    copy = tmp_path / "baseline"
    shutil.copytree(run, copy)
    return copy, metrics


def _present(metrics: dict, m: reg.Metric) -> bool:
    if m.nested:
        return isinstance(metrics.get(m.nested[0]), dict) and m.nested[1] in metrics[m.nested[0]]
    return m.key in metrics


def test_metrics_json_is_the_registry_scorers_blocks_in_order_and_holds_every_metric(run_copy):
    run_dir, _ = run_copy
    metrics = score_runs([run_dir])[run_dir]
    run = read_run_outputs(run_dir)
    shared = {s.name: s.batch([run]).get(str(run_dir)) for s in reg.SCORERS if s.batch}
    blocks = {s.name: s.compute(run, shared.get(s.name)) for s in reg.SCORERS}
    expected = [k for s in reg.SCORERS
                for k in (["notes"] if s is reg.NOTES else [k for k in blocks[s.name] if k != "notes"])]
    assert list(metrics) == list(dict.fromkeys(expected))  # a key two blocks write keeps its first place
    assert metrics["notes"] == {k: v for b in blocks.values() for k, v in b.get("notes", {}).items()}
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics_of(run, shared) == metrics
    for m in reg.METRICS:  # a baseline classifier run: every metric but the MLLM runs' ones, each from its block
        if m.reported_by == "mllm runs":
            assert not _present(metrics, m), m.key
            continue
        assert _present(metrics, m), m.key
        assert m.key in blocks[m.scorer.name], (m.key, m.scorer.name)


def _balanced_accuracy(run) -> float | None:
    """Mean over the classes present in the test set of their recall."""
    labels = np.asarray([r["label"] for r in run.records])
    pred = np.asarray([r["prediction"] for r in run.records])
    recalls = [float((pred[labels == c] == c).mean()) for c in np.unique(labels)]
    return float(np.mean(recalls)) if recalls else None


def test_one_registry_entry_adds_a_metric_to_scoring_collect_and_a_table(run_copy, tmp_path, monkeypatch):
    """The whole of adding a metric: one Metric with its compute function. It is then in metrics.json, in
    collect's frame and in the table it names; a metrics.json scored before it still reads (null)."""
    run_dir, _ = run_copy
    old = json.loads((run_dir / "metrics.json").read_text())
    before = tmp_path / "before.json"  # the same scores under another seed: a metrics.json of before the metric
    before.write_text(json.dumps({**old, "run": {**old["run"], "seed": old["run"]["seed"] + 1}}))
    added = (reg.Metric("balanced_accuracy", "Balanced accuracy", "classification", False, True, "every run",
                        compute=_balanced_accuracy, in_tables=("table5",)),
             reg.Metric("not_here", None, "extra", False, True, "every run",
                        compute=lambda run: reg.Unavailable("nothing to compute it from")))
    monkeypatch.setattr(reg, "METRICS", reg.METRICS + added)

    metrics = score_runs([run_dir])[run_dir]
    value = _balanced_accuracy(read_run_outputs(run_dir))
    assert value is not None and metrics["balanced_accuracy"] == value
    assert list(metrics)[-2:] == ["balanced_accuracy", "not_here"]  # after the scorers' blocks, in registry order
    assert metrics["not_here"] is None and metrics["notes"]["not_here"] == "nothing to compute it from"
    assert {k: v for k, v in metrics.items() if k not in ("balanced_accuracy", "not_here", "notes")} == \
        {k: v for k, v in old.items() if k != "notes"}

    frame = collect_runs([run_dir / "metrics.json", before])
    assert "balanced_accuracy" in frame.columns and "not_here" in frame.columns
    assert frame["balanced_accuracy"].iloc[0] == pytest.approx(value)
    assert frame["balanced_accuracy"].isna().iloc[1]  # scored before the metric existed: null, not an error

    out = table5(summarise(frame.iloc[:1]))
    assert list(out.columns[3:]) == ["Params (M)", "Latency (ms)", "FPS", "Balanced accuracy"]
    assert metric_label("balanced_accuracy") == "Balanced accuracy"  # figures and paper_vs_ours name it too
    monkeypatch.undo()
    assert "balanced_accuracy" not in score_runs([run_dir])[run_dir]  # the registry, not a leftover, decides
    assert metric_label("balanced_accuracy") == "balanced_accuracy"
