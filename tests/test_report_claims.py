"""Claim statistics on constructed cases: verdicts, Holm, CI, MDE, claim-level rules, missing runs."""
from __future__ import annotations

import pandas as pd
import pytest

import numpy as np
from scipy import stats

from megl.methods import VISUAL_BASELINES
from megl.report.claims import (COLUMNS, claim_summary, claim_verdict, compare_pair, evaluate_claims,
                                holm, write_claims)
from megl.report.collect import expected_runs
from megl.report.power import mde, paired_sd, seeds_needed


def frame(values: dict[str, list[float]], metric: str = "accuracy", dataset: str = "objects",
          backbone: str = "resnet18") -> pd.DataFrame:
    rows = [{"dataset": dataset, "backbone": backbone, "method": m, "seed": s, metric: v}
            for m, vs in values.items() for s, v in enumerate(vs)]
    return pd.DataFrame(rows)


def test_clear_win_holds():
    r = compare_pair(frame({"megl": [0.80, 0.82, 0.81, 0.83], "baseline": [0.70, 0.71, 0.72, 0.72]}),
                     "objects", "resnet18", "megl", "baseline", "accuracy")
    assert r["verdict"] == "holds" and r["p_value"] < 0.05 and r["n"] == 4
    assert r["diff"] == pytest.approx(0.1025) and r["cohens_d"] > 5 and r["seeds"] == "0,1,2,3"


def test_clear_loss_fails():
    r = compare_pair(frame({"megl": [0.60, 0.61, 0.62, 0.60], "baseline": [0.70, 0.71, 0.72, 0.72]}),
                     "objects", "resnet18", "megl", "baseline", "accuracy")
    assert r["verdict"] == "fails" and r["diff"] < 0 and r["p_value"] > 0.95


def test_noise_is_undecided():
    r = compare_pair(frame({"megl": [0.71, 0.69, 0.72, 0.70], "baseline": [0.70, 0.71, 0.70, 0.71]}),
                     "objects", "resnet18", "megl", "baseline", "accuracy")
    assert r["verdict"] == "undecided" and "both directions" in r["note"]
    assert abs(r["diff"]) < r["mde"] and "within noise: the design detects ≥ MDE" in r["note"]


def test_two_seeds_with_a_constant_gap_are_undecided():
    # Two seeds that move by exactly the same amount make an infinite t statistic: no verdict.
    r = compare_pair(frame({"megl": [0.08, 0.10], "baseline": [0.06, 0.08]}),
                     "objects", "resnet18", "megl", "baseline", "accuracy")
    assert r["verdict"] == "undecided" and "at least 3" in r["note"]
    assert abs(r["diff"] - 0.02) < 1e-12


def test_one_seed_is_undecided():
    r = compare_pair(frame({"megl": [0.90], "baseline": [0.10]}),
                     "objects", "resnet18", "megl", "baseline", "accuracy")
    assert r["verdict"] == "undecided" and r["n"] == 1 and "n=1" in r["note"]


def test_missing_run_is_undecided_even_with_clear_win():
    df = frame({"megl": [0.80, 0.82, 0.81, 0.83], "baseline": [0.70, 0.71, 0.72, 0.72]})
    df = df[~((df["method"] == "baseline") & (df["seed"] == 3))]
    r = compare_pair(df, "objects", "resnet18", "megl", "baseline", "accuracy")
    assert r["verdict"] == "undecided" and "baseline seed 3" in r["note"] and r["n"] == 3


def test_alpha_from_argument():
    df = frame({"megl": [0.71, 0.73, 0.72], "baseline": [0.70, 0.70, 0.71]})
    strict = compare_pair(df, "objects", "resnet18", "megl", "baseline", "accuracy", alpha=0.001)
    loose = compare_pair(df, "objects", "resnet18", "megl", "baseline", "accuracy", alpha=0.2)
    assert strict["verdict"] == "undecided" and loose["verdict"] == "holds"


def test_evaluate_claims_rows_and_files(tmp_path):
    methods = ["baseline", "megl", "megl_text_only", "megl_visual_only"]
    matrix = {"datasets": ["objects"], "backbones": ["resnet18"], "methods": methods, "seeds": [0, 1, 2]}
    df = frame({"baseline": [0.60, 0.61, 0.62], "megl": [0.80, 0.82, 0.81],
                "megl_text_only": [0.75, 0.76, 0.78], "megl_visual_only": [0.70, 0.70, 0.71]})
    df["miou"] = 0.3
    claims = evaluate_claims(df, alpha=0.05, expected=expected_runs(matrix))
    assert list(claims.columns) == COLUMNS
    c5 = claims[claims["claim"] == "C5"].iloc[0]
    assert c5["verdict"] == "holds"
    c1 = claims[(claims["claim"] == "C1") & (claims["b"] == "baseline")].iloc[0]
    assert c1["verdict"] == "holds"
    cdep = claims[(claims["claim"] == "C1") & (claims["b"] == "cdep")].iloc[0]
    assert cdep["verdict"] == "undecided" and "not run: cdep" in cdep["note"]
    c2 = claims[(claims["claim"] == "C2") & (claims["b"] == "baseline")].iloc[0]
    assert c2["verdict"] == "undecided"            # equal mIoU on every seed
    paths = write_claims(claims, tmp_path / "claims")
    assert paths[0].read_text().startswith("claim,dataset,backbone")
    md = paths[1].read_text()
    assert "| C5" in md and "holds" in md
    summary = claim_summary(claims)
    c1_row = summary[summary["Claim"] == "C1"].iloc[0]
    assert c1_row["Verdict"] == "undecided" and c1_row["Metric"] == "accuracy"   # 4 baselines not run
    assert "intersection-union" in md and "p (Holm)" in md and "95% CI" in md
    assert {"ci_low", "ci_high", "p_holm", "mde", "n", "verdict", "note"} <= set(pd.read_csv(paths[0]).columns)


