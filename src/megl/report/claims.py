"""The paper's claims, checked on our runs with pre-registered paired tests across seeds.

Rules (docs/report.md states them with their reasons; the claims.md header repeats them):
1. One direction per comparison, the paper's: "a beats b". p = one-sided paired t-test a > b
   (scipy.stats.ttest_rel, alternative="greater"), paired by seed; mean_a / mean_b over the
   paired seeds only.
2. Family = one claim across every VALID cell (dataset × backbone, megl.report.validity) where its
   comparisons exist (both methods have runs or expected runs there); Holm (statsmodels) over every
   testable comparison of the family. A comparison holds when its Holm-adjusted p < alpha and the
   difference > 0, else it is "not shown"; one with fewer than MIN_PAIRED_SEEDS paired seeds or a
   run missing is "untestable" (with the reason) and is not in the family's k. A claim holds on a
   cell iff every one of its comparisons there holds.
3. The opposite direction is a separate exploratory look: two-sided paired t-test, Holm-adjusted in
   the same family; it never changes a verdict.
4. Each comparison's lower confidence bound is one-sided at the level Holm used for it,
   alpha · p / p_holm, so it is > 0 exactly when the comparison holds.
5. MDE: one-sided, 80 % power, at alpha / k (k = the family's size: Holm's first, strictest step).
6. Identical paired differences (zero variance): the exact sign-flip permutation p-value.
"""
from __future__ import annotations

import math
import textwrap
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from megl.io import write_text
from megl.methods import methods_in
from megl.report.collect import MLLM_BACKBONE
from megl.report.labels import Labels
from megl.report.power import mde as min_detectable_effect
from megl.report.tables import fmt_number, method_label, to_latex, to_markdown

# Saliency claims read `miou_all` (every test image's true map) where a cell has it, else `miou`.
SALIENCY = "miou"


def claim_definitions() -> dict[str, tuple[str, list[tuple[str, str, str]]]]:
    """claim id → (statement, list of (a, b, metric)); "a beats b" is the claimed direction. The
    families read the method registry's groups (megl.methods) when called."""
    visual, ablations = methods_in("visual_baseline"), methods_in("ablation")
    return {
        "C1": ("MEGL beats each visual-guidance baseline of its backbone in accuracy",
               [("megl", b, "accuracy") for b in visual]),
        "C2": ("MEGL beats each visual-guidance baseline of its backbone in saliency mIoU",
               [("megl", b, SALIENCY) for b in visual]),
        "C3": ("every component helps: MEGL beats each ablation in accuracy",
               [("megl", a, "accuracy") for a in ablations]),
        "C4": ("each ablation beats the baseline in accuracy",
               [(a, "baseline", "accuracy") for a in ablations]),
        "C5": ("text helps more than visual: Text-only beats Visual-only in accuracy",
               [("megl_text_only", "megl_visual_only", "accuracy")]),
    }


CLAIMS = claim_definitions()  # the registry as declared: the claims' ids and statements

# ci_low / ci_high: the plain two-sided 95 % t interval, UNADJUSTED (CSV only; the verdict's bound
# is lower_bound). level: the one-sided level Holm used for the comparison.
COLUMNS = ["claim", "dataset", "backbone", "a", "b", "metric", "mean_a", "mean_b", "diff", "sd_diff",
           "ci_low", "ci_high", "cohens_d", "p_value", "p_holm", "level", "lower_bound", "mde", "k",
           "p_two_sided", "p_holm_two_sided", "opposite", "n", "seeds", "testable", "verdict", "note"]

