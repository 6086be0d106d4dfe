"""Published value beside our mean ± std, for every cell of Tables 2–5 that has a counterpart, and
the rank agreement (Kendall's tau) of the paper's methods with ours per valid cell."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from megl.errors import MEGLError
from megl.io import write_text
from megl.methods import MLLM_BACKBONE
from megl.report.labels import PAPER_DATASETS, Labels
from megl.report.tables import cell, fmt_number, method_label, metric_label, to_latex, to_markdown

STANDIN_CAPTION = "stand-in data: compare the shape (ordering, gaps), not the values"

PUBLISHED_COLUMNS = ["table", "page", "dataset", "backbone", "method", "metric", "value"]


def load_published(path: str | Path) -> pd.DataFrame:
    """config/published.yaml as a long frame: table, page, dataset (paper name or None), backbone,
    method, metric, value (NaN where the paper prints a dash)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise MEGLError(f"{path}: cannot read published numbers ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("tables"), dict):
        raise MEGLError(f"{path}: missing key 'tables'")
    rows: list[dict[str, Any]] = []
    for table, spec in doc["tables"].items():
        for i, entry in enumerate(spec.get("rows") or []):
            for key in ("dataset", "backbone", "method", "values"):
                if key not in entry:
                    raise MEGLError(f"{path}: tables.{table}.rows[{i}]: missing key '{key}'")
            for metric, value in entry["values"].items():
                rows.append({"table": table, "page": spec.get("page"), "dataset": entry["dataset"],
                             "backbone": entry["backbone"], "method": entry["method"],
                             "metric": metric, "value": float("nan") if value is None else float(value)})
    return pd.DataFrame(rows, columns=PUBLISHED_COLUMNS)


def _fmt_published(metric: str, value: float) -> str:
    if math.isnan(value):
        return "-"
    if metric == "params":
        return f"{value / 1e6:.0f}"
    if metric in ("latency_ms", "fps", "speedup"):
        return f"{value:.2f}"
    return fmt_number(value, 4)


LOWER_IS_BETTER = {"latency_ms", "params"}


def _left_out(validity: pd.DataFrame | None) -> dict[tuple[str, str], str]:
    """{(dataset, backbone): "left out (invalid: reason)"} of the invalid cells."""
    if validity is None or validity.empty:
        return {}
    bad = validity[~validity["valid"].astype(bool)]
    return {(d, b): f"left out (invalid: {r})" for d, b, r in zip(bad["dataset"], bad["backbone"], bad["reason"])}


def paper_vs_ours(summary: pd.DataFrame, published: pd.DataFrame,
                  standin: Mapping[str, bool], labels: Labels | None = None,
                  validity: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per published cell that has a counterpart among our summary rows.

    `standin` maps our dataset key to whether its config source is the stand-in generator; our
    dataset key is matched to the paper's dataset by megl.report.labels.PAPER_DATASETS (objects →
    Object-ME, actions → Action-ME), and the Dataset and Backbone columns name OUR data and model
    (`labels`, from the config: "objects (stand-in)", "ViT-tiny"); the Published column is the
    paper's number on its own data and model.
    Columns: Table, Page, Dataset, Backbone, Method, Metric, Published, Ours, Data, and the ranks
    of the method within its (table, dataset, backbone, metric) group, published and ours, so the
    ordering can be compared even where values cannot. A published row with dataset None
    (Table 5) is matched to every dataset of ours. A cell that `validity`
    (megl.report.validity.cell_validity) marks invalid reads "left out (invalid: reason)" in Ours
    and has no rank.
    """
    labels = labels or Labels()
    left_out = _left_out(validity)
    rows: list[dict[str, Any]] = []
    for ours_ds, paper_ds in PAPER_DATASETS.items():
        pub = published[(published["dataset"] == paper_ds) | published["dataset"].isna()]
        for p in pub.itertuples(index=False):
            sel = summary[(summary["dataset"] == ours_ds) & (summary["backbone"] == p.backbone)
                          & (summary["method"] == p.method)]
            metric_in_ours = f"{p.metric}_mean" in summary.columns
            if sel.empty or not metric_in_ours:
                continue
            row = sel.iloc[0]
            invalid = left_out.get((ours_ds, p.backbone))
            rows.append({
                "Table": p.table.replace("table", ""), "Page": p.page,
                "Dataset": labels.dataset(ours_ds),
                "Backbone": labels.backbone(p.backbone),
                "Method": method_label(p.method), "Metric": metric_label(p.metric),
                "Published": _fmt_published(p.metric, p.value),
                "Ours": invalid or cell(row, p.metric),
                "Data": "stand-in" if standin.get(ours_ds, False) else "official",
                "_pub": float("nan") if invalid else p.value,
                "_ours": float("nan") if invalid else row[f"{p.metric}_mean"], "_metric": p.metric,
            })
    cols = ["Table", "Page", "Dataset", "Backbone", "Method", "Metric", "Published", "Ours", "Data",
            "Rank (published)", "Rank (ours)"]
    if not rows:
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame(rows)
    # Rank within (table, dataset, backbone, metric); 1 = best. Backbone stays in the group so
    # Table 4's ranks never mix models.
    grp = [out["Table"], out["Dataset"], out["Backbone"], out["Metric"]]
    sign = out["_metric"].map(lambda m: -1.0 if m in LOWER_IS_BETTER else 1.0)
    for src, dst in (("_pub", "Rank (published)"), ("_ours", "Rank (ours)")):
        ranks = (out[src] * sign).groupby(grp).rank(ascending=False, method="min")
        out[dst] = ranks.map(lambda r: "" if pd.isna(r) else str(int(r)))
    return out[cols].reset_index(drop=True)


def caption(standin: Mapping[str, bool], labels: Labels | None = None) -> str:
    """Caption line; names the stand-in datasets and says to compare shape, not values."""
    labels = labels or Labels()
    base = ("Published (arXiv 2411.13053v1, on the paper's data and models) beside ours (mean ± sample "
            "std over seeds, n runs; Dataset and Backbone name our data and model).")
    fake = [labels.dataset(k) for k, v in standin.items() if v]
    if fake:
        return f"{base} {STANDIN_CAPTION} [{', '.join(fake)}]."
    return base


# ---------------------------------------------------------------- rank agreement (Kendall's tau)
TAU_METRICS: tuple[str, ...] = ("accuracy", "miou")
TAU_TABLES: tuple[str, ...] = ("table2", "table4")
TAU_COLUMNS = ["Dataset", "Backbone", "Metric", "n methods", "Methods", "Kendall tau",
               "95% CI (bootstrap over seeds)", "p", "Note"]
N_BOOT = 2000
MIN_METHODS = 3


def _published_values(published: pd.DataFrame, paper_ds: str, backbone: str, metric: str) -> dict[str, float]:
    """{method: the paper's value} of Tables 2 and 4 (Table 2's where both print one)."""
    sel = published[(published["dataset"] == paper_ds) & (published["backbone"] == backbone)
                    & (published["metric"] == metric) & published["table"].isin(TAU_TABLES)
                    & published["value"].notna()]
    out: dict[str, float] = {}
    for table in TAU_TABLES:
        for r in sel[sel["table"] == table].itertuples(index=False):
            out.setdefault(r.method, float(r.value))
    return out


def _seed_matrix(runs: pd.DataFrame, dataset: str, backbone: str, methods: list[str], metric: str,
                 seeds: list[int]) -> np.ndarray:
    """methods × seeds of `metric` (NaN where a run or its value is missing)."""
    cell = runs[(runs["dataset"] == dataset) & (runs["backbone"] == backbone) & runs["method"].isin(methods)]
    table = cell.pivot_table(index="method", columns="seed", values=metric, aggfunc="first", dropna=False)
    return table.reindex(index=methods, columns=seeds).to_numpy(dtype="float64")


def _means(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-method mean over seeds drawn with multiplicities `weights` (missing values skipped)."""
    present = ~np.isnan(values)
    den = (present * weights).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, np.nansum(np.where(present, values, 0.0) * weights, axis=1) / den, np.nan)