# ---------------------------------------------------------------- statistics by hand
def test_holm_matches_hand_computed_values():
    # sorted: .005·4 = .02, .01·3 = .03, .03·2 = .06, .04·1 = .04 → .06 (step-down keeps it monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # a comparison without a test (NaN) is not counted in k
    out = holm([0.01, float("nan"), 0.04])
    assert out[0] == pytest.approx(0.02) and np.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])                 # capped at 1


def test_ci_equals_scipy_confidence_interval():
    a = [0.81, 0.78, 0.84, 0.80, 0.79]
    b = [0.75, 0.77, 0.76, 0.78, 0.70]
    r = compare_pair(frame({"megl": a, "baseline": b}), "objects", "resnet18", "megl", "baseline", "accuracy")
    ci = stats.ttest_rel(a, b).confidence_interval()
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert r["p_value"] == pytest.approx(stats.ttest_rel(a, b, alternative="greater").pvalue)


def test_mde_and_seeds_needed_by_hand():
    # t(.975, 3) = 3.182446, t(.80, 3) = 0.978472: (3.182446 + 0.978472) · 0.02 / √4 = 0.0416092
    assert mde(0.02, 4) == pytest.approx(0.0416092, abs=1e-6)
    # z(.975) = 1.959964, z(.80) = 0.841621: (2.801585 · 0.02 / 0.01)² + 2 = 33.3955 → 34
    assert seeds_needed(0.02, 0.01) == 34
    assert seeds_needed(0.02, -0.01) == 34
    d = np.array([0.10, 0.12, 0.09, 0.11])
    df = frame({"megl": list(0.7 + d), "baseline": [0.7] * 4})
    assert paired_sd(df, "objects", "resnet18", "megl", "baseline", "accuracy") == pytest.approx(d.std(ddof=1))
    r = compare_pair(df, "objects", "resnet18", "megl", "baseline", "accuracy")
    assert r["mde"] == pytest.approx(mde(d.std(ddof=1), 4))


# ---------------------------------------------------------------- claim-level verdicts
def c1_runs(gaps: dict[str, list[float]]) -> pd.DataFrame:
    """MEGL and every visual baseline on 4 seeds; baseline b = MEGL − gaps[b] per seed."""
    megl = [0.80, 0.78, 0.83, 0.81]
    return frame({"megl": megl, **{b: [m - g for m, g in zip(megl, gaps[b])] for b in VISUAL_BASELINES}})


def c1(gaps: dict[str, list[float]]) -> pd.DataFrame:
    return evaluate_claims(c1_runs(gaps), claims=["C1"])


CLEAR = [0.10, 0.11, 0.09, 0.10]


def test_claim_holds_when_every_comparison_holds():
    fam = c1({b: CLEAR for b in VISUAL_BASELINES})
    assert set(fam["verdict"]) == {"holds"} and claim_verdict(fam) == "holds"
    assert (fam["p_holm"] >= fam["p_value"]).all()


def test_claim_fails_when_one_opposite_comparison_survives_holm():
    gaps = {b: CLEAR for b in VISUAL_BASELINES} | {"cdep": [-0.10, -0.11, -0.09, -0.10]}
    fam = c1(gaps)
    cdep = fam[fam["b"] == "cdep"].iloc[0]
    assert cdep["verdict"] == "fails" and cdep["p_holm_opposite"] < 0.05
    assert claim_verdict(fam) == "fails"


def test_claim_undecided_with_one_noisy_comparison():
    gaps = {b: CLEAR for b in VISUAL_BASELINES} | {"haics": [0.01, -0.02, 0.02, -0.01]}
    fam = c1(gaps)
    assert fam.loc[fam["b"] == "haics", "verdict"].item() == "undecided"
    assert claim_verdict(fam) == "undecided"


def test_claim_holds_by_intersection_union_though_holm_leaves_each_comparison_undecided():
    # raw one-sided p ≈ .03 for every comparison: < .05 each, but Holm multiplies the smallest by 5
    gaps = {b: [0.01, 0.03, 0.005, 0.02] for b in VISUAL_BASELINES}
    fam = c1(gaps)
    assert (fam["p_value"] < 0.05).all() and (fam["p_holm"] >= 0.05).all()
    assert set(fam["verdict"]) == {"undecided"}
    assert claim_verdict(fam) == "holds"


def test_claim_with_a_missing_run_never_holds():
    df = c1_runs({b: CLEAR for b in VISUAL_BASELINES})
    df = df[~((df["method"] == "res_l") & (df["seed"] == 3))]
    fam = evaluate_claims(df, claims=["C1"])
    assert "missing runs: res_l seed 3" in fam.loc[fam["b"] == "res_l", "note"].item()
    assert claim_verdict(fam) == "undecided"


def test_saliency_claim_uses_miou_all_where_present():
    df = c1_runs({b: CLEAR for b in VISUAL_BASELINES}).rename(columns={"accuracy": "miou"})
    assert set(evaluate_claims(df, claims=["C2"])["metric"]) == {"miou"}
    df["miou_all"] = df["miou"] + 0.01
    fam = evaluate_claims(df, claims=["C2"])
    assert set(fam["metric"]) == {"miou_all"} and claim_summary(fam)["Metric"].item() == "miou_all"
