"""The metric registry (megl.report.metric_registry) is what the report reads: collect's keys, the
tables' columns and labels, the summary's headline metrics; it agrees with the scorers and the claims."""
from __future__ import annotations

import json

import pytest

from megl.metrics import text as text_metrics
from megl.report import metric_registry as reg
from megl.report.claims import SALIENCY, claim_definitions
from megl.report.collect import MLLM_ABSENT_OK, REQUIRED_KEYS, TEXT_KEYS, collect_runs
from megl.report.summary import HEADLINE_METRICS
from megl.report.tables import summarise, table3, table5


def test_every_table_column_is_a_labelled_metric_and_knows_its_tables():
    for table, columns in reg.TABLE_COLUMNS.items():
        for key in columns:
            assert reg.BY_KEY[key].label, (table, key)
            assert table in reg.BY_KEY[key].tables
    assert reg.BY_KEY["accuracy"].tables == ("table2", "table4")
    assert reg.BY_KEY["val_accuracy"].tables == ()


def test_the_report_reads_the_registry():
    assert REQUIRED_KEYS == reg.keys(required=True) and "n_test" in REQUIRED_KEYS
    assert MLLM_ABSENT_OK == ("miou", "saliency_auprc")  # the classifier-only keys every metrics.json names
    assert HEADLINE_METRICS == reg.keys(headline=True)


def test_the_text_columns_are_the_scorers_keys_and_clipscore():
    """metrics.text (the COCO scorers) and the report name the same text metrics."""
    assert set(TEXT_KEYS) == {*text_metrics.TEXT_KEYS, "clipscore"}
    assert set(reg.TABLE_COLUMNS["table3"]) == set(TEXT_KEYS)


def test_every_claim_compares_metrics_where_higher_is_better():
    for cid, (_, comparisons) in claim_definitions().items():
        for _, _, metric in comparisons:
            for key in {metric, "miou_all"} if metric == SALIENCY else {metric}:
                assert reg.BY_KEY[key].higher_is_better is True, (cid, key)


@pytest.mark.parametrize("table, build", [("table3", table3), ("table5", table5)])
def test_a_tables_columns_are_its_registry_columns(tmp_path, table, build):
    record = {k: 0.5 for k in REQUIRED_KEYS} | {"run": {"dataset": "objects", "backbone": "resnet18",
                                                         "method": "megl", "seed": 0}}
    path = tmp_path / "runs" / "objects" / "resnet18" / "megl" / "seed0" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    out = build(summarise(collect_runs([path])))
    assert list(out.columns[3:]) == [reg.BY_KEY[k].label for k in reg.TABLE_COLUMNS[table]]
