"""The paper's claims, checked per dataset × backbone with a paired one-sided test across seeds."""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from scipy import stats

from megl.io import write_text
from megl.report.collect import MLLM_BACKBONE
from megl.report.tables import (BACKBONE_NAMES, DATASET_NAMES, fmt_number, method_label,
                                to_latex, to_markdown)

VISUAL_BASELINES: tuple[str, ...] = ("baseline", "cdep", "haics", "res_g", "res_l")
ABLATIONS: tuple[str, ...] = ("megl_no_consistency", "megl_text_only", "megl_visual_only",
                              "megl_no_sdtg", "megl_no_text_supervision")

# claim id → (statement, list of (a, b, metric)); "a beats b" is the claimed direction.
CLAIMS: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "C1": ("MEGL beats each visual-guidance baseline of its backbone in accuracy",
           [("megl", b, "accuracy") for b in VISUAL_BASELINES]),
    "C2": ("MEGL beats each visual-guidance baseline of its backbone in mIoU",
           [("megl", b, "miou") for b in VISUAL_BASELINES]),
    "C3": ("every component helps: MEGL beats each ablation in accuracy",
           [("megl", a, "accuracy") for a in ABLATIONS]),
    "C4": ("each ablation beats the baseline in accuracy",
           [(a, "baseline", "accuracy") for a in ABLATIONS]),
    "C5": ("text helps more than visual: Text-only beats Visual-only in accuracy",
           [("megl_text_only", "megl_visual_only", "accuracy")]),
}

COLUMNS = ["claim", "dataset", "backbone", "a", "b", "metric", "mean_a", "mean_b", "diff",
           "cohens_d", "p_value", "n", "seeds", "verdict", "note"]


def _expected_seeds(expected: pd.DataFrame | None, dataset: str, backbone: str,
                    method: str) -> set[int]:
    if expected is None:
        return set()
    sel = ((expected["dataset"] == dataset) & (expected["backbone"] == backbone)
           & (expected["method"] == method))
    return {int(s) for s in expected.loc[sel, "seed"]}


# With two seeds a one-sided t-test has one degree of freedom and a constant difference looks
# infinitely sure; we give a verdict only from three paired seeds on (the default matrix has 3).
MIN_PAIRED_SEEDS = 3


def compare_pair(df: pd.DataFrame, dataset: str, backbone: str, a: str, b: str, metric: str,
                 alpha: float = 0.05, expected: pd.DataFrame | None = None) -> dict[str, Any]:
    """Paired comparison of method a vs b on one dataset × backbone, matched by seed.

    diff = mean over paired seeds of (a − b); cohens_d = mean(d)/std(d, ddof=1) of the paired
    differences; p_value is scipy.stats.ttest_rel one-sided in the claimed direction (a > b).
    Verdict: 'holds' when p < alpha and diff > 0; 'fails' when the opposite one-sided test has
    p < alpha; otherwise 'inconclusive' — always so when fewer than MIN_PAIRED_SEEDS paired seeds or a run
    (from `expected`, or present for one method only) is missing.
    """
    def runs(method: str) -> pd.DataFrame:
        sel = (df["dataset"] == dataset) & (df["backbone"] == backbone) & (df["method"] == method)
        return df.loc[sel, ["seed", metric]]

    ra, rb = runs(a), runs(b)
    found = {a: {int(s) for s in ra["seed"]}, b: {int(s) for s in rb["seed"]}}
    notes: list[str] = []
    not_run = [m for m in (a, b) if not found[m] and not _expected_seeds(expected, dataset, backbone, m)]
    missing: list[str] = []
    for method in (a, b):
        wanted = _expected_seeds(expected, dataset, backbone, method) or (found[a] | found[b])
        absent = sorted(wanted - found[method])
        if absent and method not in not_run:
            missing.append(f"{method} seed {','.join(map(str, absent))}")
    if not_run:
        notes.append(f"not run: {', '.join(not_run)}")
    if missing:
        notes.append("missing runs: " + "; ".join(missing))

    merged = ra.merge(rb, on="seed", suffixes=("_a", "_b")).dropna().sort_values("seed")
    xa = merged[f"{metric}_a"].to_numpy(dtype="float64")
    xb = merged[f"{metric}_b"].to_numpy(dtype="float64")
    n = int(len(merged))
    nan = float("nan")
    mean_a = float(ra[metric].mean()) if ra[metric].notna().any() else nan
    mean_b = float(rb[metric].mean()) if rb[metric].notna().any() else nan
    diff = cohens_d = p_greater = p_less = nan
    if n >= 1:
        d = xa - xb
        diff = float(d.mean())
    if n >= 2:
        sd = float(d.std(ddof=1))
        if sd > 1e-12 * max(1.0, float(abs(d).max())):  # below this the spread is float rounding
            cohens_d = diff / sd
            p_greater = float(stats.ttest_rel(xa, xb, alternative="greater").pvalue)
            p_less = float(stats.ttest_rel(xa, xb, alternative="less").pvalue)
        elif diff != 0:
            # Every seed moved by exactly the same amount: the t statistic is infinite.
            p_greater, p_less = (0.0, 1.0) if diff > 0 else (1.0, 0.0)
            notes.append("identical difference on every seed")
        else:
            p_greater = p_less = 1.0
            notes.append("no difference on any seed")
    elif not not_run:
        notes.append(f"n={n} paired seed{'' if n == 1 else 's'}: no test")

    if n < MIN_PAIRED_SEEDS or missing or not_run:
        verdict = "inconclusive"
        if 2 <= n < MIN_PAIRED_SEEDS:
            notes.append(f"n={n} paired seeds: a verdict needs at least {MIN_PAIRED_SEEDS}")
    elif p_greater < alpha and diff > 0:
        verdict = "holds"
    elif p_less < alpha:
        verdict = "fails"
    else:
        verdict = "inconclusive"
        notes.append(f"p >= {alpha:g} in both directions")
    return {"dataset": dataset, "backbone": backbone, "a": a, "b": b, "metric": metric,
            "mean_a": mean_a, "mean_b": mean_b, "diff": diff, "cohens_d": cohens_d,
            "p_value": p_greater, "n": n, "seeds": ",".join(str(int(s)) for s in merged["seed"]),
            "verdict": verdict, "note": "; ".join(notes)}


