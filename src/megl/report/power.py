"""How large an effect a paired-seed design can detect, and how many seeds a target effect needs.

Use on a pilot (≥ 8 seeds of two methods on one dataset × backbone): `paired_sd` measures the spread
of the paired differences, `seeds_needed` turns it into a number of seeds, `mde` says what a given
number of seeds can resolve (the claims table reports it for every comparison).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from megl.errors import MEGLError


def mde(sd_d: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable effect of a paired t-test with n pairs, two-sided alpha:
    (t(1−α/2, n−1) + t(power, n−1)) · sd_d / √n. NaN for n < 2 (no spread to scale by)."""
    if n < 2 or not math.isfinite(sd_d):
        return float("nan")
    df = n - 1
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * sd_d / math.sqrt(n))


def seeds_needed(sd_d: float, delta: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Seeds (pairs) for a paired test to detect a mean difference `delta` with `power`, two-sided
    alpha: ⌈((z(1−α/2) + z(power)) · sd_d / Δ)² + 2⌉ (the + 2 approximates the t correction)."""
    if delta == 0:
        raise MEGLError("seeds_needed: the target effect delta must be non-zero")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return math.ceil((z * sd_d / abs(delta)) ** 2 + 2)


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
