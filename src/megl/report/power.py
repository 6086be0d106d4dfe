"""How large an effect a paired-seed design can detect, and how many seeds a target effect needs.

Both at the level and sidedness the claims actually test at: one-sided, alpha/k for a Holm family
of k comparisons (its first, strictest step). Power is the exact power of the paired t-test on the
noncentral t distribution (scipy.stats.nct), solved for the effect with scipy's brentq, not the
normal-shift sum t(1−α) + t(power), which overstates the power of a 5-seed design at alpha/k
(docs/report.md gives both). Hand-written on scipy because statsmodels' TTestPower returns NaN for
the two-sided power at small levels (the noncentral t's far tail). On a pilot (≥ 8 seeds of two methods
on one dataset × backbone):
`paired_sd` measures the spread of the paired differences, `seeds_needed` turns it into a number of
seeds, `mde` says what a given number of seeds can resolve.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import optimize, stats

from megl.errors import MEGLError

SIDED = ("one", "two")


def power_at(delta: float, sd_d: float, n: int, level: float = 0.05, sided: str = "one") -> float:
    """Power of the paired t-test with n pairs at `level` against a true mean difference delta ≥ 0
    (one-sided: a > b; two-sided: either tail, the far tail counted where finite)."""
    if sided not in SIDED:
        raise MEGLError(f"power: sided must be 'one' or 'two', got {sided!r}")
    df, ncp = n - 1, delta / sd_d * math.sqrt(n)
    crit = stats.t.ppf(1 - (level if sided == "one" else level / 2), df)
    power = stats.nct.sf(crit, df, ncp)
    if sided == "two":
        far = stats.nct.cdf(-crit, df, ncp)
        power += far if np.isfinite(far) else 0.0
    return float(power)


def mde(sd_d: float, n: int, level: float = 0.05, power: float = 0.8, sided: str = "one") -> float:
    """Minimum detectable effect of a paired t-test with n pairs at significance `level` (pass
    alpha/k for the first Holm step of a family of k): the true mean difference at which the test
    rejects with probability `power` when the differences have standard deviation sd_d.
    NaN for n < 2 or a non-finite sd (no spread to scale by); 0 when sd_d is 0."""
    if n < 2 or not math.isfinite(sd_d):
        return float("nan")
    if not 0 < level < 1 or not 0 < power < 1:
        raise MEGLError(f"power: level and power must be in (0, 1), got {level}, {power}")
    if sd_d == 0:
        return 0.0
    hi = 1.0
    while power_at(hi, 1.0, n, level, sided) < power:
        hi *= 2
    es = optimize.brentq(lambda e: power_at(e, 1.0, n, level, sided) - power, 0.0, hi, xtol=1e-10)
    return float(es * sd_d)


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