VERDICTS = ("holds", "not shown", "untestable")
OPPOSITE_COLUMN = "opposite (two-sided, exploratory)"
CI_LEVEL = 0.95
POWER = 0.8
# With two seeds a paired t-test has one degree of freedom; we test from three paired seeds on.
MIN_PAIRED_SEEDS = 3


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (statsmodels' multipletests); NaN entries (no test) stay
    NaN and do not count in the family size k."""
    p = np.asarray(pvalues, dtype="float64")
    out = np.full(p.shape, np.nan)
    tested = ~np.isnan(p)
    if tested.sum() == 1:  # a family of one is its own adjustment (and multipletests runs gc.collect)
        out[tested] = p[tested]
    elif tested.any():
        out[tested] = multipletests(p[tested], method="holm")[1]
    return out


# ---------------------------------------------------------------- cells and the comparisons in them
def claim_cells(df: pd.DataFrame, expected: pd.DataFrame | None = None) -> list[tuple[str, str]]:
    """Classifier dataset × backbone cells of the matrix (`expected`) and of the runs, matrix order
    first; the MLLM backbone is left out (the claims are about classifier backbones)."""
    frames = ([expected[["dataset", "backbone"]]] if expected is not None else []) + [df[["dataset", "backbone"]]]
    cells = pd.concat(frames).drop_duplicates()
    return [(d, b) for d, b in cells.itertuples(index=False) if b != MLLM_BACKBONE]


def methods_in_cell(df: pd.DataFrame, expected: pd.DataFrame | None, dataset: str, backbone: str) -> set[str]:
    """Methods with a run or an expected run on the cell: a comparison exists where both do."""
    found = set()
    for frame in (df, expected):
        if frame is not None and len(frame):
            sel = (frame["dataset"] == dataset) & (frame["backbone"] == backbone)
            found |= set(frame.loc[sel, "method"])
    return found


def saliency_metric(df: pd.DataFrame, dataset: str, backbone: str) -> str:
    """`miou_all` when any run of the cell carries it, else `miou`."""
    if "miou_all" not in df:
        return "miou"
    cell = df[(df["dataset"] == dataset) & (df["backbone"] == backbone)]
    return "miou_all" if cell["miou_all"].notna().any() else "miou"


def _expected_seeds(expected: pd.DataFrame | None, dataset: str, backbone: str, method: str) -> set[int]:
    if expected is None:
        return set()
    sel = ((expected["dataset"] == dataset) & (expected["backbone"] == backbone)
           & (expected["method"] == method))
    return {int(s) for s in expected.loc[sel, "seed"]}


def _missing(found: dict[str, set[int]], expected: dict[str, set[int]]) -> list[str]:
    """"method seed i,j" per method with seeds missing: the seeds wanted are the expected ones, else
    every seed either method has."""
    everything = set().union(*found.values())
    out = []
    for method in found:
        absent = sorted((expected[method] or everything) - found[method])
        if absent:
            out.append(f"{method} seed {','.join(map(str, absent))}")
    return out


# ---------------------------------------------------------------- the paired test
def paired_test(xa: np.ndarray, xb: np.ndarray) -> tuple[dict[str, float], list[str]]:
    """diff, sd_diff, the unadjusted two-sided 95 % t interval, Cohen's d, the one-sided p-value a > b
    (p_value) and the two-sided one (p_two_sided) of paired samples (NaN where too few).

    When every paired difference is the same (zero variance) the t statistic is undefined; the
    p-values are then the exact sign-flip permutation ones: n identical positive differences give
    2^-n one-sided (2^(1-n) two-sided); identical negative ones 1 one-sided; all zero 1."""
    n = len(xa)
    nan = float("nan")
    out = dict(diff=nan, sd_diff=nan, ci_low=nan, ci_high=nan, cohens_d=nan, p_value=nan, p_two_sided=nan)
    notes: list[str] = []
    if n >= 1:
        d = np.asarray(xa, dtype="float64") - np.asarray(xb, dtype="float64")
        out["diff"] = float(d.mean())
    if n < 2:
        return out, notes
    sd = float(d.std(ddof=1))
    out["sd_diff"] = sd
    half = stats.t.ppf(0.5 + CI_LEVEL / 2, n - 1) * sd / math.sqrt(n)
    out["ci_low"], out["ci_high"] = out["diff"] - half, out["diff"] + half
    if sd > 1e-12 * max(1.0, float(abs(d).max())):  # below this the spread is float rounding
        out["cohens_d"] = out["diff"] / sd
        out["p_value"] = float(stats.ttest_rel(xa, xb, alternative="greater").pvalue)
        out["p_two_sided"] = float(stats.ttest_rel(xa, xb).pvalue)
    elif out["diff"] != 0:
        out["sd_diff"] = 0.0
        out["p_value"] = 2.0 ** -n if out["diff"] > 0 else 1.0
        out["p_two_sided"] = min(1.0, 2.0 ** (1 - n))
        notes.append(f"identical difference on every seed: exact sign-flip p (one-sided "
                     f"{'2^-' + str(n) if out['diff'] > 0 else '1'})")
    else:
        out["sd_diff"] = 0.0
        out["p_value"] = out["p_two_sided"] = 1.0
        notes.append("no difference on any seed: p = 1")
    return out, notes


def pair_stats(df: pd.DataFrame, dataset: str, backbone: str, a: str, b: str, metric: str,
               expected: pd.DataFrame | None = None) -> dict[str, Any]:
    """The numbers of one comparison before any adjustment; `testable` and `note` say whether it can
    be tested (at least MIN_PAIRED_SEEDS paired seeds, no expected run missing) and why not."""
    def runs(method: str) -> pd.DataFrame:
        sel = (df["dataset"] == dataset) & (df["backbone"] == backbone) & (df["method"] == method)
        cols = ["seed", metric] if metric in df else ["seed"]
        out = df.loc[sel, cols]
        return out if metric in out else out.assign(**{metric: np.nan})

    ra, rb = runs(a), runs(b)
    found = {a: {int(s) for s in ra["seed"]}, b: {int(s) for s in rb["seed"]}}
    missing = _missing(found, {m: _expected_seeds(expected, dataset, backbone, m) for m in (a, b)})
    merged = ra.merge(rb, on="seed", suffixes=("_a", "_b")).dropna().sort_values("seed")
    n = int(len(merged))
    xa = merged[f"{metric}_a"].to_numpy(dtype="float64")
    xb = merged[f"{metric}_b"].to_numpy(dtype="float64")
    numbers, notes = paired_test(xa, xb)
    why = []
    if missing:
        why.append("missing runs: " + "; ".join(missing))
    if n < MIN_PAIRED_SEEDS:
        why.append(f"n={n} paired seed{'' if n == 1 else 's'} with a {metric} value: a test needs at least "
                   f"{MIN_PAIRED_SEEDS}")
    testable = not why
    if not testable:
        numbers["p_value"] = numbers["p_two_sided"] = float("nan")
        notes = why
    nan = float("nan")
    return {"dataset": dataset, "backbone": backbone, "a": a, "b": b, "metric": metric,
            "mean_a": float(xa.mean()) if n else nan, "mean_b": float(xb.mean()) if n else nan,
            **numbers, "n": n, "seeds": ",".join(str(int(s)) for s in merged["seed"]),
            "testable": testable, "note": "; ".join(notes)}


def comparison_rows(df: pd.DataFrame, expected: pd.DataFrame | None = None,
                    claims: Sequence[str] = tuple(CLAIMS)) -> list[dict[str, Any]]:
    """Every comparison of `claims` on every classifier cell where both of its methods have runs or
    expected runs (the run matrix is a union of blocks: a comparison absent from a cell is omitted),
    unadjusted (pair_stats), with its `claim`."""
    rows: list[dict[str, Any]] = []
    definitions = claim_definitions()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for cid in claims:
            for dataset, backbone in claim_cells(df, expected):
                present = methods_in_cell(df, expected, dataset, backbone)
                for a, b, metric in definitions[cid][1]:
                    if not {a, b} <= present:
                        continue
                    if metric == SALIENCY:
                        metric = saliency_metric(df, dataset, backbone)
                    rows.append({"claim": cid, **pair_stats(df, dataset, backbone, a, b, metric, expected)})
    return rows


def family_sizes(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """k per claim: its testable comparisons among `rows`."""
    k: dict[str, int] = {}
    for r in rows:
        k[r["claim"]] = k.get(r["claim"], 0) + int(bool(r["testable"]))
    return k


# ---------------------------------------------------------------- Holm, bound, MDE, verdict
def lower_bound(diff: float, sd: float, n: int, level: float) -> float:
    """One-sided lower confidence bound of the mean paired difference at `level`:
    d̄ − t(1 − level, n − 1) · sd / √n. With zero variance the sign-flip test's bound: d̄ when its
    p (2^-n) is below `level`, else −inf (no bound at this level)."""
    if n < 2 or not math.isfinite(level) or not math.isfinite(sd):
        return float("nan")
    if sd == 0:
        return diff if (diff > 0 and 2.0 ** -n < level) else float("-inf")
    return float(diff - stats.t.ppf(1 - level, n - 1) * sd / math.sqrt(n))


def decide_family(rows: Sequence[dict[str, Any]], alpha: float) -> list[dict[str, Any]]:
    """One family's rows with p_holm, level, lower_bound, mde, k, p_holm_two_sided, opposite and the
    verdict filled in (the module docstring's rules 2-5)."""
    p_holm = holm([r["p_value"] for r in rows])
    p_holm_two = holm([r["p_two_sided"] for r in rows])
    k = sum(bool(r["testable"]) for r in rows)
    out = []
    for r, ph, ph2 in zip(rows, p_holm, p_holm_two):
        r = dict(r)
        r["k"] = k
        r["mde"] = min_detectable_effect(r["sd_diff"], r["n"], alpha / max(k, 1), POWER, sided="one")
        note = [r["note"]] if r["note"] else []
        if not r["testable"]:
            r.update(p_holm=float("nan"), level=float("nan"), lower_bound=float("nan"),
                     p_holm_two_sided=float("nan"), opposite="", verdict="untestable")
        else:
            level = alpha * r["p_value"] / ph if ph > 0 else alpha / k
            r.update(p_holm=float(ph), level=float(level), p_holm_two_sided=float(ph2),
                     lower_bound=lower_bound(r["diff"], r["sd_diff"], r["n"], level))
            r["verdict"] = "holds" if (ph < alpha and r["diff"] > 0) else "not shown"
            r["opposite"] = "b > a" if (ph2 < alpha and r["diff"] < 0) else ""
            if r["verdict"] == "not shown" and abs(r["diff"]) < r["mde"]:
                note.append(f"|diff| below the MDE {fmt_number(r['mde'], 4)}: the design could not see an "
                            "effect this small")
        r["note"] = "; ".join(note)
        out.append(r)
    return out


def compare_pair(df: pd.DataFrame, dataset: str, backbone: str, a: str, b: str, metric: str,
                 alpha: float = 0.05, expected: pd.DataFrame | None = None) -> dict[str, Any]:
    """One comparison "a beats b" as a family of its own (k = 1, p_holm = p_value), by the same
    rules as the claims."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return decide_family([pair_stats(df, dataset, backbone, a, b, metric, expected)], alpha)[0]


def invalid_cells(validity: pd.DataFrame | None) -> set[tuple[str, str]]:
    if validity is None or validity.empty:
        return set()
    bad = validity[~validity["valid"].astype(bool)]
    return set(zip(bad["dataset"], bad["backbone"]))


def evaluate_claims(df: pd.DataFrame, alpha: float = 0.05, expected: pd.DataFrame | None = None,
                    claims: Sequence[str] = tuple(CLAIMS), validity: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (claim, valid cell, comparison present there): the columns of COLUMNS.

    With `validity` (megl.report.validity.cell_validity) only its valid cells enter the families
    (invalid cells and control twins are left out before Holm); without it every cell counts."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    rows = comparison_rows(df, expected, claims)
    if validity is not None:  # its cells are the claim cells (control twins are not), its valid ones count
        valid = set(zip(validity["dataset"], validity["backbone"])) - invalid_cells(validity)
        rows = [r for r in rows if (r["dataset"], r["backbone"]) in valid]
    decided: list[dict[str, Any]] = []
    for cid in claims:
        family = [r for r in rows if r["claim"] == cid]
        if family:
            decided += decide_family(family, alpha)
    return pd.DataFrame(decided, columns=COLUMNS)


# ---------------------------------------------------------------- claim level
def claim_verdict(family: pd.DataFrame) -> str:
    """One claim on one cell: "holds" iff every comparison of the claim there holds, else "not shown"."""
    return "holds" if len(family) and (family["verdict"] == "holds").all() else "not shown"


def claim_summary(claims: pd.DataFrame, labels: Labels | None = None) -> pd.DataFrame:
    """Per (claim, cell): the claim-level verdict, the metric(s) and the comparisons per verdict."""
    labels = labels or Labels()
    rows = []
    for (cid, dataset, backbone), g in claims.groupby(["claim", "dataset", "backbone"], sort=False):
        counts = g["verdict"].value_counts()
        rows.append({"Claim": cid, "Statement": CLAIMS[cid][0] if cid in CLAIMS else "",
                     "Dataset": labels.dataset(dataset), "Backbone": labels.backbone(backbone),
                     "Metric": ", ".join(dict.fromkeys(g["metric"])), "k": int(g["k"].iloc[0]),
                     "Verdict": claim_verdict(g),
                     "Comparisons (holds/not shown/untestable)":
                         "/".join(str(counts.get(v, 0)) for v in VERDICTS)})
    return pd.DataFrame(rows)


def claim_lines(claims: pd.DataFrame, labels: Labels | None = None,
                validity: pd.DataFrame | None = None) -> list[str]:
    """Per claim: "holds on i of j valid cells", the cells it is tested on and the cells left out."""
    labels = labels or Labels()
    left_out = [f"{labels.panel(d, b)}" for d, b in sorted(invalid_cells(validity))]
    lines = []
    for cid, (statement, _) in CLAIMS.items():
        sub = claims[claims["claim"] == cid]
        cells = list(dict.fromkeys(zip(sub["dataset"], sub["backbone"])))
        if not cells:
            lines.append(f"- **{cid}** ({statement}): not tested on any valid cell (its methods are in none).")
            continue
        held = [c for c in cells
                if claim_verdict(sub[(sub["dataset"] == c[0]) & (sub["backbone"] == c[1])]) == "holds"]
        names = ", ".join(labels.panel(d, b) for d, b in cells)
        lines.append(f"- **{cid}** ({statement}): holds on {len(held)} of {len(cells)} valid cells "
                     f"(k = {int(sub['k'].iloc[0])} comparisons in its Holm family; tested on {names})"
                     + (f"; left out as invalid: {', '.join(left_out)}" if left_out else "") + ".")
    return lines


# ---------------------------------------------------------------- writing
def _fmt(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "−∞" if x < 0 else "∞"
    return fmt_number(x, digits)


def header(alpha: float) -> str:
    """The rules, one markdown list item per rule, wrapped at 100 characters."""
    rules = [
        ("(1) Each comparison is tested in the paper's direction only, A beats B: one-sided paired t-test "
         "A > B (scipy.stats.ttest_rel, alternative=\"greater\"), seed s of A with seed s of B; Mean A and "
         "Mean B are over the paired seeds."),
        ("(2) A family is one claim across every VALID dataset × backbone (the validity table above) on "
         "which both methods of a comparison have runs; Holm (statsmodels) adjusts the p-values over every "
         "testable comparison of the family (k of them). A comparison **holds** when its Holm-adjusted "
         "p < alpha and the difference > 0, is **not shown** otherwise, and is **untestable** with fewer "
         f"than {MIN_PAIRED_SEEDS} paired seeds or a run missing (the note says which; it is not in k). A "
         "claim holds on a cell iff every comparison of the claim there holds."),
        ("(3) The column \"" + OPPOSITE_COLUMN + "\" is exploratory: a two-sided paired t-test, "
         "Holm-adjusted in the same family, reads \"b > a\" when its adjusted p < alpha and the "
         "difference < 0; it never changes a verdict."),
        ("(4) Bound: the one-sided lower confidence bound of the mean difference at the level Holm used for "
         "the comparison, alpha · p / p (Holm); it is > 0 exactly when the comparison holds (claims.csv "
         "also has the unadjusted two-sided 95 % t interval, ci_low/ci_high)."),
        ("(5) MDE: the mean difference the design detects with 80 % power, one-sided, at alpha / k (Holm's "
         "first, strictest step), solved on the noncentral t (scipy.stats.nct)."),
        ("(6) When every paired difference is the same, t is undefined: p is the exact sign-flip "
         "permutation p-value (2^-n for n identical positive differences, 1 when all are zero)."),
        ("C2 compares mIoU over every test image's true map (miou_all) where the runs report it, else mIoU "
         "over the annotated images (miou)."),
    ]
    lines = [f"Pre-registered rules, alpha = {alpha:g}:", ""]
    for rule in rules:  # no line may start with "<" or ">" (markdown would read a quote): keep them glued
        glued = rule.replace(" > ", "\u00a0>\u00a0").replace(" < ", "\u00a0<\u00a0")
        lines.append(textwrap.fill(glued, width=100, initial_indent="- ", subsequent_indent="  ",
                                   break_long_words=False, break_on_hyphens=False).replace("\u00a0", " "))
    return "\n".join(lines)


def detail_table(claims: pd.DataFrame, labels: Labels | None = None) -> pd.DataFrame:
    labels = labels or Labels()
    return pd.DataFrame({
        "Claim": claims["claim"],
        "Dataset": claims["dataset"].map(labels.dataset),
        "Backbone": claims["backbone"].map(labels.backbone),
        "A > B": [f"{method_label(a)} > {method_label(b)}" for a, b in zip(claims["a"], claims["b"])],
        "Metric": claims["metric"],
        "Mean A": claims["mean_a"].map(_fmt), "Mean B": claims["mean_b"].map(_fmt),
        "Diff": claims["diff"].map(_fmt),
        "Bound": [f"≥ {_fmt(lb)} (one-sided, Holm level {_fmt(lv, 4)})" if t else "n/a"
                  for lb, lv, t in zip(claims["lower_bound"], claims["level"], claims["testable"])],
        "MDE": claims["mde"].map(_fmt), "Cohen's d": claims["cohens_d"].map(lambda x: _fmt(x, 2)),
        "p": claims["p_value"].map(lambda x: _fmt(x, 3)),
        "p (Holm)": claims["p_holm"].map(lambda x: _fmt(x, 3)),
        "k": claims["k"], "n": claims["n"], "Verdict": claims["verdict"],
        OPPOSITE_COLUMN: claims["opposite"], "Note": claims["note"],
    })


def write_claims(claims: pd.DataFrame, out_stem: str | Path, alpha: float = 0.05,
                 labels: Labels | None = None, validity: pd.DataFrame | None = None) -> list[Path]:
    """Write `<out_stem>.csv` (every column), `<out_stem>.md` (the cell validity table, the rules,
    per claim, per claim and cell, every comparison), `<out_stem>.tex` (the per claim and cell
    table) and, with `validity`, `validity.csv` beside them."""
    from megl.report.validity import validity_table  # validity imports this module

    stem = Path(out_stem)
    csv_path, md_path, tex_path = (Path(f"{stem}{ext}") for ext in (".csv", ".md", ".tex"))
    labels = labels or Labels()
    written = [csv_path, md_path, tex_path]
    write_text(csv_path, claims.to_csv(index=False))
    parts = ["# Claims of the paper, checked on our runs", ""]
    if validity is not None:
        validity_path = stem.with_name("validity.csv")
        write_text(validity_path, validity.to_csv(index=False))
        written.append(validity_path)
        parts += ["## Cell validity (computed before the claims; invalid cells are in no family or tally)", "",
                  to_markdown(validity_table(validity, labels)) if len(validity) else "(no cells)\n"]
    summary = claim_summary(claims, labels) if len(claims) else pd.DataFrame(columns=["Claim"])
    parts += ["## Rules", "", header(alpha), "", "## Per claim", "", *claim_lines(claims, labels, validity), "",
              "## Per claim and cell", "", to_markdown(summary) if len(claims) else "(no claims evaluated)\n",
              "## Every comparison", "", to_markdown(detail_table(claims, labels)) if len(claims) else "(none)\n"]
    write_text(md_path, "\n".join(parts))
    write_text(tex_path, to_latex(
        summary, caption=f"The paper's claims on our valid cells, paired across seeds, alpha = {alpha:g}: "
                         "one-sided paired t-tests in the paper's direction, Holm-adjusted over each "
                         "claim's comparisons across cells; a claim holds on a cell iff every comparison "
                         "in it holds.",
        label=f"tab:{stem.name}"))
    return written
