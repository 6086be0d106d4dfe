"""How large an effect a paired-seed design can detect, and how many seeds a target effect needs.

Both at the level and sidedness the claims actually test at: one-sided, alpha/k for a Holm family
of k comparisons (its first, strictest step). Power is solved exactly on the noncentral t
distribution by statsmodels (`TTestPower`, the one-sample t-test of the paired differences), not
by the normal-shift sum t(1−α) + t(power), which overstates the power of a 5-seed design
(docs/report.md gives both). On a pilot (≥ 8 seeds of two methods on one dataset × backbone):
`paired_sd` measures the spread of the paired differences, `seeds_needed` turns it into a number of
seeds, `mde` says what a given number of seeds can resolve.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from statsmodels.stats.power import TTestPower

from megl.errors import MEGLError

SIDED = {"one": "larger", "two": "two-sided"}


def _alternative(sided: str) -> str:
    if sided not in SIDED:
        raise MEGLError(f"power: sided must be 'one' or 'two', got {sided!r}")
    return SIDED[sided]


def mde(sd_d: float, n: int, level: float = 0.05, power: float = 0.8, sided: str = "one") -> float:
    """Minimum detectable effect of a paired t-test with n pairs at significance `level` (pass
    alpha/k for the first Holm step of a family of k): the mean difference δ at which the test
    rejects with probability `power` when the differences have standard deviation sd_d, i.e.
    δ = es · sd_d with es solved from the noncentral t (df = n − 1, noncentrality es·√n).
    NaN for n < 2 or a non-finite sd (no spread to scale by)."""
    if n < 2 or not math.isfinite(sd_d):
        return float("nan")
    if not 0 < level < 1:
        raise MEGLError(f"power: level must be in (0, 1), got {level}")
    es = TTestPower().solve_power(effect_size=None, nobs=n, alpha=level, power=power,
                                  alternative=_alternative(sided))
    return float(np.asarray(es).item() * sd_d)


def power_at(delta: float, sd_d: float, n: int, level: float = 0.05, sided: str = "one") -> float:
    """Power of the paired t-test with n pairs at `level` against a true mean difference delta."""
    return float(TTestPower().power(effect_size=delta / sd_d, nobs=n, alpha=level, alternative=_alternative(sided)))


def seeds_needed(sd_d: float, delta: float, level: float = 0.05, power: float = 0.8, sided: str = "one") -> int:
    """The fewest seeds (pairs) for which the paired t-test at `level` detects a mean difference
    |delta| with at least `power` (exact noncentral t; at least 2)."""
    if delta == 0:
        raise MEGLError("seeds_needed: the target effect delta must be non-zero")
    n = 2
    while power_at(abs(delta), sd_d, n, level, sided) < power:
        n += 1
    return n


def paired_sd(frame: pd.DataFrame, dataset: str, backbone: str, a: str, b: str, metric: str) -> float:
    """Sample std (ddof=1) of the seed-paired differences a − b of `metric` in the collected runs
    frame (megl.report.collect.collect_runs); needs at least two seeds where both have a value."""
    cell = frame[(frame["dataset"] == dataset) & (frame["backbone"] == backbone)]
    ra, rb = (cell.loc[cell["method"] == m, ["seed", metric]] for m in (a, b))
    merged = ra.merge(rb, on="seed", suffixes=("_a", "_b")).dropna()
    if len(merged) < 2:
        raise MEGLError(f"paired_sd: {a} and {b} share {len(merged)} seed(s) with a {metric!r} value "
                        f"on {dataset}/{backbone}; at least 2 are needed")
    d = merged[f"{metric}_a"].to_numpy(dtype="float64") - merged[f"{metric}_b"].to_numpy(dtype="float64")
    return float(np.std(d, ddof=1))
