"""Headline metrics aggregated over seeds (the files DVC declares as metrics), and a cell-by-cell
comparison of two such summaries (a reference run of the workflow against a new one), the small plot
CSVs (loss per step, accuracy and mIoU per method), and the short headline files DVC shows as metrics."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from megl import metric_registry
from megl.errors import MEGLError
from megl.io import atomic_dir, write_json, write_text
from megl.matrix import Run, cell_methods, enumerate_runs, matrix_methods
from megl.methods import MLLM_BACKBONE
from megl.report.collect import collect_runs, expected_runs, read_train_log
from megl.report.tables import fmt_number, to_markdown

CELL_KEYS: list[str] = ["dataset", "backbone", "method", "metric"]
SUMMARY_COLUMNS: list[str] = CELL_KEYS + ["mean", "std", "n"]
Z_AGREES = 2.0
# `megl summarize --plots DIR` writes DIR/<name>/{dataset}_{backbone}.csv for each name (plot data for
# anyone's own plots; DVC's declared plots are the figures' PNGs, which draw offline: docs/workflow.md).
PLOT_LOSS = "loss"          # step, then one column per matrix.methods: `loss` mean over seeds (classifier cells)
PLOT_ACCURACY = "accuracy"  # method, accuracy: mean over seeds (every cell, MLLM ones under backbone mllm)
PLOT_MIOU = "miou"          # method, miou: mean over seeds (classifier cells)
PLOT_DIRS: tuple[str, ...] = (PLOT_LOSS, PLOT_ACCURACY, PLOT_MIOU)
# `megl summarize --headline DIR`: DIR/{dataset}_{backbone}_{method}.json = {accuracy, miou}, the mean
# over seeds rounded for reading; the metrics DVC shows by default (a few columns, one row per cell).
HEADLINE_COLUMNS: tuple[str, ...] = ("accuracy", "miou")
HEADLINE_DIGITS = 4


def summarize_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Long frame: one row per (dataset, backbone, method, metric) with a value in at least one
    seed: mean, std (ddof=1; NaN for one seed), n, and `values` ({seed: value})."""
    rows = []
    for (dataset, backbone, method), g in runs.groupby(["dataset", "backbone", "method"], sort=False):
        for metric in metric_registry.keys(headline=True):
            if metric not in g:
                continue
            vals = g[["seed", metric]].dropna()
            if vals.empty:
                continue
            x = vals[metric].to_numpy(dtype="float64")
            rows.append({"dataset": dataset, "backbone": backbone, "method": method, "metric": metric,
                         "mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else float("nan"),
                         "n": int(len(x)), "values": dict(zip(vals["seed"].astype(int), x.tolist()))})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS + ["values"])


def cell_json(summary: pd.DataFrame, dataset: str, backbone: str) -> dict:
    """{method: {metric: {mean, std (null for one seed), n, per_seed: {seed<k>: value}}}}."""
    out: dict[str, dict] = {}
    sel = summary[(summary["dataset"] == dataset) & (summary["backbone"] == backbone)]
    for r in sel.itertuples(index=False):
        out.setdefault(r.method, {})[r.metric] = {
            "mean": r.mean, "std": None if math.isnan(r.std) else r.std, "n": r.n,
            "per_seed": {f"seed{s}": v for s, v in sorted(r.values.items())}}
    return out


def headline_json(summary: pd.DataFrame, dataset: str, backbone: str, method: str) -> dict:
    """{accuracy, miou}: the mean over seeds of each HEADLINE_COLUMNS metric the cell has, rounded."""
    sel = summary[(summary["dataset"] == dataset) & (summary["backbone"] == backbone) & (summary["method"] == method)]
    means = dict(zip(sel["metric"], sel["mean"]))
    return {m: round(float(means[m]), HEADLINE_DIGITS) for m in HEADLINE_COLUMNS if m in means}


def write_headline(summary: pd.DataFrame, headline_dir: Path) -> list[Path]:
    """`headline_dir/{dataset}_{backbone}_{method}.json` for every cell with a run (headline_json)."""
    written = []
    cells = summary[["dataset", "backbone", "method"]].drop_duplicates()
    Path(headline_dir).mkdir(parents=True, exist_ok=True)  # an empty folder before any run
    for dataset, backbone, method in cells.itertuples(index=False):
        path = Path(headline_dir) / f"{dataset}_{backbone}_{method}.json"
        write_json(path, headline_json(summary, dataset, backbone, method))
        written.append(path)
    return written


