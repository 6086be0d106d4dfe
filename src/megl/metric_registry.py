"""The metrics of metrics.json, declared once: how `megl score` computes each and how the report reads it.

- Scoring (megl.score): `SCORERS` are the blocks of metrics.json in order, each computed by one function
  of megl.scorers in one pass (the saliency scorer gives mIoU, AUPRC, Pearson and n together; the text
  scorer scores all runs of a cell in one METEOR/PTB call, its `batch`). A `Metric` names the block that
  writes it (`scorer`), or carries its own function (`compute`: RunOutputs -> a number, None, or
  `Unavailable(reason)`): such a metric is a block of its own, written after SCORERS in METRICS order.
- The report: megl.report.collect reads every metric into its frame (a `required` key must be in every
  metrics.json; an optional one reads null where absent), megl.report.tables shows it in the tables
  that list it (`TABLE_COLUMNS`, or the metric's own `in_tables`), megl.report.summary aggregates the
  `headline` ones.

Adding a metric is one `Metric(...)` entry here with its compute function (which may live in
megl.metrics): docs/architecture.md. Declare it `required=False`: every metrics.json scored before it
then still reads (the key null), where a required key would make collect refuse them all.

Every reader looks METRICS up when it runs (never a copy made at import), so the registry as it is
then is what is scored and reported. The order of METRICS is the order of the collected frame's columns
(required keys first) and of every file written from it. No torch, no pandas at import (megl score).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from megl import scorers
from megl.score_inputs import RunOutputs

Group = Literal["classification", "visual", "text", "efficiency", "count", "extra"]
ReportedBy = Literal["every run", "classifier runs", "text-writing runs", "mllm runs"]


@dataclass(frozen=True)
class Scorer:
    """One block of metrics.json computed by one function: `compute(run, shared)` returns the block's keys
    in order (and optionally `notes`: key -> why null). `batch(runs)`, when given, runs once for all runs
    of a cell and returns {str(run_dir): shared}; without it `shared` is None."""
    name: str
    compute: Callable[[RunOutputs, Any], dict]
    batch: Callable[[list[RunOutputs]], dict[str, Any]] | None = None


# metrics.json's blocks in order. NOTES is where the notes of every scorer go, merged in scorer order.
IDENTITY = Scorer("identity", scorers.identity)
CLASSIFICATION = Scorer("classification", scorers.classification_scores)
SALIENCY = Scorer("saliency", scorers.saliency_scores)
TEXT = Scorer("text", scorers.text_scores, batch=scorers.text_batch)
NOTES = Scorer("notes", lambda run, shared: {})
MLLM = Scorer("mllm", scorers.mllm_scores)
EFFICIENCY = Scorer("efficiency", scorers.efficiency)
SCORER_VERSIONS = Scorer("scorer_versions", scorers.scorer_versions)
SCORERS: tuple[Scorer, ...] = (IDENTITY, CLASSIFICATION, SALIENCY, TEXT, NOTES, MLLM, EFFICIENCY, SCORER_VERSIONS)


@dataclass(frozen=True)
class Unavailable:
    """What a metric's `compute` returns when it cannot compute: the key is null, the reason in `notes`."""
    reason: str


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
    scorer: Scorer | None = None      # the block of SCORERS that writes it ...
    compute: Callable[[RunOutputs], Any] | None = None  # ... or its own function (a block of one key)
    in_tables: tuple[str, ...] = ()   # tables that show it as an extra last column (besides TABLE_COLUMNS)

    def __post_init__(self) -> None:
        if (self.scorer is None) == (self.compute is None):
            raise ValueError(f"metric {self.key!r}: name its block (scorer=) or give its function (compute=), one")
        if self.compute is not None and self.nested:
            raise ValueError(f"metric {self.key!r}: a compute function writes a top-level key, not {self.nested}")
        unknown = [t for t in self.in_tables if t not in TABLE_COLUMNS]
        if unknown:
            raise ValueError(f"metric {self.key!r}: no table {unknown}; tables: {sorted(TABLE_COLUMNS)}")

    @property
    def tables(self) -> tuple[str, ...]:
        """The tables whose columns include this metric (`table_columns`)."""
        return tuple(t for t in TABLE_COLUMNS if self.key in table_columns(t))

    def as_scorer(self) -> Scorer:
        """The block of one key that a metric with its own `compute` is."""
        return Scorer(self.key, lambda run, _shared: _own_block(self.key, self.compute(run)))


