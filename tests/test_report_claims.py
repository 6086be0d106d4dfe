"""Claim statistics on constructed cases: the pre-registered rules of megl.report.claims (one-sided
tests in the paper's direction, Holm across the valid cells of a claim, Holm-level bounds, MDE at
alpha/k, sign-flip p for zero variance, comparisons only where both methods are in the matrix)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from megl.methods import methods_in
from megl.report.claims import (
    COLUMNS,
    OPPOSITE_COLUMN,
    claim_lines,
    claim_summary,
    claim_verdict,
    compare_pair,
    decide_family,
    evaluate_claims,
    holm,
    paired_test,
    write_claims,
)
from megl.report.collect import expected_runs
from megl.report.power import mde, paired_sd, power_at, seeds_needed

VISUAL_BASELINES = methods_in("visual_baseline")


def frame(values: dict[str, list[float]], metric: str = "accuracy", dataset: str = "objects",
          backbone: str = "resnet18") -> pd.DataFrame:
    rows = [{"dataset": dataset, "backbone": backbone, "method": m, "seed": s, metric: v}
            for m, vs in values.items() for s, v in enumerate(vs) if v is not None]
    return pd.DataFrame(rows)


def pair(values: dict[str, list[float]], **kw) -> dict:
    return compare_pair(frame(values), "objects", "resnet18", "megl", "baseline", "accuracy", **kw)


def test_clear_win_holds_with_scipy_p_and_a_positive_bound():
    a, b = [0.80, 0.82, 0.81, 0.83], [0.70, 0.71, 0.72, 0.72]
    r = pair({"megl": a, "baseline": b})
    assert r["verdict"] == "holds" and r["n"] == 4 and r["k"] == 1 and r["seeds"] == "0,1,2,3"
    assert r["p_value"] == pytest.approx(stats.ttest_rel(a, b, alternative="greater").pvalue)
    assert r["p_holm"] == pytest.approx(r["p_value"]) and r["level"] == pytest.approx(0.05)
    assert r["diff"] == pytest.approx(0.1025) and r["lower_bound"] > 0
    # the bound is scipy's one-sided interval at the level Holm used
    ci = stats.ttest_rel(a, b, alternative="greater").confidence_interval(confidence_level=1 - r["level"])
    assert r["lower_bound"] == pytest.approx(ci.low)


def test_clear_loss_is_not_shown_and_only_the_exploratory_column_says_so():
    r = pair({"megl": [0.60, 0.61, 0.62, 0.60], "baseline": [0.70, 0.71, 0.72, 0.72]})
    assert r["verdict"] == "not shown" and r["p_value"] > 0.95 and r["lower_bound"] < 0
    assert r["opposite"] == "b > a" and r["p_holm_two_sided"] < 0.05


def test_noise_is_not_shown_below_the_mde():
    r = pair({"megl": [0.71, 0.69, 0.72, 0.70], "baseline": [0.70, 0.71, 0.70, 0.71]})
    assert r["verdict"] == "not shown" and r["opposite"] == ""
    assert abs(r["diff"]) < r["mde"] and "below the MDE" in r["note"]


def test_means_are_over_the_paired_seeds_only():
    # megl has a 4th seed that baseline lacks: it is not in mean_a, and the comparison is untestable
    r = pair({"megl": [0.80, 0.82, 0.81, 0.99], "baseline": [0.70, 0.71, 0.72]})
    assert r["mean_a"] == pytest.approx(np.mean([0.80, 0.82, 0.81])) and r["n"] == 3
    assert r["verdict"] == "untestable" and "missing runs: baseline seed 3" in r["note"]
    assert np.isnan(r["p_value"]) and np.isnan(r["lower_bound"])


def test_two_paired_seeds_are_untestable():
    r = pair({"megl": [0.08, 0.10], "baseline": [0.06, 0.08]})
    assert r["verdict"] == "untestable" and "at least 3" in r["note"] and r["diff"] == pytest.approx(0.02)


def test_alpha_from_argument():
    values = {"megl": [0.71, 0.73, 0.72], "baseline": [0.70, 0.70, 0.71]}
    assert pair(values, alpha=0.001)["verdict"] == "not shown"
    assert pair(values, alpha=0.2)["verdict"] == "holds"


# ---------------------------------------------------------------- zero variance: sign-flip p
@pytest.mark.parametrize("n", [3, 5, 6])
def test_identical_positive_differences_get_the_exact_sign_flip_p(n):
    base = list(np.linspace(0.6, 0.7, n))
    r = pair({"megl": [x + 0.05 for x in base], "baseline": base})
    assert r["p_value"] == pytest.approx(2.0 ** -n) and r["p_two_sided"] == pytest.approx(2.0 ** (1 - n))
    assert "sign-flip" in r["note"]
    # 2^-3 = .125 >= .05: not shown, no bound; 2^-5 = .031 < .05: holds, bound = the difference
    assert r["verdict"] == ("holds" if 2.0 ** -n < 0.05 else "not shown")
    assert (r["lower_bound"] > 0) == (r["verdict"] == "holds")


def test_identical_zero_and_negative_differences():
    base = [0.6, 0.65, 0.7, 0.62, 0.66, 0.61]
    zero = pair({"megl": base, "baseline": base})
    assert zero["p_value"] == 1.0 and zero["p_two_sided"] == 1.0 and zero["verdict"] == "not shown"
    neg = pair({"megl": [x - 0.05 for x in base], "baseline": base})
    assert neg["p_value"] == 1.0 and neg["p_two_sided"] == pytest.approx(2.0 ** -5) and neg["opposite"] == "b > a"
    assert neg["verdict"] == "not shown"


# ---------------------------------------------------------------- families across cells
def c1_runs(gaps: dict[str, list[float]], dataset: str = "objects", backbone: str = "resnet18",
            megl=(0.80, 0.78, 0.83, 0.81)) -> pd.DataFrame:
    """MEGL and every visual baseline on len(megl) seeds; baseline b = MEGL − gaps[b] per seed."""
    return frame({"megl": list(megl), **{b: [m - g for m, g in zip(megl, gaps[b])] for b in VISUAL_BASELINES}},
                 dataset=dataset, backbone=backbone)


CLEAR = [0.10, 0.11, 0.09, 0.10]


def test_holm_family_is_one_claim_across_cells():
    df = pd.concat([c1_runs({b: CLEAR for b in VISUAL_BASELINES}),
                    c1_runs({b: [0.01, 0.03, 0.005, 0.02] for b in VISUAL_BASELINES}, backbone="vit_b_16")])
    fam = evaluate_claims(df, claims=["C1"])
    assert len(fam) == 10 and set(fam["k"]) == {10}
    assert fam["p_holm"].to_numpy() == pytest.approx(multipletests(fam["p_value"], method="holm")[1])
    # MDE at one-sided alpha / k
    r = fam.iloc[0]
    assert r["mde"] == pytest.approx(mde(r["sd_diff"], r["n"], 0.05 / 10, sided="one"))
    summary = claim_summary(fam)
    assert list(summary["Verdict"]) == ["holds", "not shown"]
    assert summary["Comparisons (holds/not shown/untestable)"].iloc[0] == "5/0/0"
    lines = claim_lines(fam)
    assert "holds on 1 of 2 valid cells" in lines[0] and "k = 10" in lines[0]


def test_invalid_cells_leave_the_family_and_the_tally():
    df = pd.concat([c1_runs({b: CLEAR for b in VISUAL_BASELINES}),
                    c1_runs({b: CLEAR for b in VISUAL_BASELINES}, backbone="vit_b_16")])
    validity = pd.DataFrame({"dataset": ["objects", "objects"], "backbone": ["resnet18", "vit_b_16"],
                             "valid": [True, False], "reason": ["", "baseline at chance level"]})
    fam = evaluate_claims(df, claims=["C1"], validity=validity)
    assert set(fam["backbone"]) == {"resnet18"} and set(fam["k"]) == {5}
    line = claim_lines(fam, validity=validity)[0]
    assert "holds on 1 of 1 valid cells" in line and "left out as invalid: objects / vit_b_16" in line


def test_claim_holds_only_when_every_comparison_holds():
    fam = evaluate_claims(c1_runs({b: CLEAR for b in VISUAL_BASELINES}), claims=["C1"])
    assert set(fam["verdict"]) == {"holds"} and claim_verdict(fam) == "holds"
    noisy = evaluate_claims(c1_runs({b: CLEAR for b in VISUAL_BASELINES} | {"haics": [0.01, -0.02, 0.02, -0.01]}),
                            claims=["C1"])
    assert noisy.loc[noisy["b"] == "haics", "verdict"].item() == "not shown" and claim_verdict(noisy) == "not shown"


def test_raw_p_below_alpha_is_not_enough_after_holm():
    # raw one-sided p ≈ .03 for every comparison, Holm multiplies the smallest by 5: nothing holds
    fam = evaluate_claims(c1_runs({b: [0.01, 0.03, 0.005, 0.02] for b in VISUAL_BASELINES}), claims=["C1"])
    assert (fam["p_value"] < 0.05).all() and (fam["p_holm"] >= 0.05).all()
    assert set(fam["verdict"]) == {"not shown"} and claim_verdict(fam) == "not shown"
    assert (fam["lower_bound"] <= 0).all()


def test_bound_is_positive_exactly_when_the_comparison_holds_on_random_families():
    # families of 1-15 comparisons (the rows pair_stats makes, from random paired samples), decided
    # by the code evaluate_claims runs
    rng = np.random.default_rng(7)
    checked = holds = 0
    for _ in range(25):   # 25 families: statsmodels multipletests runs gc.collect() per call
        n, k = int(rng.integers(3, 7)), int(rng.integers(1, 16))
        rows = []
        for _ in range(k):
            xb = rng.uniform(0.6, 0.8, n)
            xa = xb + rng.normal(rng.uniform(-0.02, 0.06), rng.uniform(0.005, 0.03), n)
            numbers, _ = paired_test(xa, xb)
            rows.append({"claim": "C1", **numbers, "n": n, "testable": True, "note": ""})
        fam = pd.DataFrame(decide_family(rows, 0.05))
        assert ((fam["lower_bound"] > 0) == (fam["verdict"] == "holds")).all()
        assert (fam["level"] <= 0.05 + 1e-12).all() and (fam["level"] >= 0.05 / k - 1e-12).all()
        checked += len(fam)
        holds += int((fam["verdict"] == "holds").sum())
    assert checked > 100 and 0 < holds < checked          # both outcomes were exercised


def test_a_null_comparison_rarely_holds_in_the_claimed_direction():
    rng = np.random.default_rng(3)
    verdicts = [pair({"megl": list(x), "baseline": list(y)})["verdict"]
                for x, y in (rng.normal(0.7, 0.02, (2, 5)) for _ in range(300))]
    assert verdicts.count("holds") / 300 < 0.05 + 0.03      # one direction at alpha: about 5 %


# ---------------------------------------------------------------- blocks: where the methods are
def test_comparisons_exist_only_where_both_methods_are():
    a = frame({"megl": [0.8, 0.81, 0.82], "baseline": [0.7, 0.71, 0.7]})
    b = frame({"megl": [0.8, 0.81, 0.82], "baseline": [0.7, 0.71, 0.7], "cdep": [0.75, 0.74, 0.76]},
              backbone="vit_b_16")
    matrix = expected_runs({"datasets": ["objects"], "backbones": ["vit_b_16"],
                            "methods": ["baseline", "megl", "cdep", "haics"], "seeds": [0, 1, 2]})
    fam = evaluate_claims(pd.concat([a, b]), expected=matrix, claims=["C1"])
    pairs = set(zip(fam["backbone"], fam["b"]))
    assert pairs == {("resnet18", "baseline"), ("vit_b_16", "baseline"), ("vit_b_16", "cdep"), ("vit_b_16", "haics")}
    haics = fam[fam["b"] == "haics"].iloc[0]                  # in the matrix, never run: untestable, not in k
    assert haics["verdict"] == "untestable" and "missing runs: haics seed 0,1,2" in haics["note"]
    assert set(fam["k"]) == {3}


# ---------------------------------------------------------------- files
def test_evaluate_claims_rows_and_files(tmp_path):
    methods = ["baseline", "megl", "megl_text_only", "megl_visual_only"]
    matrix = {"datasets": ["objects"], "backbones": ["resnet18"], "methods": methods, "seeds": [0, 1, 2, 3, 4]}
    df = frame({"baseline": [0.60, 0.61, 0.62, 0.60, 0.61], "megl": [0.80, 0.82, 0.81, 0.80, 0.83],
                "megl_text_only": [0.75, 0.76, 0.78, 0.74, 0.77], "megl_visual_only": [0.70, 0.70, 0.71, 0.69, 0.7]})
    df["miou"] = 0.3
    claims = evaluate_claims(df, alpha=0.05, expected=expected_runs(matrix))
    assert list(claims.columns) == COLUMNS
    assert claims.loc[claims["claim"] == "C5", "verdict"].item() == "holds"
    assert "cdep" not in set(claims["b"])                    # not in the matrix: no comparison
    c2 = claims[claims["claim"] == "C2"].iloc[0]
    assert c2["verdict"] == "not shown" and "no difference on any seed" in c2["note"]
    paths = write_claims(claims, tmp_path / "claims")
    assert paths[0].read_text().startswith("claim,dataset,backbone")
    md = paths[1].read_text()
    assert "| C5" in md and "holds" in md and "Pre-registered rules" in md and OPPOSITE_COLUMN in md
    assert "(one-sided, Holm level" in md and "≥ ." in md and "holds on 1 of 1 valid cells" in md
    assert "95% CI" not in md                                 # the unadjusted interval is in the CSV only
    assert {"ci_low", "ci_high", "lower_bound", "level", "p_holm", "mde", "k", "verdict"} <= set(pd.read_csv(paths[0]))


# ---------------------------------------------------------------- statistics by hand
def test_holm_matches_hand_computed_values():
    # sorted: .005·4 = .02, .01·3 = .03, .03·2 = .06, .04·1 = .04 → .06 (step-down keeps it monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.01, float("nan"), 0.04])                  # no test (NaN): not counted in k
    assert out[0] == pytest.approx(0.02) and np.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_unadjusted_ci_equals_scipy_confidence_interval():
    a, b = [0.81, 0.78, 0.84, 0.80, 0.79], [0.75, 0.77, 0.76, 0.78, 0.70]
    r = pair({"megl": a, "baseline": b})
    ci = stats.ttest_rel(a, b).confidence_interval()
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((ci.low, ci.high), abs=1e-12)


@pytest.mark.parametrize("n,k", [(5, 1), (5, 5), (5, 30), (3, 10)])
def test_at_the_mde_the_test_at_alpha_over_k_rejects_80_percent(n, k):
    level = 0.05 / k
    delta = mde(1.0, n, level, 0.8, sided="one")
    rng = np.random.default_rng(n * 100 + k)
    d = rng.normal(delta, 1.0, size=(4000, n))
    rate = (stats.ttest_1samp(d, 0.0, axis=1, alternative="greater").pvalue < level).mean()
    assert rate == pytest.approx(0.80, abs=0.05)
    # the normal-shift sum t(1-level) + t(.8) understates the MDE at alpha/k, k >= 5 (docs/report.md)
    approx = (stats.t.ppf(1 - level, n - 1) + stats.t.ppf(0.8, n - 1)) / np.sqrt(n)
    assert delta > approx or k == 1
    # two-sided at the same level needs a larger effect
    assert mde(1.0, n, level, 0.8, sided="two") > delta


def test_seeds_needed_is_the_first_n_with_the_power_and_paired_sd():
    n = seeds_needed(0.02, 0.01, level=0.01)
    assert power_at(0.01, 0.02, n, 0.01) >= 0.8 > power_at(0.01, 0.02, n - 1, 0.01)
    assert seeds_needed(0.02, -0.01, level=0.01) == n
    d = np.array([0.10, 0.12, 0.09, 0.11])
    df = frame({"megl": list(0.7 + d), "baseline": [0.7] * 4})
    assert paired_sd(df, "objects", "resnet18", "megl", "baseline", "accuracy") == pytest.approx(d.std(ddof=1))


def test_saliency_claim_uses_miou_all_where_present():
    df = c1_runs({b: CLEAR for b in VISUAL_BASELINES}).rename(columns={"accuracy": "miou"})
    assert set(evaluate_claims(df, claims=["C2"])["metric"]) == {"miou"}
    df["miou_all"] = df["miou"] + 0.01
    fam = evaluate_claims(df, claims=["C2"])
    assert set(fam["metric"]) == {"miou_all"} and claim_summary(fam)["Metric"].item() == "miou_all"


def test_rules_header_reads_as_wrapped_lines() -> None:
    """The rules header is one list item per rule, no line over 100 characters, none that markdown
    would read as a quote; the rule text is the whole text (nothing lost in the wrapping)."""
    from megl.report.claims import header

    text = header(0.05)
    lines = text.splitlines()
    assert len(lines) > 10 and max(len(line) for line in lines) <= 100
    assert not [line for line in lines if line.lstrip().startswith((">", "<"))]
    items = [line for line in lines if line.startswith("- (")]
    assert [item[3] for item in items] == list("123456")
    flat = " ".join(line.strip() for line in lines)
    assert "one-sided paired t-test A > B (scipy.stats.ttest_rel" in flat and "alpha = 0.05" in flat