def write_summary(config: dict, results_dir: Path, out_dir: Path, plots_dir: Path | None = None,
                  summary_csv: Path | None = None, headline_dir: Path | None = None) -> list[Path]:
    """`out_dir/{dataset}_{backbone}.json` for every dataset × backbone of the matrix (MLLM runs
    under backbone `mllm`; `{}` where no run is found yet) and the flat summary CSV (`summary_csv`,
    default `out_dir/summary.csv`); with `plots_dir`, the plot data of `write_plot_data` too; with
    `headline_dir`, the short per-cell files of `write_headline`."""
    expected = expected_runs(config["matrix"])
    paths = [Path(results_dir) / r.path / "metrics.json" for r in enumerate_runs(config)]
    runs = collect_runs([p for p in paths if p.exists()])
    summary = summarize_runs(runs)
    cells = pd.concat([expected[["dataset", "backbone"]], runs[["dataset", "backbone"]]]).drop_duplicates()
    out_dir = Path(out_dir)
    written = []
    for dataset, backbone in cells.itertuples(index=False):
        path = out_dir / f"{dataset}_{backbone}.json"
        write_json(path, cell_json(summary, dataset, backbone))
        written.append(path)
    summary_csv = Path(summary_csv) if summary_csv is not None else out_dir / "summary.csv"
    write_text(summary_csv, summary[SUMMARY_COLUMNS].to_csv(index=False))
    written.append(summary_csv)
    if plots_dir is not None:
        written += write_plot_data(config, Path(results_dir), summary, cells, Path(plots_dir))
    if headline_dir is not None:
        written += write_headline(summary, Path(headline_dir))
    return written


def mean_loss_curves(config: dict, results_dir: Path, dataset: str, backbone: str) -> pd.DataFrame:
    """step, then one column per classifier method of the matrix (of any block): the `loss` column of
    the runs' train_log.csv, mean over the seeds found at that step (empty where a method has no log
    in this cell)."""
    methods = matrix_methods(config["matrix"])  # every CSV has every column: dvc.yaml's plot names them all
    curves = []
    for method in methods:
        per_seed = []
        for seed in config["matrix"]["seeds"]:
            path = Path(results_dir) / Run(dataset, backbone, method, seed).path / "train_log.csv"
            if not path.exists():
                continue
            log = read_train_log(path)
            per_seed.append(log.set_index("step")["loss"].astype("float64"))
        if per_seed:
            curves.append(pd.concat(per_seed, axis=1).mean(axis=1).rename(method))
    frame = pd.concat(curves, axis=1) if curves else pd.DataFrame(index=pd.Index([], name="step"))
    frame = frame.reindex(columns=methods).sort_index()
    frame.index = frame.index.astype("int64")
    return frame.rename_axis("step").reset_index()


def method_means(summary: pd.DataFrame, methods: list[str], dataset: str, backbone: str,
                 metric: str) -> pd.DataFrame:
    """method, <metric>: mean over seeds, one row per method in matrix order (empty where missing)."""
    sel = summary[(summary["dataset"] == dataset) & (summary["backbone"] == backbone)
                  & (summary["metric"] == metric)]
    means = dict(zip(sel["method"], sel["mean"]))
    return pd.DataFrame({"method": methods, metric: [means.get(m, float("nan")) for m in methods]})


def write_plot_data(config: dict, results_dir: Path, summary: pd.DataFrame, cells: pd.DataFrame,
                    plots_dir: Path) -> list[Path]:
    """`plots_dir/<PLOT_DIRS>/{dataset}_{backbone}.csv` (the plot data). The folder is
    replaced whole, so a cell dropped from the matrix leaves no stale plot behind."""
    written: list[Path] = []
    with atomic_dir(plots_dir) as tmp:
        for dataset, backbone in cells.itertuples(index=False):
            name = f"{dataset}_{backbone}.csv"
            is_classifier = backbone != MLLM_BACKBONE
            methods = cell_methods(config, dataset, backbone)
            frames = {PLOT_ACCURACY: method_means(summary, methods, dataset, backbone, "accuracy")}
            if is_classifier:
                frames[PLOT_LOSS] = mean_loss_curves(config, results_dir, dataset, backbone)
                frames[PLOT_MIOU] = method_means(summary, methods, dataset, backbone, "miou")
            for kind, frame in frames.items():
                write_text(tmp / kind / name, frame.to_csv(index=False))
                written.append(Path(plots_dir) / kind / name)
    return written


