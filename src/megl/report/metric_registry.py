"""The metrics of a run's metrics.json as declarations: what the report reads (megl.report.collect), how
each is labelled and which table shows it (megl.report.tables), which are the summary's headline
(megl.report.summary). Adding a metric: compute it (megl.metrics, megl.evaluate), then one entry here.

The order of METRICS is the order of the collected frame's columns and of every file written from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Group = Literal["classification", "visual", "text", "efficiency", "count", "extra"]
ReportedBy = Literal["every run", "classifier runs", "text-writing runs", "mllm runs"]


@dataclass(frozen=True)
class Metric:
    key: str
    label: str | None                 # column header and axis label; None: not shown in a table
    group: Group
    required: bool                    # every metrics.json carries the key (null allowed, but not for classification)
    higher_is_better: bool | None     # the direction of "better"; None: a size or a count
    reported_by: ReportedBy           # the runs whose value is a number (the others write null or omit it)
    nested: tuple[str, str] | None = None  # (block, key) inside metrics.json, for a value in a sub-object
    headline: bool = False            # one of the summary's headline metrics (megl.report.summary)

    @property
    def tables(self) -> tuple[str, ...]:
        """The tables whose columns include this metric (TABLE_COLUMNS)."""
        return tuple(t for t, keys in TABLE_COLUMNS.items() if self.key in keys)


def _m(*args, **kwargs) -> Metric:
    return Metric(*args, **kwargs)


METRICS: tuple[Metric, ...] = (
    _m("accuracy", "Accuracy", "classification", True, True, "every run", headline=True),
    _m("precision_macro", "Precision", "classification", True, True, "every run"),
    _m("recall_macro", "Recall", "classification", True, True, "every run"),
    _m("f1_macro", "F1", "classification", True, True, "every run", headline=True),
    _m("miou", "mIoU", "visual", True, True, "classifier runs", headline=True),
    _m("saliency_auprc", "Saliency AUPRC", "visual", True, True, "classifier runs"),
    _m("bleu4", "BLEU-4", "text", True, True, "text-writing runs"),
    _m("meteor", "METEOR", "text", True, True, "text-writing runs"),
    _m("rouge_l", "ROUGE-L", "text", True, True, "text-writing runs"),
    _m("cider", "CIDEr", "text", True, True, "text-writing runs"),
    _m("spice", "SPICE", "text", True, True, "text-writing runs"),
    _m("clipscore", "CLIPScore", "text", True, True, "text-writing runs"),
    _m("params", "Params (M)", "efficiency", True, False, "every run"),
    _m("latency_ms", "Latency (ms)", "efficiency", True, False, "every run"),
    _m("fps", "FPS", "efficiency", True, True, "every run"),
    _m("n_test", "n test", "count", True, None, "every run"),
    _m("miou_all", "mIoU (all)", "visual", False, True, "classifier runs", headline=True),
    _m("saliency_auprc_all", "Saliency AUPRC (all)", "visual", False, True, "classifier runs", headline=True),
    _m("accuracy_closed_norm", None, "extra", False, True, "mllm runs"),
    _m("generate_accuracy", None, "extra", False, True, "mllm runs", nested=("generate", "accuracy")),
    _m("generate_n_parsed", None, "extra", False, None, "mllm runs", nested=("generate", "n_parsed")),
    _m("val_accuracy", None, "extra", False, True, "every run"),
    _m("num_classes", None, "extra", False, None, "every run"),
)
BY_KEY: dict[str, Metric] = {m.key: m for m in METRICS}

# The metric columns of each table, in column order (megl.report.tables).
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "table2": ("accuracy", "precision_macro", "recall_macro", "f1_macro", "miou", "miou_all", "saliency_auprc"),
    "table3": ("clipscore", "bleu4", "meteor", "rouge_l", "spice", "cider"),
    "table4": ("accuracy", "miou", "miou_all"),
    "table5": ("params", "latency_ms", "fps"),
}


def keys(*, group: Group | None = None, required: bool | None = None, headline: bool | None = None) -> tuple[str, ...]:
    """The keys of the metrics that match every given field, in registry order."""
    return tuple(m.key for m in METRICS
                 if (group is None or m.group == group) and (required is None or m.required == required)
                 and (headline is None or m.headline == headline))


def labels() -> dict[str, str]:
    """Column header per metric key (the metrics a table or figure shows)."""
    return {m.key: m.label for m in METRICS if m.label is not None}
