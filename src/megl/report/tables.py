"""Mean ± std over seeds per (dataset, backbone, method), and the paper's Tables 2–5 built from it."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from megl import metric_registry
from megl.io import write_text
from megl.methods import GROUPS, METHODS, MLLM_BACKBONE, methods_in
from megl.report.collect import RUN_KEYS, metric_keys, text_keys
from megl.report.labels import Labels

GROUP_KEYS: list[str] = ["dataset", "backbone", "method"]

# Dataset and backbone display names come from the config (megl.report.labels.labels_from_config)
# and are passed in; without them a key is shown as is, never as one of the paper's names.

# Which methods each table shows, in row order: a report group (megl.methods.GROUPS) stands for its
# methods in registry order, a method's name for itself (the plain classifier, Table 4's floor).
TABLES: dict[str, tuple[str, ...]] = {
    "table2": ("mllm_baseline", "visual_baseline", "proposed"),
    "table3": ("mllm_baseline", "proposed"),
    "table4": ("proposed", "ablation", "baseline"),
    "table5": ("baseline", "proposed", "mllm_baseline"),
}
BACKBONE_ORDER: tuple[str, ...] = (MLLM_BACKBONE, "resnet18", "vit_b_16")


def table_methods(table: str) -> tuple[str, ...]:
    """The methods of a table, read from the registry when called."""
    items = TABLES[table]
    return tuple(dict.fromkeys(m for item in items for m in (methods_in(item) if item in GROUPS else [item])))


def method_order() -> tuple[str, ...]:
    """Row order of every table: group by group (megl.methods.GROUPS), registry order within a group."""
    return tuple(methods_in(*GROUPS))


def metric_label(metric: str) -> str:
    """The column header of a metric key, read from the registry when called (the key when it has none)."""
    return metric_registry.labels().get(metric, metric)


def method_label(method: str, backbone: str | None = None) -> str:
    """The paper's row name for a method (our name when the paper has none); the paper's unguided
    row "-" reads "baseline"."""
    name = METHODS[method].paper_row if method in METHODS else method
    return "baseline" if name == "-" else name


# ---------------------------------------------------------------- number formatting
def fmt_number(x: float, digits: int = 4) -> str:
    """Fixed-point with the paper's style: no leading zero below 1 (.7413, -.0012)."""
    text = f"{x:.{digits}f}"
    if abs(x) < 1:
        text = text.replace("0.", ".", 1)
    return text


def format_cell(mean: float, std: float, n: int, digits: int = 4, scale: float = 1.0) -> str:
    """`.7413 ± .0021 (n=3)`; `.7413 (n=1)` when n = 1 (no std); `missing` when n = 0."""
    if n == 0 or mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "missing"
    m = fmt_number(mean * scale, digits)
    if n == 1 or std is None or math.isnan(std):
        return f"{m} (n={n})"
    return f"{m} ± {fmt_number(std * scale, digits)} (n={n})"


# Per-metric display: (digits, scale); params are shown in millions.
_FORMATS: dict[str, tuple[int, float]] = {"params": (2, 1e-6), "latency_ms": (2, 1.0), "fps": (2, 1.0),
                                          "n_test": (0, 1.0)}


def _reason(notes: Iterable[Any], metric: str) -> str:
    """Why a metric is null, from the runs' `notes` (a JSON dict keyed by metric, or free text)."""
    reasons: list[str] = []
    for raw in notes:
        if raw is None or (isinstance(raw, float) and math.isnan(raw)):
            continue
        try:
            note = json.loads(raw)
        except (TypeError, json.JSONDecodeError):
            note = raw
        if isinstance(note, dict):
            text = note.get(metric)
            if text is None and metric in text_keys():
                text = note.get("text")
        else:
            text = note
        if text and str(text) not in reasons:
            reasons.append(str(text))
    return "; ".join(reasons) if reasons else "not reported"


