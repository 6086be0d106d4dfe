"""The paper's claims, checked per dataset × backbone with paired tests across seeds.

Each comparison "a beats b" gets the mean paired difference with its 95 % CI, a one-sided paired
t-test, a Holm adjustment within its claim family (one claim on one dataset × backbone) and the
minimum detectable effect of the design. docs/report.md states the verdict rules.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from megl.io import write_text
from megl.methods import ABLATIONS, VISUAL_BASELINES
from megl.report.collect import MLLM_BACKBONE
from megl.report.power import mde as min_detectable_effect
from megl.report.labels import Labels
from megl.report.tables import fmt_number, method_label, to_latex, to_markdown

# Saliency claims read `miou_all` (every test image's true map) where a cell has it, else `miou`.
SALIENCY = "miou"

# claim id → (statement, list of (a, b, metric)); "a beats b" is the claimed direction.
CLAIMS: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "C1": ("MEGL beats each visual-guidance baseline of its backbone in accuracy",
           [("megl", b, "accuracy") for b in VISUAL_BASELINES]),
    "C2": ("MEGL beats each visual-guidance baseline of its backbone in saliency mIoU",
           [("megl", b, SALIENCY) for b in VISUAL_BASELINES]),
    "C3": ("every component helps: MEGL beats each ablation in accuracy",
           [("megl", a, "accuracy") for a in ABLATIONS]),
    "C4": ("each ablation beats the baseline in accuracy",
           [(a, "baseline", "accuracy") for a in ABLATIONS]),
    "C5": ("text helps more than visual: Text-only beats Visual-only in accuracy",
           [("megl_text_only", "megl_visual_only", "accuracy")]),
}

COLUMNS = ["claim", "dataset", "backbone", "a", "b", "metric", "mean_a", "mean_b", "diff", "ci_low",
           "ci_high", "cohens_d", "p_value", "p_holm", "p_holm_opposite", "mde", "n", "seeds",
           "decidable", "verdict", "note"]

CI_LEVEL = 0.95
POWER = 0.8
# With two seeds a one-sided t-test has one degree of freedom and a constant difference looks
# infinitely sure; we give a verdict only from three paired seeds on (the default matrix has 3).
MIN_PAIRED_SEEDS = 3


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (statsmodels' multipletests); NaN entries (no test) stay
    NaN and do not count in the family size k."""
    p = np.asarray(pvalues, dtype="float64")
    out = np.full(p.shape, np.nan)
    tested = ~np.isnan(p)
    if tested.any():
        out[tested] = multipletests(p[tested], method="holm")[1]
    return out


def _expected_seeds(expected: pd.DataFrame | None, dataset: str, backbone: str,
                    method: str) -> set[int]:
    if expected is None:
        return set()
    sel = ((expected["dataset"] == dataset) & (expected["backbone"] == backbone)
           & (expected["method"] == method))
    return {int(s) for s in expected.loc[sel, "seed"]}


def saliency_metric(df: pd.DataFrame, dataset: str, backbone: str) -> str:
    """`miou_all` when any run of the cell carries it, else `miou`."""
    if "miou_all" not in df:
        return "miou"
    cell = df[(df["dataset"] == dataset) & (df["backbone"] == backbone)]
    return "miou_all" if cell["miou_all"].notna().any() else "miou"


def _verdict(p: float, p_opposite: float, diff: float, mde: float, decidable: bool,
             alpha: float) -> tuple[str, str]:
    """(verdict, note) of one comparison from its (adjusted) one-sided p-values."""
    if not decidable:
        return "undecided", ""
    if p < alpha and diff > 0:
        return "holds", ""
    if p_opposite < alpha:
        return "fails", ""
    note = f"p (Holm) >= {alpha:g} in both directions"
    if abs(diff) < mde:
        note += f"; within noise: the design detects ≥ MDE = {fmt_number(mde, 4)}"
    return "undecided", note