def _tau(x: np.ndarray, y: np.ndarray) -> float:
    ok = ~(np.isnan(x) | np.isnan(y))
    if ok.sum() < 2:
        return float("nan")
    return float(stats.kendalltau(x[ok], y[ok]).statistic)


def _p(p: float) -> str:
    return "< .001" if p < 0.001 else fmt_number(p, 3)


def _ci(values: list[float] | np.ndarray) -> str:
    v = np.asarray(values, dtype="float64")
    v = v[np.isfinite(v)]
    if not v.size:
        return "n/a"
    lo, hi = np.percentile(v, [2.5, 97.5])
    return f"[{lo:+.2f}, {hi:+.2f}]"


def rank_agreement(runs: pd.DataFrame, published: pd.DataFrame, validity: pd.DataFrame | None = None,
                   labels: Labels | None = None, n_boot: int = N_BOOT, seed: int = 0,
                   metrics: tuple[str, ...] = TAU_METRICS) -> pd.DataFrame:
    """Kendall's tau (scipy.stats.kendalltau, tau-b) between the paper's numbers (Tables 2 and 4)
    and our means over the methods in common, per valid classifier cell and metric, and pooled
    over the valid cells per metric.

    95 % interval: percentile bootstrap over seeds (`n_boot` resamples of the seed list, numpy
    generator seeded with `seed`; one draw serves every cell, as the seeds are shared). p: scipy's
    test of tau = 0 per cell. Pooled: the pairs-weighted mean of the cells' taus (Σ w τ / Σ w, w =
    n(n−1)/2, i.e. concordance over within-cell pairs only: scipy has no stratified tau, and ranks
    across cells would compare our stand-in levels with the paper's), its p from `n_boot`
    permutations of our means within each cell (two-sided, (1 + #|τ*| ≥ |τ|) / (1 + B)).
    Invalid cells are listed as "left out (invalid: reason)"; MLLM rows are not in Tables 2 and 4's
    method rankings of a backbone."""
    labels = labels or Labels()
    left_out = _left_out(validity)
    rng = np.random.default_rng(seed)
    seeds = sorted(int(s) for s in runs["seed"].unique()) if len(runs) else []
    weights = np.stack([np.bincount(rng.integers(0, len(seeds), len(seeds)), minlength=len(seeds))
                        for _ in range(n_boot)]) if seeds else np.zeros((0, 0))
    rows: list[dict[str, Any]] = []
    pooled: dict[str, list[tuple[np.ndarray, np.ndarray, float, np.ndarray]]] = {m: [] for m in metrics}
    classifier = runs[runs["backbone"] != MLLM_BACKBONE] if len(runs) else runs
    for ours_ds, paper_ds in PAPER_DATASETS.items():
        backbones = (list(dict.fromkeys(classifier.loc[classifier["dataset"] == ours_ds, "backbone"]))
                     if len(runs) else [])
        for backbone in backbones:
            for metric in metrics:
                base = {"Dataset": labels.dataset(ours_ds), "Backbone": labels.backbone(backbone),
                        "Metric": metric_label(metric)}
                if (ours_ds, backbone) in left_out:
                    rows.append({**base, "n methods": 0, "Note": left_out[(ours_ds, backbone)]})
                    continue
                pub = _published_values(published, paper_ds, backbone, metric)
                methods = list(pub)
                values = _seed_matrix(runs, ours_ds, backbone, methods, metric, seeds)
                ours = _means(values, np.ones(len(seeds)))
                keep = ~np.isnan(ours)
                methods = [m for m, k in zip(methods, keep) if k]
                x, values = np.array([pub[m] for m in methods]), values[keep]
                row = {**base, "n methods": len(methods), "Methods": ", ".join(method_label(m) for m in methods)}
                if len(methods) < MIN_METHODS:
                    rows.append({**row, "Note": f"fewer than {MIN_METHODS} methods in common"})
                    continue
                res = stats.kendalltau(x, ours[keep])
                boot = np.array([_tau(x, _means(values, w)) for w in weights])
                pooled[metric].append((x, values, float(res.statistic), boot))
                rows.append({**row, "Kendall tau": f"{res.statistic:+.2f}", "95% CI (bootstrap over seeds)": _ci(boot),
                             "p": _p(float(res.pvalue)), "Note": ""})
    for metric, cells in pooled.items():
        if not cells:
            continue
        w = np.array([len(x) * (len(x) - 1) / 2 for x, _, _, _ in cells])
        tau = float(np.dot(w, [t for _, _, t, _ in cells]) / w.sum())
        boot = np.stack([b for _, _, _, b in cells], axis=1) @ w / w.sum()   # the same seed draws in every cell
        means = [_means(v, np.ones(v.shape[1])) for _, v, _, _ in cells]
        perm = [np.dot(w, [_tau(x, rng.permutation(m)) for (x, _, _, _), m in zip(cells, means)]) / w.sum()
                for _ in range(n_boot)]
        p = (1 + sum(abs(t) >= abs(tau) - 1e-12 for t in perm)) / (1 + n_boot)
        rows.append({"Dataset": "pooled (valid cells)", "Backbone": "-", "Metric": metric_label(metric),
                     "n methods": int(sum(len(x) for x, _, _, _ in cells)), "Methods": f"{len(cells)} cells",
                     "Kendall tau": f"{tau:+.2f}", "95% CI (bootstrap over seeds)": _ci(boot),
                     "p": _p(p), "Note": "pairs-weighted mean of the cells' taus; p by permutation"})
    return pd.DataFrame(rows, columns=TAU_COLUMNS).astype(object).fillna("")


