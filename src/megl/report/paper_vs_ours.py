"""Published value beside our mean ± std, for every cell of Tables 2–5 that has a counterpart."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import yaml

from megl.errors import MEGLError
from megl.report.labels import PAPER_DATASETS, Labels
from megl.report.tables import METRIC_LABELS, cell, fmt_number, method_label

STANDIN_CAPTION = "stand-in data: compare the shape (ordering, gaps), not the values"

PUBLISHED_COLUMNS = ["table", "page", "dataset", "backbone", "method", "metric", "value"]


def load_published(path: str | Path) -> pd.DataFrame:
    """config/published.yaml as a long frame: table, page, dataset (paper name or None), backbone,
    method, metric, value (NaN where the paper prints a dash)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise MEGLError(f"{path}: cannot read published numbers ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("tables"), dict):
        raise MEGLError(f"{path}: missing key 'tables'")
    rows: list[dict[str, Any]] = []
    for table, spec in doc["tables"].items():
        for i, entry in enumerate(spec.get("rows") or []):
            for key in ("dataset", "backbone", "method", "values"):
                if key not in entry:
                    raise MEGLError(f"{path}: tables.{table}.rows[{i}]: missing key '{key}'")
            for metric, value in entry["values"].items():
                rows.append({"table": table, "page": spec.get("page"), "dataset": entry["dataset"],
                             "backbone": entry["backbone"], "method": entry["method"],
                             "metric": metric, "value": float("nan") if value is None else float(value)})
    return pd.DataFrame(rows, columns=PUBLISHED_COLUMNS)


def _fmt_published(metric: str, value: float) -> str:
    if math.isnan(value):
        return "-"
    if metric == "params":
        return f"{value / 1e6:.0f}"
    if metric in ("latency_ms", "fps", "speedup"):
        return f"{value:.2f}"
    return fmt_number(value, 4)


LOWER_IS_BETTER = {"latency_ms", "params"}


def paper_vs_ours(summary: pd.DataFrame, published: pd.DataFrame,
                  standin: Mapping[str, bool], labels: Labels | None = None) -> pd.DataFrame:
    """One row per published cell that has a counterpart among our summary rows.

    `standin` maps our dataset key to whether its config source is the stand-in generator; our
    dataset key is matched to the paper's dataset by megl.report.labels.PAPER_DATASETS (objects →
    Object-ME, actions → Action-ME), and the Dataset and Backbone columns name OUR data and model
    (`labels`, from the config: "objects (stand-in)", "ViT-tiny"); the Published column is the
    paper's number on its own data and model.
    Columns: Table, Page, Dataset, Backbone, Method, Metric, Published, Ours, Data, and the ranks
    of the method within its (table, dataset, backbone, metric) group, published and ours, so the
    ordering can be compared even where values cannot. A published row with dataset None
    (Table 5) is matched to every dataset of ours.
    """
    labels = labels or Labels()
    rows: list[dict[str, Any]] = []
    for ours_ds, paper_ds in PAPER_DATASETS.items():
        pub = published[(published["dataset"] == paper_ds) | published["dataset"].isna()]
        for p in pub.itertuples(index=False):
            sel = summary[(summary["dataset"] == ours_ds) & (summary["backbone"] == p.backbone)
                          & (summary["method"] == p.method)]
            metric_in_ours = f"{p.metric}_mean" in summary.columns
            if sel.empty or not metric_in_ours:
                continue
            row = sel.iloc[0]
            rows.append({
                "Table": p.table.replace("table", ""), "Page": p.page,
                "Dataset": labels.dataset(ours_ds),
                "Backbone": labels.backbone(p.backbone),
                "Method": method_label(p.method), "Metric": METRIC_LABELS.get(p.metric, p.metric),
                "Published": _fmt_published(p.metric, p.value),
                "Ours": cell(row, p.metric),
                "Data": "stand-in" if standin.get(ours_ds, False) else "official",
                "_pub": p.value, "_ours": row[f"{p.metric}_mean"], "_metric": p.metric,
            })
    cols = ["Table", "Page", "Dataset", "Backbone", "Method", "Metric", "Published", "Ours", "Data",
            "Rank (published)", "Rank (ours)"]
    if not rows:
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame(rows)
    # Rank within (table, dataset, backbone, metric); 1 = best. Backbone stays in the group so
    # Table 4's ranks never mix models.
    grp = [out["Table"], out["Dataset"], out["Backbone"], out["Metric"]]
    sign = out["_metric"].map(lambda m: -1.0 if m in LOWER_IS_BETTER else 1.0)
    for src, dst in (("_pub", "Rank (published)"), ("_ours", "Rank (ours)")):
        ranks = (out[src] * sign).groupby(grp).rank(ascending=False, method="min")
        out[dst] = ranks.map(lambda r: "" if pd.isna(r) else str(int(r)))
    return out[cols].reset_index(drop=True)


def caption(standin: Mapping[str, bool], labels: Labels | None = None) -> str:
    """Caption line; names the stand-in datasets and says to compare shape, not values."""
    labels = labels or Labels()
    base = ("Published (arXiv 2411.13053v1, on the paper's data and models) beside ours (mean ± sample "
            "std over seeds, n runs; Dataset and Backbone name our data and model).")
    fake = [labels.dataset(k) for k, v in standin.items() if v]
    if fake:
        return f"{base} {STANDIN_CAPTION} [{', '.join(fake)}]."
    return base