def _pair_stats(df: pd.DataFrame, dataset: str, backbone: str, a: str, b: str, metric: str,
                alpha: float, expected: pd.DataFrame | None) -> dict[str, Any]:
    """The numbers of one comparison, with `note` saying what is missing; no verdict yet."""
    def runs(method: str) -> pd.DataFrame:
        sel = (df["dataset"] == dataset) & (df["backbone"] == backbone) & (df["method"] == method)
        return df.loc[sel, ["seed", metric]]

    ra, rb = runs(a), runs(b)
    found = {a: {int(s) for s in ra["seed"]}, b: {int(s) for s in rb["seed"]}}
    wanted = {m: _expected_seeds(expected, dataset, backbone, m) for m in (a, b)}
    not_run, missing = _coverage(found, wanted)
    notes: list[str] = []
    if not_run:
        notes.append(f"not run: {', '.join(not_run)}")
    if missing:
        notes.append("missing runs: " + "; ".join(missing))

    merged = ra.merge(rb, on="seed", suffixes=("_a", "_b")).dropna().sort_values("seed")
    n = int(len(merged))
    numbers, test_notes = _paired_test(merged[f"{metric}_a"].to_numpy(dtype="float64"),
                                       merged[f"{metric}_b"].to_numpy(dtype="float64"), alpha)
    notes += test_notes
    if n < 2 and not not_run:
        notes.append(f"n={n} paired seed{'' if n == 1 else 's'}: no test")
    if 2 <= n < MIN_PAIRED_SEEDS:
        notes.append(f"n={n} paired seeds: a verdict needs at least {MIN_PAIRED_SEEDS}")
    nan = float("nan")
    return {"dataset": dataset, "backbone": backbone, "a": a, "b": b, "metric": metric,
            "mean_a": float(ra[metric].mean()) if ra[metric].notna().any() else nan,
            "mean_b": float(rb[metric].mean()) if rb[metric].notna().any() else nan,
            **numbers, "n": n, "seeds": ",".join(str(int(s)) for s in merged["seed"]),
            "decidable": n >= MIN_PAIRED_SEEDS and not missing and not not_run, "note": "; ".join(notes)}


def _coverage(found: dict[str, set[int]], expected: dict[str, set[int]]) -> tuple[list[str], list[str]]:
    """(methods not run at all, "method seed i,j" per method with seeds missing) of one comparison:
    the seeds wanted are the expected ones, else every seed either method has."""
    not_run = [m for m in found if not found[m] and not expected[m]]
    everything = set().union(*found.values())
    missing = []
    for method in found:
        absent = sorted((expected[method] or everything) - found[method])
        if absent and method not in not_run:
            missing.append(f"{method} seed {','.join(map(str, absent))}")
    return not_run, missing


def _paired_test(xa: np.ndarray, xb: np.ndarray, alpha: float) -> tuple[dict[str, float], list[str]]:
    """diff, its CI, Cohen's d, the one-sided p-values (a > b: p_value, a < b: p_opposite) and the MDE
    of paired samples (NaN where too few), with notes on degenerate differences."""
    n = len(xa)
    nan = float("nan")
    diff = ci_low = ci_high = cohens_d = p_greater = p_less = mde = nan
    notes: list[str] = []
    if n >= 1:
        d = xa - xb
        diff = float(d.mean())
    if n >= 2:
        sd = float(d.std(ddof=1))
        half = stats.t.ppf(0.5 + CI_LEVEL / 2, n - 1) * sd / math.sqrt(n)
        ci_low, ci_high = diff - half, diff + half
        mde = min_detectable_effect(sd, n, alpha, POWER)
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
    return {"diff": diff, "ci_low": ci_low, "ci_high": ci_high, "cohens_d": cohens_d, "p_value": p_greater,
            "p_opposite": p_less, "mde": mde}, notes