def _own_block(key: str, value: Any) -> dict:
    if isinstance(value, Unavailable):
        return {key: None, "notes": {key: value.reason}}
    return {key: value}


# The metric columns of the paper's tables, in column order (megl.report.tables); a metric's `in_tables`
# adds it after these.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "table2": ("accuracy", "precision_macro", "recall_macro", "f1_macro", "miou", "miou_all", "saliency_auprc"),
    "table3": ("clipscore", "bleu4", "meteor", "rouge_l", "spice", "cider"),
    "table4": ("accuracy", "miou", "miou_all"),
    "table5": ("params", "latency_ms", "fps"),
}


_m = Metric
_CL, _SA, _TX, _EF, _ID, _ML = CLASSIFICATION, SALIENCY, TEXT, EFFICIENCY, IDENTITY, MLLM
METRICS: tuple[Metric, ...] = (
    _m("accuracy", "Accuracy", "classification", True, True, "every run", headline=True, scorer=_CL),
    _m("precision_macro", "Precision", "classification", True, True, "every run", scorer=_CL),
    _m("recall_macro", "Recall", "classification", True, True, "every run", scorer=_CL),
    _m("f1_macro", "F1", "classification", True, True, "every run", headline=True, scorer=_CL),
    _m("miou", "mIoU", "visual", True, True, "classifier runs", headline=True, scorer=_SA),
    _m("saliency_auprc", "Saliency AUPRC", "visual", True, True, "classifier runs", scorer=_SA),
    _m("bleu4", "BLEU-4", "text", True, True, "text-writing runs", scorer=_TX),
    _m("meteor", "METEOR", "text", True, True, "text-writing runs", scorer=_TX),
    _m("rouge_l", "ROUGE-L", "text", True, True, "text-writing runs", scorer=_TX),
    _m("cider", "CIDEr", "text", True, True, "text-writing runs", scorer=_TX),
    _m("spice", "SPICE", "text", True, True, "text-writing runs", scorer=_TX),
    _m("clipscore", "CLIPScore", "text", True, True, "text-writing runs", scorer=_TX),
    _m("params", "Params (M)", "efficiency", True, False, "every run", scorer=_EF),
    _m("latency_ms", "Latency (ms)", "efficiency", True, False, "every run", scorer=_EF),
    _m("fps", "FPS", "efficiency", True, True, "every run", scorer=_EF),
    _m("n_test", "n test", "count", True, None, "every run", scorer=_ID),
    _m("miou_all", "mIoU (all)", "visual", False, True, "classifier runs", headline=True, scorer=_SA),
    _m("saliency_auprc_all", "Saliency AUPRC (all)", "visual", False, True, "classifier runs", headline=True,
       scorer=_SA),
    _m("accuracy_closed_norm", None, "extra", False, True, "mllm runs", scorer=_ML),
    _m("generate_accuracy", None, "extra", False, True, "mllm runs", nested=("generate", "accuracy"), scorer=_ML),
    _m("generate_n_parsed", None, "extra", False, None, "mllm runs", nested=("generate", "n_parsed"), scorer=_ML),
    _m("val_accuracy", None, "extra", False, True, "every run", scorer=_ID),
    _m("num_classes", None, "extra", False, None, "every run", scorer=_ID),
)


def by_key() -> dict[str, Metric]:
    """Each metric by its key."""
    return {m.key: m for m in METRICS}


def scoring_blocks() -> tuple[Scorer, ...]:
    """What `megl score` runs, in metrics.json's order: SCORERS, then each metric with its own `compute`
    (METRICS order)."""
    return SCORERS + tuple(m.as_scorer() for m in METRICS if m.compute is not None)


def table_columns(table: str) -> tuple[str, ...]:
    """The metric columns of `table`: TABLE_COLUMNS, then the metrics whose `in_tables` names it."""
    base = TABLE_COLUMNS[table]
    return base + tuple(m.key for m in METRICS if table in m.in_tables and m.key not in base)


def keys(*, group: Group | None = None, required: bool | None = None, headline: bool | None = None) -> tuple[str, ...]:
    """The keys of the metrics that match every given field, in registry order."""
    return tuple(m.key for m in METRICS
                 if (group is None or m.group == group) and (required is None or m.required == required)
                 and (headline is None or m.headline == headline))


def labels() -> dict[str, str]:
    """Column header per metric key (the metrics a table or figure shows)."""
    return {m.key: m.label for m in METRICS if m.label is not None}
