"""Claim verdicts on constructed cases: clear win, clear loss, noise, one seed, missing run."""
from __future__ import annotations

import pandas as pd
import pytest

from megl.report.claims import COLUMNS, compare_pair, evaluate_claims, write_claims
from megl.report.collect import expected_runs


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


def test_noise_is_inconclusive():
    r = compare_pair(frame({"megl": [0.71, 0.69, 0.72, 0.70], "baseline": [0.70, 0.71, 0.70, 0.71]}),
                     "objects", "resnet18", "megl", "baseline", "accuracy")
    assert r["verdict"] == "inconclusive" and "both directions" in r["note"]


def test_two_seeds_with_a_constant_gap_are_inconclusive():
    # Two seeds that move by exactly the same amount make an infinite t statistic: no verdict.
    r = compare_pair(frame({"megl": [0.08, 0.10], "baseline": [0.06, 0.08]}),
                     "objects", "resnet18", "megl", "baseline", "accuracy")
    assert r["verdict"] == "inconclusive" and "at least 3" in r["note"]
    assert abs(r["diff"] - 0.02) < 1e-12


def test_one_seed_is_inconclusive():
    r = compare_pair(frame({"megl": [0.90], "baseline": [0.10]}),
                     "objects", "resnet18", "megl", "baseline", "accuracy")
    assert r["verdict"] == "inconclusive" and r["n"] == 1 and "n=1" in r["note"]


def test_missing_run_is_inconclusive_even_with_clear_win():
    df = frame({"megl": [0.80, 0.82, 0.81, 0.83], "baseline": [0.70, 0.71, 0.72, 0.72]})
    df = df[~((df["method"] == "baseline") & (df["seed"] == 3))]
    r = compare_pair(df, "objects", "resnet18", "megl", "baseline", "accuracy")
    assert r["verdict"] == "inconclusive" and "baseline seed 3" in r["note"] and r["n"] == 3


def test_alpha_from_argument():
    df = frame({"megl": [0.71, 0.73, 0.72], "baseline": [0.70, 0.70, 0.71]})
    strict = compare_pair(df, "objects", "resnet18", "megl", "baseline", "accuracy", alpha=0.001)
    loose = compare_pair(df, "objects", "resnet18", "megl", "baseline", "accuracy", alpha=0.2)
    assert strict["verdict"] == "inconclusive" and loose["verdict"] == "holds"


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
    assert cdep["verdict"] == "inconclusive" and "not run: cdep" in cdep["note"]
    c2 = claims[(claims["claim"] == "C2") & (claims["b"] == "baseline")].iloc[0]
    assert c2["verdict"] == "inconclusive"            # equal mIoU on every seed
    paths = write_claims(claims, tmp_path / "claims")
    assert paths[0].read_text().startswith("claim,dataset,backbone")
    md = paths[1].read_text()
    assert "| C5" in md and "holds" in md