def _decide(row: dict[str, Any], p: float, p_opposite: float, alpha: float) -> dict[str, Any]:
    """`row` with the adjusted p-values, its verdict and the verdict's note appended."""
    verdict, why = _verdict(p, p_opposite, row["diff"], row["mde"], row["decidable"], alpha)
    note = "; ".join(x for x in (row["note"], why) if x)
    return {**row, "p_holm": float(p), "p_holm_opposite": float(p_opposite), "verdict": verdict, "note": note}


def compare_pair(df: pd.DataFrame, dataset: str, backbone: str, a: str, b: str, metric: str,
                 alpha: float = 0.05, expected: pd.DataFrame | None = None) -> dict[str, Any]:
    """Paired comparison of method a vs b on one dataset × backbone, matched by seed.

    diff = mean of the paired differences d = a − b; [ci_low, ci_high] its 95 % t interval
    (what scipy.stats.ttest_rel(a, b).confidence_interval() gives); cohens_d = diff / sd(d);
    p_value = one-sided paired t-test a > b (p_opposite: a < b); mde = minimum detectable effect
    at 80 % power, two-sided alpha. Alone, a comparison is a family of one (p_holm = p_value);
    evaluate_claims adjusts within each claim family. Not `decidable` (always undecided) with
    fewer than MIN_PAIRED_SEEDS paired seeds or a run missing.
    """
    row = _pair_stats(df, dataset, backbone, a, b, metric, alpha, expected)
    return _decide(row, row["p_value"], row["p_opposite"], alpha)