# ---------------------------------------------------------------- aggregation
def _order_key(series: pd.Series) -> pd.Series:
    order = {"method": method_order(), "backbone": BACKBONE_ORDER}.get(series.name)
    if order is None:
        return series
    return series.map(lambda v: order.index(v) if v in order else len(order))


def summarise(df: pd.DataFrame, expected: pd.DataFrame | None = None,
              metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean, sample std (ddof=1) and n per (dataset, backbone, method) for each metric.

    Groups are the union of `expected` (the matrix) and the runs found, so a run that is missing
    stays visible: n_runs counts the runs found, missing_seeds lists the seeds not found and a
    group with no run has status 'missing' and NaN means (never dropped, never averaged away).
    Columns: dataset, backbone, method, n_expected, n_runs, seeds, missing_seeds, status, then per
    metric `<m>_mean`, `<m>_std`, `<m>_n` (runs with a non-null value) and `<m>_note` (why null).
    """
    metrics = metric_keys() if metrics is None else metrics
    exp = expected if expected is not None else df[list(RUN_KEYS)].drop_duplicates()
    # Dataset order: matrix order first, then anything extra in order of appearance.
    dataset_order = list(dict.fromkeys(list(exp["dataset"]) + list(df["dataset"])))
    groups = pd.concat([exp[GROUP_KEYS], df[GROUP_KEYS]]).drop_duplicates()
    rows: list[dict[str, Any]] = []
    for key in groups.itertuples(index=False):
        gkey = dict(zip(GROUP_KEYS, key))
        sel = (df["dataset"] == gkey["dataset"]) & (df["backbone"] == gkey["backbone"]) & (
            df["method"] == gkey["method"])
        runs = df[sel]
        esel = (exp["dataset"] == gkey["dataset"]) & (exp["backbone"] == gkey["backbone"]) & (
            exp["method"] == gkey["method"])
        expected_seeds = sorted(int(s) for s in exp.loc[esel, "seed"])
        found_seeds = sorted(int(s) for s in runs["seed"])
        missing = [s for s in expected_seeds if s not in found_seeds]
        if not found_seeds:
            status = "missing"
        elif missing:
            status = f"partial ({len(found_seeds)}/{len(expected_seeds)})"
        elif not expected_seeds:
            status = "extra (not in matrix)"
        else:
            status = "complete"
        row: dict[str, Any] = dict(gkey, n_expected=len(expected_seeds), n_runs=len(found_seeds),
                                   seeds=",".join(map(str, found_seeds)),
                                   missing_seeds=",".join(map(str, missing)), status=status)
        for m in metrics:
            values = runs[m].dropna().to_numpy(dtype="float64") if m in runs else np.array([])
            row[f"{m}_mean"] = float(values.mean()) if values.size else float("nan")
            row[f"{m}_std"] = float(values.std(ddof=1)) if values.size > 1 else float("nan")
            row[f"{m}_n"] = int(values.size)
            row[f"{m}_note"] = (_reason(runs["notes"], m) if (len(runs) and values.size == 0)
                                else "")
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["_d"] = out["dataset"].map(dataset_order.index)
    out = out.sort_values(["_d", "backbone", "method"], key=_order_key, kind="stable")
    return out.drop(columns="_d").reset_index(drop=True)


def cell(row: pd.Series, metric: str) -> str:
    """Display text of one summary row's metric: mean ± std (n), `missing`, or `n/a (reason)`."""
    if row["n_runs"] == 0:
        return "missing"
    n = int(row[f"{metric}_n"])
    if n == 0:
        return f"n/a ({row[f'{metric}_note'] or 'not reported'})"
    digits, scale = _FORMATS.get(metric, (4, 1.0))
    std = row[f"{metric}_std"]
    if metric == "params" and n > 1 and std == 0:
        # identical across seeds by construction: a "± 0.00" would only add noise
        return f"{fmt_number(row[f'{metric}_mean'] * scale, digits)} (n={n})"
    return format_cell(row[f"{metric}_mean"], std, n, digits, scale)


def _display(summary: pd.DataFrame, methods: Sequence[str], metrics: Sequence[str],
             labels: Labels | None = None) -> pd.DataFrame:
    labels = labels or Labels()
    sel = summary[summary["method"].isin(methods)]
    rows = []
    for _, row in sel.iterrows():
        out = {"Dataset": labels.dataset(row["dataset"]),
               "Backbone": labels.backbone(row["backbone"]),
               "Method": method_label(row["method"])}
        for m in metrics:
            out[metric_label(m)] = cell(row, m)
        rows.append(out)
    return pd.DataFrame(rows, columns=["Dataset", "Backbone", "Method"] + [metric_label(m) for m in metrics])


# Tables 2 and 4 show both mIoUs, labelled: over the annotated test images only (`miou`, the
# paper's protocol; ~20-25 images per stand-in run) and over every test image's full map
# (`miou_all`, stand-ins only: the generator knows every map; the claims use it).
MIOU_COLUMNS: dict[str, str] = {"miou": "mIoU (annotated images)", "miou_all": "mIoU (every test image)"}


def table2(summary: pd.DataFrame, labels: Labels | None = None) -> pd.DataFrame:
    """Classification and visual explanation: Acc, Prec, Rec, F1, both mIoUs (MIOU_COLUMNS) and the
    threshold-free saliency AUPRC.

    MLLM rows (backbone 'MLLM') come first in each dataset, apart from the classifier rows;
    they have no saliency map, so their mIoU reads n/a.
    """
    metrics = metric_registry.table_columns("table2")
    methods = table_methods("table2")
    out = _display(summary, methods, metrics, labels)
    out = out.rename(columns={metric_label(m): label for m, label in MIOU_COLUMNS.items()})
    rows = summary[summary["method"].isin(methods)]
    mllm = (rows["backbone"] == MLLM_BACKBONE).to_numpy()
    for m in (*MIOU_COLUMNS.values(), "Saliency AUPRC"):
        out.loc[mllm & out[m].str.startswith("n/a"), m] = "n/a (no saliency map)"
    out.insert(4, GENERATE_COLUMN, [generate_accuracy_cell(r) for _, r in rows.iterrows()])
    return out


# ---------------------------------------------------------------- MLLM generate-and-parse column
GENERATE_COLUMN = "Accuracy (generate-and-parse)"


def generate_accuracy_cell(row: pd.Series) -> str:
    """MLLM rows: the paper's generate-and-parse accuracy beside the closed-set `Accuracy` column,
    with how many answers parsed; `no parseable answer (0/N)` when none did; `-` for classifiers."""
    if row["backbone"] != MLLM_BACKBONE:
        return "-"
    if row["n_runs"] == 0:
        return "missing"
    n_reported = int(row.get("generate_n_parsed_n", 0) or 0)
    if n_reported == 0:
        return "n/a (not reported)"
    parsed = int(round(row["generate_n_parsed_mean"] * n_reported))
    total = int(round(row["n_test_mean"] * n_reported))
    if parsed == 0:
        return f"no parseable answer (0/{total})"
    text = cell(row, "generate_accuracy") if int(row.get("generate_accuracy_n", 0) or 0) else "n/a"
    return f"{text}, parsed {parsed}/{total}"


def table3(summary: pd.DataFrame, methods: Sequence[str] | None = None,
           labels: Labels | None = None) -> pd.DataFrame:
    """Textual explanation quality: CLIPScore, BLEU-4, METEOR, ROUGE-L, SPICE, CIDEr.

    A scorer that could not run reads `n/a (reason)`, with the reason from the runs' notes.
    """
    methods = table_methods("table3") if methods is None else methods
    out = _display(summary, methods, metric_registry.table_columns("table3"), labels)
    return out


def _delta_pp(a: float, b: float) -> str:
    if any(isinstance(v, float) and math.isnan(v) for v in (a, b)):
        return "n/a"
    return f"{(a - b) * 100:+.2f} pp"


def table4(summary: pd.DataFrame, methods: Sequence[str] | None = None,
           labels: Labels | None = None) -> pd.DataFrame:
    """Ablation: every MEGL variant and the baseline per dataset × backbone, accuracy and both
    mIoUs (MIOU_COLUMNS), each with the change of its mean from full MEGL in percentage points
    (the paper's column)."""
    labels = labels or Labels()
    columns = metric_registry.table_columns("table4")
    headers = [MIOU_COLUMNS.get(m, metric_label(m)) for m in columns]
    methods = table_methods("table4") if methods is None else methods
    sel = summary[summary["method"].isin(methods) & (summary["backbone"] != MLLM_BACKBONE)]
    rows = []
    for (dataset, backbone), grp in sel.groupby(["dataset", "backbone"], sort=False):
        full = grp[grp["method"] == "megl"]
        for _, row in grp.iterrows():
            out = {"Dataset": labels.dataset(dataset),
                   "Backbone": labels.backbone(backbone),
                   "Method": method_label(row["method"])}
            for m, label in zip(columns, headers):
                out[label] = cell(row, m)
                ref = full[f"{m}_mean"].iloc[0] if len(full) else float("nan")
                out[f"Change in {label}"] = ("-" if row["method"] == "megl" else _delta_pp(row[f"{m}_mean"], ref))
            rows.append(out)
    cols = ["Dataset", "Backbone", "Method"]
    cols += [c for label in headers for c in (label, f"Change in {label}")]
    return pd.DataFrame(rows, columns=cols)


def table5(summary: pd.DataFrame, methods: Sequence[str] | None = None,
           labels: Labels | None = None) -> pd.DataFrame:
    """Efficiency: parameters (millions), latency (ms) and FPS at batch 1."""
    methods = table_methods("table5") if methods is None else methods
    return _display(summary, methods, metric_registry.table_columns("table5"), labels)


# ---------------------------------------------------------------- writers
def latex_escape(text: str) -> str:
    """Escape LaTeX specials in free text (pandas escapes table cells but has no public helper)."""
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
            "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}
    return _math_symbols("".join(repl.get(ch, ch) for ch in text))


def _math_symbols(text: str) -> str:
    """The two non-ASCII symbols our cells use, as LaTeX math (pdflatex has no glyph for them)."""
    return text.replace("±", r"$\pm$").replace("→", r"$\rightarrow$")


def to_markdown(df: pd.DataFrame, caption: str | None = None) -> str:
    body = df.to_markdown(index=False) if len(df) else "(no rows)"
    return (f"{caption}\n\n" if caption else "") + body + "\n"


def to_latex(df: pd.DataFrame, caption: str | None = None, label: str | None = None) -> str:
    """A `table` float holding a plain tabular (needs booktabs and graphicx, nothing else)."""
    body = df.to_latex(index=False, escape=True, column_format="l" * max(len(df.columns), 1))
    body = _math_symbols(body)
    lines = [r"\begin{table}[htbp]", r"\centering", r"\resizebox{\linewidth}{!}{%", body.rstrip(), "}"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, out_stem: str | Path, caption: str | None = None,
                csv: pd.DataFrame | None = None) -> list[Path]:
    """Write `<out_stem>.csv` (`csv`, default `df`), `.md` and `.tex` (`df`) atomically; return the three paths."""
    stem = Path(out_stem)
    paths = [Path(f"{stem}{ext}") for ext in (".csv", ".md", ".tex")]
    write_text(paths[0], (df if csv is None else csv).to_csv(index=False))
    write_text(paths[1], to_markdown(df, caption))
    write_text(paths[2], to_latex(df, caption, label=f"tab:{stem.name}"))
    return paths