def read_summary(path: str | Path) -> pd.DataFrame:
    """A summary.csv, validated: every row names a cell (dataset, backbone, method, metric: non-empty),
    once; mean is a finite number, std empty (one seed) or a finite number >= 0, n an integer >= 1.
    A MEGLError names the file, the row (its line in the file) and the column of the first bad value."""
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MEGLError(f"{path}: not a summary CSV (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise MEGLError(f"{path}: cannot read summary ({exc})") from None
    for col in SUMMARY_COLUMNS:
        if col not in raw.columns:
            raise MEGLError(f"{path}: missing column '{col}'")
    rows = []
    for k, rec in enumerate(raw[SUMMARY_COLUMNS].to_dict("records")):
        rows.append(_summary_row(path, k + 2, rec))  # line 1 is the header
    df = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    dup = df.duplicated(CELL_KEYS, keep="first")
    if dup.any():
        k = int(np.flatnonzero(dup.to_numpy())[0])
        first = int(np.flatnonzero((df[CELL_KEYS] == df.loc[k, CELL_KEYS]).all(axis=1).to_numpy())[0])
        raise MEGLError(f"{path}: row {k + 2}: column dataset/backbone/method/metric: cell "
                        f"{'/'.join(df.loc[k, CELL_KEYS])} appears again (first in row {first + 2}); "
                        "each cell must appear once")
    return df.astype({"mean": "float64", "std": "float64", "n": "int64"})


def _summary_row(path: Path, line: int, rec: dict) -> dict:
    def fail(col: str, what: str) -> MEGLError:
        return MEGLError(f"{path}: row {line}: column {col}: {rec[col]!r} {what}")

    for col in CELL_KEYS:
        if not rec[col].strip():
            raise fail(col, "is empty; a name is required")

    def number(col: str) -> float:
        try:
            return float(rec[col])
        except ValueError:
            raise fail(col, "is not a number") from None

    mean = number("mean") if rec["mean"].strip() else None
    if mean is None or not math.isfinite(mean):
        raise fail("mean", "must be a finite number")
    std = number("std") if rec["std"].strip() else float("nan")
    if not math.isnan(std) and (not math.isfinite(std) or std < 0) or rec["std"].strip().lower() == "nan":
        raise fail("std", "must be empty (one seed) or a finite number >= 0")
    n = number("n") if rec["n"].strip() else None
    if n is None or not math.isfinite(n) or n != int(n) or n < 1:
        raise fail("n", "must be an integer >= 1 (the number of seeds)")
    return {**{c: rec[c] for c in CELL_KEYS}, "mean": mean, "std": std, "n": int(n)}


def _sd(value: float, n: int) -> float:
    return float("nan") if n < 2 or pd.isna(value) else float(value)


def z_score(mean_ref: float, sd_ref: float, n_ref: int, mean_new: float, sd_new: float, n_new: int) -> float:
    """(new − ref) / √(sd_ref²/n_ref + sd_new²/n_new).

    A side without a spread estimate (one seed, or std missing) borrows the other side's sd (as if
    the variances were equal); with neither, the standard error is 0. A standard error of 0 gives
    z = 0 for equal means and ±inf otherwise (every seed agreed, so any change is a change).
    """
    sd_ref, sd_new = _sd(sd_ref, n_ref), _sd(sd_new, n_new)
    sd_ref = sd_new if math.isnan(sd_ref) else sd_ref
    sd_new = sd_ref if math.isnan(sd_new) else sd_new
    se = 0.0 if math.isnan(sd_ref) else math.sqrt(sd_ref ** 2 / n_ref + sd_new ** 2 / n_new)
    diff = mean_new - mean_ref
    if se > 0:
        return diff / se
    if abs(diff) <= 1e-12 * max(1.0, abs(mean_ref)):
        return 0.0
    return math.copysign(math.inf, diff)


def _cell(mean: float, sd: float, n: int) -> str:
    if pd.isna(mean):
        return "-"
    spread = f" ± {fmt_number(sd, 4)}" if n > 1 and not pd.isna(sd) else ""
    return f"{fmt_number(mean, 4)}{spread} (n={int(n)})"


def compare_summaries(reference: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Cell by cell (dataset, backbone, method, metric): reference and new mean ± std (n), the
    difference new − reference, z (z_score) and a status: agrees (|z| < 2), differs,
    missing in new, new cell."""
    merged = reference.merge(new, on=CELL_KEYS, how="outer", suffixes=("_ref", "_new"),
                            indicator="where")
    rows = []
    for r in merged.itertuples(index=False):
        diff = z = float("nan")
        if r.where == "left_only":
            status = "missing in new"
        elif r.where == "right_only":
            status = "new cell"
        else:
            diff = r.mean_new - r.mean_ref
            z = z_score(r.mean_ref, r.std_ref, int(r.n_ref), r.mean_new, r.std_new, int(r.n_new))
            status = "agrees" if abs(z) < Z_AGREES else "differs"
        rows.append({"dataset": r.dataset, "backbone": r.backbone, "method": r.method, "metric": r.metric,
                     "reference": _cell(r.mean_ref, r.std_ref, 0 if pd.isna(r.n_ref) else r.n_ref),
                     "new": _cell(r.mean_new, r.std_new, 0 if pd.isna(r.n_new) else r.n_new),
                     "diff": diff, "z": z, "status": status})
    return pd.DataFrame(rows, columns=CELL_KEYS + ["reference", "new", "diff", "z", "status"])


def compare_markdown(table: pd.DataFrame) -> str:
    counts = table["status"].value_counts()
    shown = table.assign(diff=[("-" if np.isnan(x) else f"{x:+.4f}") for x in table["diff"]],
                         z=[("-" if np.isnan(x) else f"{x:+.2f}") for x in table["z"]])
    head = (f"# New summary against the reference\n\nz = (new − ref) / √(sd_ref²/n_ref + sd_new²/n_new); "
            f"agrees when |z| < {Z_AGREES:g}. A side with one seed borrows the other side's sd; with no sd "
            "on either side, any change differs.\n\n"
            + ", ".join(f"{k}: {counts.get(k, 0)}" for k in ("agrees", "differs", "missing in new", "new cell"))
            + "\n")
    return head + "\n" + to_markdown(shown)