def evaluate_claims(df: pd.DataFrame, alpha: float = 0.05, expected: pd.DataFrame | None = None,
                    claims: Sequence[str] = tuple(CLAIMS)) -> pd.DataFrame:
    """One row per (claim, dataset, backbone, a, b): the columns of COLUMNS.

    Dataset × backbone pairs come from `expected` (the matrix) and from the runs found; MLLM
    backbones are left out (the claims are about classifier backbones). Within each claim family
    (one claim on one dataset × backbone) the one-sided p-values of both directions are
    Holm-adjusted over the comparisons that have a test, and the verdicts read the adjusted values.
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
                family = []
                for a, b, metric in pairs:
                    if metric == SALIENCY:
                        metric = saliency_metric(df, dataset, backbone)
                    family.append({"claim": cid, **_pair_stats(df, dataset, backbone, a, b, metric,
                                                               alpha, expected)})
                adjusted = zip(holm([r["p_value"] for r in family]), holm([r["p_opposite"] for r in family]))
                family = [_decide(r, p, q, alpha) for r, (p, q) in zip(family, adjusted)]
                rows += family
    return pd.DataFrame(rows, columns=COLUMNS)


def claim_verdict(family: pd.DataFrame, alpha: float = 0.05) -> str:
    """One claim on one dataset × backbone. holds: every comparison is decidable and has RAW
    one-sided p < alpha (intersection–union test: "all hold" needs no multiplicity correction);
    fails: some comparison fails (Holm-adjusted opposite-direction p < alpha); else undecided."""
    if (family["verdict"] == "fails").any():
        return "fails"
    decidable = family["decidable"].astype(bool)
    if len(family) and (decidable & (family["p_value"] < alpha) & (family["diff"] > 0)).all():
        return "holds"
    return "undecided"


def claim_summary(claims: pd.DataFrame, alpha: float = 0.05, labels: Labels | None = None) -> pd.DataFrame:
    """Per (claim, dataset, backbone): the claim-level verdict (claim_verdict), the metric(s)
    compared and the count of comparisons per verdict."""
    labels = labels or Labels()
    rows = []
    for (cid, dataset, backbone), g in claims.groupby(["claim", "dataset", "backbone"], sort=False):
        counts = g["verdict"].value_counts()
        rows.append({"Claim": cid, "Statement": CLAIMS[cid][0] if cid in CLAIMS else "",
                     "Dataset": labels.dataset(dataset),
                     "Backbone": labels.backbone(backbone),
                     "Metric": ", ".join(dict.fromkeys(g["metric"])),
                     "Verdict": claim_verdict(g, alpha),
                     "Comparisons (holds/fails/undecided)":
                         f"{counts.get('holds', 0)}/{counts.get('fails', 0)}/{counts.get('undecided', 0)}"})
    return pd.DataFrame(rows)


def _fmt(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt_number(x, digits)


def _header(alpha: float) -> str:
    return (
        f"Paired across seeds (seed s of A with seed s of B), alpha = {alpha:g}. Per comparison: mean "
        f"difference A − B with its {CI_LEVEL:.0%} t interval, one-sided paired t-test A > B "
        "(scipy.stats.ttest_rel), Holm-adjusted within the claim family (one claim on one dataset "
        f"and backbone), and the minimum detectable effect MDE at {POWER:.0%} power, two-sided "
        "alpha. A comparison holds when its Holm-adjusted p < alpha and the difference > 0, fails "
        "when the Holm-adjusted p of the opposite direction < alpha, and is otherwise undecided "
        f"(always so with fewer than {MIN_PAIRED_SEEDS} paired seeds or a missing run). A claim "
        "holds on a dataset and backbone only if every comparison has raw one-sided p < alpha: an "
        "intersection-union test, which needs no multiplicity correction; it fails if any "
        "comparison fails. C2 compares mIoU over every test image's true map (miou_all) where the "
        "runs report it, else mIoU over the annotated images (miou): the Metric column says which.")


def write_claims(claims: pd.DataFrame, out_stem: str | Path, alpha: float = 0.05,
                 labels: Labels | None = None) -> list[Path]:
    """Write `<out_stem>.csv` (raw numbers), `<out_stem>.md` (summary, then every comparison) and
    `<out_stem>.tex` (the per-claim summary, for the manuscript)."""
    stem = Path(out_stem)
    csv_path, md_path, tex_path = (Path(f"{stem}{ext}") for ext in (".csv", ".md", ".tex"))
    write_text(csv_path, claims.to_csv(index=False))
    labels = labels or Labels()
    detail = pd.DataFrame({
        "Claim": claims["claim"],
        "Dataset": claims["dataset"].map(labels.dataset),
        "Backbone": claims["backbone"].map(labels.backbone),
        "A > B": [f"{method_label(a)} > {method_label(b)}" for a, b in zip(claims["a"], claims["b"])],
        "Metric": claims["metric"],
        "Mean A": claims["mean_a"].map(_fmt), "Mean B": claims["mean_b"].map(_fmt),
        "Diff": claims["diff"].map(_fmt),
        "95% CI": [f"[{_fmt(lo)}, {_fmt(hi)}]" for lo, hi in zip(claims["ci_low"], claims["ci_high"])],
        "MDE": claims["mde"].map(_fmt), "Cohen's d": claims["cohens_d"].map(lambda x: _fmt(x, 2)),
        "p": claims["p_value"].map(lambda x: _fmt(x, 3)),
        "p (Holm)": claims["p_holm"].map(lambda x: _fmt(x, 3)),
        "n": claims["n"], "Verdict": claims["verdict"], "Note": claims["note"],
    })
    summary = claim_summary(claims, alpha, labels) if len(claims) else pd.DataFrame(columns=["Claim"])
    text = "\n".join([
        "# Claims of the paper, checked on our runs",
        "",
        _header(alpha),
        "",
        "## Per claim",
        "",
        to_markdown(summary) if len(claims) else "(no claims evaluated)\n",
        "## Every comparison",
        "",
        to_markdown(detail) if len(claims) else "(none)\n",
    ])
    write_text(md_path, text)
    write_text(tex_path, to_latex(
        summary, caption=f"The paper's claims on our runs, paired across seeds, alpha = {alpha:g}: a "
                         "claim holds on a dataset and backbone only if every comparison in it has "
                         "one-sided p < alpha (intersection-union test, no correction needed); it "
                         "fails if a comparison's Holm-adjusted p in the opposite direction is < alpha.",
        label=f"tab:{stem.name}"))
    return [csv_path, md_path, tex_path]