TAU_CAPTION = ("Rank agreement with the paper: Kendall's tau-b between the published numbers (Tables 2 and 4) "
               "and our means over the methods in common, per valid cell and pooled; 95 % percentile "
               "bootstrap over seeds (2000 resamples, seeded); n methods says how many methods are ranked.")


def write_paper_vs_ours(table: pd.DataFrame, tau: pd.DataFrame, out_stem: str | Path,
                        caption_text: str | None = None) -> list[Path]:
    """`<stem>.csv` (the cell-by-cell table), `<stem>_tau.csv` (the rank agreement) and `<stem>.md`,
    `<stem>.tex` holding both tables."""
    stem = Path(out_stem)
    csv_path, tau_path, md_path, tex_path = (Path(f"{stem}{ext}") for ext in (".csv", "_tau.csv", ".md", ".tex"))
    write_text(csv_path, table.to_csv(index=False))
    write_text(tau_path, tau.to_csv(index=False))
    write_text(md_path, to_markdown(table, caption_text) + "\n## Rank agreement\n\n" + to_markdown(tau, TAU_CAPTION))
    write_text(tex_path, to_latex(table, caption_text, label=f"tab:{stem.name}")
               + to_latex(tau, TAU_CAPTION, label=f"tab:{stem.name}_tau"))
    return [csv_path, md_path, tex_path, tau_path]