def evaluate_claims(df: pd.DataFrame, alpha: float = 0.05, expected: pd.DataFrame | None = None,
                    claims: Sequence[str] = tuple(CLAIMS)) -> pd.DataFrame:
    """One row per (claim, dataset, backbone, a, b): the columns of COLUMNS.

    Dataset × backbone pairs come from `expected` (the matrix) and from the runs found; MLLM
    backbones are left out (the claims are about classifier backbones). Pairs whose methods are
    neither in the matrix nor among the runs are reported as inconclusive 'not run'.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    frames = [df[["dataset", "backbone"]]] + ([expected[["dataset", "backbone"]]] if expected is not None else [])
    cells = pd.concat(frames).drop_duplicates()
    cells = cells[cells["backbone"] != MLLM_BACKBONE]
    rows: list[dict[str, Any]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for cid in claims:
            _, pairs = CLAIMS[cid]
            for dataset, backbone in cells.itertuples(index=False):
                for a, b, metric in pairs:
                    rows.append({"claim": cid, **compare_pair(df, dataset, backbone, a, b, metric,
                                                              alpha, expected)})
    return pd.DataFrame(rows, columns=COLUMNS)


def claim_summary(claims: pd.DataFrame) -> pd.DataFrame:
    """Per (claim, dataset, backbone): 'holds' only if every pair holds, 'fails' if any pair
    fails, else 'inconclusive'; with the count of pairs per verdict."""
    rows = []
    for (cid, dataset, backbone), g in claims.groupby(["claim", "dataset", "backbone"], sort=False):
        counts = g["verdict"].value_counts()
        if (g["verdict"] == "holds").all():
            overall = "holds"
        elif (g["verdict"] == "fails").any():
            overall = "fails"
        else:
            overall = "inconclusive"
        rows.append({"Claim": cid, "Statement": CLAIMS[cid][0] if cid in CLAIMS else "",
                     "Dataset": DATASET_NAMES.get(dataset, dataset),
                     "Backbone": BACKBONE_NAMES.get(backbone, backbone), "Verdict": overall,
                     "Pairs (holds/fails/inconclusive)":
                         f"{counts.get('holds', 0)}/{counts.get('fails', 0)}/{counts.get('inconclusive', 0)}"})
    return pd.DataFrame(rows)


def _fmt(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt_number(x, digits)


def write_claims(claims: pd.DataFrame, out_stem: str | Path, alpha: float = 0.05) -> list[Path]:
    """Write `<out_stem>.csv` (raw numbers), `<out_stem>.md` (summary, then every pair) and
    `<out_stem>.tex` (the per-claim summary, for the manuscript)."""
    stem = Path(out_stem)
    csv_path, md_path, tex_path = (Path(f"{stem}{ext}") for ext in (".csv", ".md", ".tex"))
    write_text(csv_path, claims.to_csv(index=False))
    detail = pd.DataFrame({
        "Claim": claims["claim"],
        "Dataset": claims["dataset"].map(lambda d: DATASET_NAMES.get(d, d)),
        "Backbone": claims["backbone"].map(lambda b: BACKBONE_NAMES.get(b, b)),
        "A > B": [f"{method_label(a)} > {method_label(b)}" for a, b in zip(claims["a"], claims["b"])],
        "Metric": claims["metric"],
        "Mean A": claims["mean_a"].map(_fmt), "Mean B": claims["mean_b"].map(_fmt),
        "Diff": claims["diff"].map(_fmt), "Cohen's d": claims["cohens_d"].map(lambda x: _fmt(x, 2)),
        "p (one-sided)": claims["p_value"].map(lambda x: _fmt(x, 3)),
        "n": claims["n"], "Verdict": claims["verdict"], "Note": claims["note"],
    })
    text = "\n".join([
        "# Claims of the paper, checked on our runs",
        "",
        f"Paired one-sided t-test across seeds (scipy.stats.ttest_rel), alpha = {alpha:g}. "
        "holds: p < alpha and mean difference > 0; fails: the opposite one-sided test has "
        f"p < alpha; otherwise inconclusive (always so with fewer than {MIN_PAIRED_SEEDS} paired seeds "
        "or a missing run). "
        "Effect size: mean paired difference and Cohen's d of the paired differences.",
        "",
        "## Per claim",
        "",
        to_markdown(claim_summary(claims)) if len(claims) else "(no claims evaluated)\n",
        "## Every comparison",
        "",
        to_markdown(detail) if len(claims) else "(none)\n",
    ])
    write_text(md_path, text)
    summary = claim_summary(claims) if len(claims) else pd.DataFrame(columns=["Claim"])
    write_text(tex_path, to_latex(
        summary, caption=f"The paper's claims on our runs: paired one-sided t-test across seeds, "
                         f"alpha = {alpha:g}; a claim holds on a dataset and backbone only if every "
                         f"comparison in it holds.", label=f"tab:{stem.name}"))
    return [csv_path, md_path, tex_path]
