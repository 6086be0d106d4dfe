"""Which dataset × backbone cells can test the paper's claims at all, decided before the claims.

Pre-registered rules (docs/report.md says why):
- V1 (learnable): the cell's no-shortcut control twin's baseline (a dataset with
  `datasets.<twin>.control_for: <dataset>`), or the cell's own baseline where it has no twin, has
  chance-normalised mean validation accuracy (acc − 1/K) / (1 − 1/K) ≥ V1_MIN (K classes: the runs'
  `num_classes`, else the dataset's label map). Without `val_accuracy` in the runs V1 is "not
  checked" and the cell stays valid.
- V2 (the shortcut bites): with a twin, the shortcut cost = twin baseline test accuracy − cell
  baseline test accuracy, paired by seed, must have mean > MDE_cell and one-sided paired t-test
  p < alpha. MDE_cell = the median MDE of the cell's testable accuracy comparisons, each at
  one-sided alpha / k_all of its claim (k_all: the family size the claim would have if every cell
  were valid, so validity never depends on which cells are valid). Without a twin V2 is "not
  applicable" (official data has no known shortcut).
A cell failing V1 or V2 is invalid: it is left out of every claim family and tally.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from megl.report import claims as claims_mod
from megl.report.labels import Labels
from megl.report.power import mde as min_detectable_effect
from megl.report.tables import fmt_number

V1_MIN = 0.5
# megl.data.annotations.MAPPING_FILE, not imported: that module loads torch, which `megl tables` does not need.
MAPPING_FILE = "label_class_id_mapping.json"
COLUMNS = ["dataset", "backbone", "valid", "reason", "twin", "num_classes", "val_accuracy", "val_normalised",
           "v1", "cost", "cost_p", "cost_n", "mde_cell", "v2"]


def twins(config: Mapping[str, Any]) -> dict[str, str]:
    """{dataset: its control twin} from `datasets.<twin>.control_for`."""
    out = {}
    for name, spec in (config.get("datasets") or {}).items():
        target = (spec or {}).get("control_for")
        if target:
            out[target] = name
    return out


def label_map_path(config: Mapping[str, Any], dataset: str, results_dir: str | Path | None) -> Path | None:
    """The dataset folder's label map, where the workflow puts the folder (workflow/rules/common.smk
    data_root): <results>/standin/<d> for stand-ins, data/official/<d> for official data."""
    spec = (config.get("datasets") or {}).get(dataset) or {}
    if spec.get("source") == "official":
        return Path("data/official") / dataset / MAPPING_FILE
    return Path(results_dir) / "standin" / dataset / MAPPING_FILE if results_dir is not None else None


def num_classes(runs: pd.DataFrame, config: Mapping[str, Any], dataset: str,
                results_dir: str | Path | None = None) -> int | None:
    """K of a dataset: the runs' `num_classes` where they report it, else the label map's size."""
    if "num_classes" in runs:
        values = runs.loc[runs["dataset"] == dataset, "num_classes"].dropna()
        if len(values):
            return int(values.iloc[0])
    path = label_map_path(config, dataset, results_dir)
    if path is not None and path.exists():
        return len(json.loads(path.read_text(encoding="utf-8")))
    return None


def _baseline(runs: pd.DataFrame, dataset: str, backbone: str) -> pd.DataFrame:
    sel = (runs["dataset"] == dataset) & (runs["backbone"] == backbone) & (runs["method"] == "baseline")
    return runs[sel]


def _v1(runs: pd.DataFrame, config: Mapping, dataset: str, backbone: str, source: str,
        results_dir) -> dict[str, Any]:
    nan = float("nan")
    out = {"num_classes": nan, "val_accuracy": nan, "val_normalised": nan}
    base = _baseline(runs, source, backbone)
    values = base["val_accuracy"].dropna() if "val_accuracy" in base else pd.Series(dtype="float64")
    if values.empty:
        return {**out, "v1": "not checked (no val_accuracy in the baseline's runs)"}
    k = num_classes(runs, config, source, results_dir)
    if not k or k < 2:
        return {**out, "val_accuracy": float(values.mean()), "v1": "not checked (number of classes unknown)"}
    acc = float(values.mean())
    norm = (acc - 1 / k) / (1 - 1 / k)
    who = f"{source} baseline" if source != dataset else "baseline"
    verdict = "pass" if norm >= V1_MIN else (f"fail: {who} at chance level, validation accuracy "
                                             f"{fmt_number(acc, 3)} is {fmt_number(norm, 2)} of the way "
                                             f"from chance 1/{k} to 1 (needs ≥ {V1_MIN:g})")
    return {"num_classes": k, "val_accuracy": acc, "val_normalised": norm, "v1": verdict}


def _v2(runs: pd.DataFrame, dataset: str, backbone: str, twin: str | None, alpha: float,
        mde_cell: float) -> dict[str, Any]:
    nan = float("nan")
    out = {"cost": nan, "cost_p": nan, "cost_n": 0, "mde_cell": mde_cell}
    if twin is None:
        return {**out, "v2": "not applicable (no control twin)"}
    a, b = _baseline(runs, twin, backbone), _baseline(runs, dataset, backbone)
    merged = a[["seed", "accuracy"]].merge(b[["seed", "accuracy"]], on="seed", suffixes=("_twin", "_cell")).dropna()
    n = len(merged)
    numbers, _ = claims_mod.paired_test(merged["accuracy_twin"].to_numpy(), merged["accuracy_cell"].to_numpy())
    out.update(cost=numbers["diff"], cost_p=numbers["p_value"], cost_n=n)
    if n < claims_mod.MIN_PAIRED_SEEDS:
        return {**out, "v2": f"not checked ({n} paired seeds of the twin's and the cell's baseline)"}
    if not math.isfinite(mde_cell):
        return {**out, "v2": "not checked (no testable accuracy comparison to size the MDE)"}
    cost, p = numbers["diff"], numbers["p_value"]
    if cost > mde_cell and p < alpha:
        return {**out, "v2": "pass"}
    why = []
    if not cost > mde_cell:
        why.append(f"mean cost {fmt_number(cost, 3)} ≤ MDE {fmt_number(mde_cell, 3)}")
    if not p < alpha:
        why.append(f"one-sided p {fmt_number(p, 3)} ≥ {alpha:g}")
    return {**out, "v2": "fail: the shortcut does not bite (" + "; ".join(why) + ")"}


def cell_mdes(runs: pd.DataFrame, expected: pd.DataFrame | None, alpha: float) -> dict[tuple[str, str], float]:
    """MDE_cell per cell: the median MDE of its testable accuracy comparisons, each at one-sided
    alpha / k_all of its claim (k_all over every cell, valid or not)."""
    rows = claims_mod.comparison_rows(runs, expected)
    k_all = claims_mod.family_sizes(rows)
    per_cell: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if r["metric"] != "accuracy" or not r["testable"]:
            continue
        m = min_detectable_effect(r["sd_diff"], r["n"], alpha / k_all[r["claim"]], claims_mod.POWER, sided="one")
        per_cell.setdefault((r["dataset"], r["backbone"]), []).append(m)
    return {c: float(np.nanmedian(v)) if np.isfinite(v).any() else float("nan") for c, v in per_cell.items()}


def cell_validity(runs: pd.DataFrame, config: Mapping[str, Any], expected: pd.DataFrame | None = None,
                  alpha: float = 0.05, results_dir: str | Path | None = None) -> pd.DataFrame:
    """One row per claim cell (control twins themselves are not claim cells): the columns of
    COLUMNS; `valid` is False when V1 or V2 fails, with the reason."""
    twin_of = twins(config)
    controls = set(twin_of.values())
    mdes = cell_mdes(runs, expected, alpha)
    rows = []
    for dataset, backbone in claims_mod.claim_cells(runs, expected):
        if dataset in controls:
            continue
        twin = twin_of.get(dataset)
        v1 = _v1(runs, config, dataset, backbone, twin or dataset, results_dir)
        v2 = _v2(runs, dataset, backbone, twin, alpha, mdes.get((dataset, backbone), float("nan")))
        fails = [x for x in (v1["v1"], v2["v2"]) if x.startswith("fail")]
        rows.append({"dataset": dataset, "backbone": backbone, "valid": not fails,
                     "reason": "; ".join(f[len("fail: "):] for f in fails), "twin": twin or "", **v1, **v2})
    return pd.DataFrame(rows, columns=COLUMNS)


def validity_table(validity: pd.DataFrame, labels: Labels | None = None) -> pd.DataFrame:
    """The display table of claims.md: one line per cell."""
    labels = labels or Labels()

    def num(x: float, digits: int = 3) -> str:
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt_number(x, digits)

    return pd.DataFrame({
        "Dataset": validity["dataset"].map(labels.dataset),
        "Backbone": validity["backbone"].map(labels.backbone),
        "Cell": ["valid" if v else f"invalid: {r}" for v, r in zip(validity["valid"], validity["reason"])],
        "Control twin": validity["twin"].map(lambda t: labels.dataset(t) if t else "-"),
        "Val. acc. (chance-normalised)": [f"{num(a)} ({num(z, 2)}, K={int(k) if k == k else '?'})"
                                          for a, z, k in zip(validity["val_accuracy"], validity["val_normalised"],
                                                             validity["num_classes"])],
        "V1 learnable": validity["v1"],
        "Shortcut cost (p, n)": [f"{num(c)} (p {num(p)}, n={n})" if n else "-"
                                 for c, p, n in zip(validity["cost"], validity["cost_p"], validity["cost_n"])],
        "MDE_cell": validity["mde_cell"].map(num),
        "V2 shortcut bites": validity["v2"],
    })
