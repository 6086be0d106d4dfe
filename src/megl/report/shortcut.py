"""What the shortcut costs the baseline, and how much of it each guided method wins back.

For every dataset with a no-shortcut control twin (`datasets.<twin>.control_for`) and every
backbone: the baseline on the twin (no shortcut) and on the dataset (shortcut in training), paired by
seed on the same test images; then, per guided method of the cell, its paired gain over the baseline
and that gain as a share of the shortcut's cost. Descriptive, "as it comes": the tests of the
paper's claims are in claims.md; this table says how large the room was and how much was filled.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy import stats

from megl.methods import MLLM_BACKBONE
from megl.report.labels import Labels
from megl.report.tables import fmt_number, method_label, write_table
from megl.report.validity import twins

COLUMNS = ["dataset", "backbone", "method", "n", "accuracy", "gain", "gain_ci_low", "gain_ci_high", "share_won_back"]


def _accuracy(runs: pd.DataFrame, dataset: str, backbone: str, method: str) -> pd.Series:
    sel = (runs["dataset"] == dataset) & (runs["backbone"] == backbone) & (runs["method"] == method)
    return runs.loc[sel].set_index("seed")["accuracy"].dropna()


def _paired(a: pd.Series, b: pd.Series) -> tuple[int, float, float, float]:
    """(n, mean of a − b over the shared seeds, its unadjusted two-sided 95 % t interval)."""
    seeds = sorted(set(a.index) & set(b.index))
    d = np.array([a[s] - b[s] for s in seeds], dtype="float64")
    if len(d) == 0:
        return 0, float("nan"), float("nan"), float("nan")
    if len(d) < 2:
        return len(d), float(d.mean()), float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return len(d), float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def shortcut_recovery(runs: pd.DataFrame, config: Mapping[str, Any]) -> pd.DataFrame:
    """One row per (dataset with a twin, backbone, method): the twin's baseline (`method` = "no shortcut"),
    the baseline, then every other classifier method of the cell; gains are paired over seeds."""
    rows = []
    for dataset, twin in twins(config).items():
        for backbone in sorted(set(runs.loc[runs["dataset"] == dataset, "backbone"]) - {MLLM_BACKBONE}):
            base = _accuracy(runs, dataset, backbone, "baseline")
            clean = _accuracy(runs, twin, backbone, "baseline")
            if base.empty:
                continue
            n, cost, lo, hi = _paired(clean, base)
            rows.append({"dataset": dataset, "backbone": backbone, "method": "no shortcut (twin baseline)", "n": n,
                         "accuracy": float(clean.mean()) if len(clean) else float("nan"), "gain": cost,
                         "gain_ci_low": lo, "gain_ci_high": hi, "share_won_back": float("nan")})
            rows.append({"dataset": dataset, "backbone": backbone, "method": "baseline", "n": len(base),
                         "accuracy": float(base.mean()), "gain": 0.0, "gain_ci_low": float("nan"),
                         "gain_ci_high": float("nan"), "share_won_back": 0.0})
            cell = runs[(runs["dataset"] == dataset) & (runs["backbone"] == backbone)]
            for method in dict.fromkeys(cell["method"]):
                if method == "baseline":
                    continue
                acc = _accuracy(runs, dataset, backbone, method)
                n, gain, lo, hi = _paired(acc, base)
                share = gain / cost if cost and np.isfinite(cost) and cost > 0 else float("nan")
                rows.append({"dataset": dataset, "backbone": backbone, "method": method, "n": n,
                             "accuracy": float(acc.mean()), "gain": gain, "gain_ci_low": lo, "gain_ci_high": hi,
                             "share_won_back": share})
    return pd.DataFrame(rows, columns=COLUMNS)


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else fmt_number(x, digits)


def display(frame: pd.DataFrame, labels: Labels | None = None, validity: pd.DataFrame | None = None) -> pd.DataFrame:
    """The formatted table; with the cell validity frame (megl.report.validity), a column says whether
    each dataset × backbone is a fair test, so an invalid cell's shares are read as what they are."""
    labels = labels or Labels()
    verdict = {}
    if validity is not None and len(validity):
        verdict = {(d, b): "valid" if v else f"invalid: {r}" for d, b, v, r in
                   zip(validity["dataset"], validity["backbone"], validity["valid"].astype(bool), validity["reason"])}
    return pd.DataFrame({
        "Dataset": frame["dataset"].map(labels.dataset), "Backbone": frame["backbone"].map(labels.backbone),
        "Cell": [verdict.get((d, b), "not checked") for d, b in zip(frame["dataset"], frame["backbone"])],
        "Method": [m if m.startswith("no shortcut") else method_label(m) for m in frame["method"]],
        "n": frame["n"], "Accuracy": frame["accuracy"].map(_fmt),
        "vs baseline (paired)": frame["gain"].map(_fmt),
        "95% CI (unadjusted)": [f"[{_fmt(lo)}, {_fmt(hi)}]"
                                for lo, hi in zip(frame["gain_ci_low"], frame["gain_ci_high"])],
        "share of the shortcut's cost won back": frame["share_won_back"].map(lambda x: "n/a" if not np.isfinite(x)
                                                                              else f"{x:.0%}"),
    })


CAPTION = ("What the shortcut costs the baseline (the no-shortcut twin's baseline minus the baseline, paired by "
           "seed on the same test images) and what each guided method wins back (its paired gain over the "
           "baseline; share = gain / cost). Descriptive: the claims' tests are in claims.md.")


def write_shortcut_table(runs: pd.DataFrame, config: Mapping[str, Any], out_stem: str | Path,
                         labels: Labels | None = None, validity: pd.DataFrame | None = None) -> list[Path]:
    """shortcut.md and .tex (formatted, with each cell's validity) and shortcut.csv (the raw numbers)."""
    frame = shortcut_recovery(runs, config)
    return write_table(display(frame, labels, validity), out_stem, caption=CAPTION, csv=frame)
