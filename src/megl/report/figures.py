"""Seaborn figures: metric per method with seed spread, ablation deltas, the claims' forest plot,
qualitative grid, training curves.

Every figure is written as PNG (200 dpi) and PDF, each atomically; widths follow a paper column.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from megl.errors import MEGLError  # noqa: E402
from megl.io import atomic_path  # noqa: E402
from megl.methods import MLLM_BACKBONE  # noqa: E402
from megl.report.collect import read_train_log  # noqa: E402
from megl.report.labels import Labels  # noqa: E402
from megl.report.tables import method_label, method_order, metric_label, table_methods  # noqa: E402

COLUMN_WIDTH_IN = 3.3
DPI = 200
RC = {"font.size": 7, "axes.titlesize": 7, "axes.labelsize": 7, "xtick.labelsize": 6,
      "ytick.labelsize": 6, "legend.fontsize": 6, "legend.title_fontsize": 6}


def _theme() -> None:
    sns.set_theme(context="paper", style="whitegrid", rc=RC)


def save_figure(fig: plt.Figure, out_stem: str | Path) -> list[Path]:
    """Save `fig` as `<out_stem>.png` and `.pdf` atomically; close it; return the paths."""
    paths = []
    for ext in (".png", ".pdf"):
        path = Path(f"{out_stem}{ext}")
        with atomic_path(path, suffix=ext) as tmp:
            fig.savefig(tmp, dpi=DPI, format=ext[1:], bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def plot_not_applicable(out_stem: str | Path, reason: str) -> list[Path]:
    """A figure that says why it has nothing to show (e.g. a matrix without full MEGL has no ablation
    against it): the step's outputs exist, and a reader sees the reason, never an empty or zero plot."""
    _theme()
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH_IN, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, textwrap.fill(f"n/a: {reason}", 60), ha="center", va="center", fontsize=7, color="0.3")
    return save_figure(fig, out_stem)


def _why_missing(df: pd.DataFrame, metric: str) -> str:
    """Why no run has `metric`: no runs at all, or the runs leave it empty (e.g. mIoU without test maps)."""
    if df.empty:
        return "no finished run"
    if metric in ("miou", "saliency_auprc", "miou_all", "saliency_auprc_all"):
        return "the test split holds no annotated map, or no run in the matrix draws saliency"
    return "every run leaves it empty"


def _with_labels(df: pd.DataFrame, labels: Labels | None) -> pd.DataFrame:
    labels = labels or Labels()
    out = df.copy()
    out["panel"] = [labels.panel(d, b) for d, b in zip(out["dataset"], out["backbone"])]
    out["Method"] = out["method"].map(method_label)
    return out


def _method_order(methods: Sequence[str]) -> list[str]:
    present, order = list(dict.fromkeys(methods)), method_order()
    ranked = sorted(present, key=lambda m: order.index(m) if m in order else len(order))
    return [method_label(m) for m in ranked]


CHANCE_COLOR = "#c0392b"  # the chance line: apart from the methods' blue and the grid's grey


def plot_metric_by_method(df: pd.DataFrame, metric: str, out_stem: str | Path,
                          methods: Sequence[str] | None = None, labels: Labels | None = None,
                          chance: dict[str, float] | None = None) -> list[Path]:
    """Mean ± std over seeds (error bar) and every seed (dot) of `metric` per method; one panel
    per dataset × backbone. MLLM runs are included when they carry the metric. `chance`
    ({dataset: value}, e.g. 1/K for accuracy) draws a dashed line labelled "chance" in that dataset's panels."""
    _theme()
    data = df[df[metric].notna()]
    if methods is not None:
        data = data[data["method"].isin(methods)]
    if data.empty:  # e.g. mIoU when the test split holds no annotated map; tables say "n/a (not reported)"
        return plot_not_applicable(out_stem, f"no run reports {metric_label(metric)} "
                                   f"({_why_missing(df, metric)})")
    data = _with_labels(data, labels)
    order = _method_order(data["method"])
    panels = list(dict.fromkeys(data["panel"]))
    height = 0.16 * len(order) + 0.5
    fig, axes = plt.subplots(len(panels), 1, figsize=(COLUMN_WIDTH_IN, height * len(panels)),
                             sharex=True, squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        sub = data[data["panel"] == panel]
        sns.stripplot(data=sub, x=metric, y="Method", order=order, ax=ax, size=2.5, color="0.55",
                      jitter=0.15, zorder=1)
        sns.pointplot(data=sub, x=metric, y="Method", order=order, ax=ax, errorbar="sd",
                      linestyle="none", markers="D", markersize=3, capsize=0.3, err_kws={"linewidth": 0.8},
                      color="C0", zorder=2)
        level = (chance or {}).get(str(sub["dataset"].iloc[0]))
        if level is not None:
            ax.axvline(level, color=CHANCE_COLOR, linestyle="--", linewidth=1.0, zorder=3)
            low, high = ax.get_xlim()
            ax.set_xlim(min(low, level - 0.02), max(high, level + 0.02))
        ax.set_title(panel)
        ax.set_ylabel("")
        ax.set_xlabel(metric_label(metric))
    fig.tight_layout()
    levels = sorted({round(v, 4) for v in (chance or {}).values()})
    if levels:
        text = f"chance = {levels[0]:.2f}" if len(levels) == 1 else "chance = 1/K of the panel's dataset"
        fig.legend(handles=[Line2D([], [], color=CHANCE_COLOR, linestyle="--", linewidth=1.0, label=text)],
                   loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, fontsize=6)
    return save_figure(fig, out_stem)


def plot_ablation(df: pd.DataFrame, out_stem: str | Path, metric: str = "accuracy",
                  methods: Sequence[str] | None = None, labels: Labels | None = None) -> list[Path]:
    """Change of `metric` from full MEGL, paired by seed, for each variant and the baseline:
    bar = mean over seeds, dots = seeds; one panel per dataset × backbone (`methods`: Table 4's by default)."""
    _theme()
    methods = table_methods("table4") if methods is None else methods
    data = df[df["method"].isin(methods) & (df["backbone"] != MLLM_BACKBONE) & df[metric].notna()]
    full = data[data["method"] == "megl"][["dataset", "backbone", "seed", metric]]
    merged = data[data["method"] != "megl"].merge(full, on=["dataset", "backbone", "seed"],
                                                  suffixes=("", "_megl"))
    if merged.empty:  # a valid matrix may hold no megl, no variant, or none on megl's seeds/backbones
        if full.empty:
            return plot_not_applicable(out_stem, "the run matrix has no full MEGL run to compare the variants with")
        if data["method"].eq("megl").all():
            return plot_not_applicable(out_stem, "the run matrix has no MEGL variant or baseline to compare "
                                                 "with full MEGL")
        return plot_not_applicable(out_stem, "no variant run shares a dataset, backbone and seed with a full "
                                             f"MEGL run that reports {metric_label(metric)}")
    merged["delta"] = (merged[metric] - merged[f"{metric}_megl"]) * 100
    merged = _with_labels(merged, labels)
    order = _method_order(merged["method"])
    panels = list(dict.fromkeys(merged["panel"]))
    fig, axes = plt.subplots(len(panels), 1, figsize=(COLUMN_WIDTH_IN, (0.16 * len(order) + 0.5) * len(panels)),
                             sharex=True, squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        sub = merged[merged["panel"] == panel]
        sns.barplot(data=sub, x="delta", y="Method", order=order, ax=ax, errorbar=None, color="C1", alpha=0.6)
        sns.stripplot(data=sub, x="delta", y="Method", order=order, ax=ax, size=2.5, color="0.2", jitter=0.1)
        ax.axvline(0, color="0.3", linewidth=0.6)
        ax.set_title(panel)
        ax.set_ylabel("")
        ax.set_xlabel(f"change in {metric_label(metric)} from MEGL (pp)")
    fig.tight_layout()
    return save_figure(fig, out_stem)


VERDICT_COLORS = {"holds": "#1b7837", "not shown": "0.45", "untestable": "#c51b7d"}


def plot_forest(claims: pd.DataFrame, out_stem: str | Path,
                statements: dict[str, str] | None = None, labels: Labels | None = None) -> list[Path]:
    """Every comparison of megl.report.claims.evaluate_claims as its mean paired difference A − B
    with its one-sided lower confidence bound at the Holm level (a bar from the bound to the mean;
    colour = verdict; the bound is > 0 exactly when the comparison holds) over a grey ±MDE band
    (what the design can detect), a line at 0; one panel per claim, rows grouped by dataset ×
    backbone. Comparisons without two paired seeds are listed with "no paired runs"."""
    _theme()
    if claims.empty:
        return plot_not_applicable(out_stem, "no claim has a comparison in this run matrix")
    panels = list(dict.fromkeys(claims["claim"]))
    sizes = [int((claims["claim"] == c).sum()) for c in panels]
    fig, axes = plt.subplots(len(panels), 1, squeeze=False,
                             figsize=(COLUMN_WIDTH_IN * 2, 0.13 * sum(sizes) + 0.6 * len(panels)),
                             gridspec_kw={"height_ratios": [n + 3 for n in sizes]})
    for ax, cid in zip(axes[:, 0], panels):
        sub = claims[claims["claim"] == cid].reset_index(drop=True)
        ys = np.arange(len(sub))[::-1]
        groups = [(labels or Labels()).panel(d, b) for d, b in zip(sub["dataset"], sub["backbone"])]
        for y, r in zip(ys, sub.itertuples(index=False)):
            if np.isfinite(r.mde):
                ax.barh(y, 2 * r.mde, left=-r.mde, height=0.7, color="0.88", zorder=0)
            if np.isfinite(r.lower_bound):
                ax.errorbar(r.diff, y, xerr=[[r.diff - r.lower_bound], [0.0]], fmt="o",
                            markersize=3, capsize=1.5, linewidth=0.8, color=VERDICT_COLORS[r.verdict], zorder=2)
            elif np.isfinite(r.diff):
                ax.plot(r.diff, y, "o", markersize=3, mfc="none", color=VERDICT_COLORS[r.verdict], zorder=2)
            else:
                ax.text(0, y, " no paired runs", fontsize=5, va="center", color="0.4")
        for y, (g0, g1) in zip(ys[1:], zip(groups, groups[1:])):
            if g0 != g1:
                ax.axhline(y + 0.5, color="0.6", linewidth=0.5)
        ax.axvline(0, color="0.2", linewidth=0.6, zorder=1)
        span = np.concatenate([[0.0], sub["lower_bound"], sub["diff"], sub["mde"], -sub["mde"]])
        span = span[np.isfinite(span)]
        lo, hi = span.min(), span.max()
        pad = 0.08 * (hi - lo) if hi > lo else 0.01
        ax.set_xlim(lo - pad, hi + pad)                  # 0 always in view, never on the frame
        ax.set_yticks(ys, [f"{g} · {method_label(a)} > {method_label(b)}"
                           for g, a, b in zip(groups, sub["a"], sub["b"])])
        ax.set_ylim(-0.7, len(sub) - 0.3)
        ax.grid(axis="y", visible=False)
        title = f"{cid}: {statements[cid]}" if statements and cid in statements else cid
        ax.set_title(textwrap.fill(title, 110), loc="left")
        metrics = ", ".join(metric_label(m) for m in dict.fromkeys(sub["metric"]))
        ax.set_xlabel(f"paired difference A − B ({metrics}), one-sided bound at the Holm level")
    handles = [plt.Line2D([], [], marker="o", linestyle="none", markersize=3, color=c, label=v)
               for v, c in VERDICT_COLORS.items()]
    handles.append(Patch(color="0.88", label="± MDE (80 % power, one-sided, alpha/k)"))
    fig.tight_layout()
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(handles), frameon=False)
    return save_figure(fig, out_stem)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise MEGLError(f"{path}: cannot read saliency arrays ({exc})") from exc
    for key in ("ids", "images", "gt", "saliency"):
        if key not in arrays:
            raise MEGLError(f"{path}: missing array '{key}'")
    return arrays


def _load_predictions(path: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MEGLError(f"{path}: line {lineno}: not valid JSON ({exc})") from exc
            if "id" not in rec:
                raise MEGLError(f"{path}: line {lineno}: missing key 'id'")
            out[str(rec["id"])] = rec
    return out


def _to_display(image: np.ndarray) -> np.ndarray:
    """[3,S,S] float → [S,S,3] in [0,1] by per-image min-max (the stored images may be normalised)."""
    img = np.asarray(image, dtype="float32").transpose(1, 2, 0)
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def plot_qualitative(baseline_run: str | Path, megl_run: str | Path, out_stem: str | Path,
                     n_samples: int = 4, wrap: int = 34, class_names: Sequence[str] | None = None,
                     title: str | None = None) -> list[Path]:
    """Grid per sample: image, ground-truth map, baseline saliency, MEGL saliency, and MEGL's
    generated rationale beside the reference; from each run folder's saliency.npz and MEGL's
    predictions.jsonl. Samples are the first ids present in both runs and holding a map.
    `class_names[label]` names the true and predicted class (the label id where absent); `title`
    (e.g. the dataset, backbone and seed) heads the figure."""
    _theme()
    base_dir, megl_dir = Path(baseline_run), Path(megl_run)
    base = _load_npz(base_dir / "saliency.npz")
    megl = _load_npz(megl_dir / "saliency.npz")
    preds = _load_predictions(megl_dir / "predictions.jsonl")
    base_index = {str(i): k for k, i in enumerate(base["ids"])}
    ids = [str(i) for i in megl["ids"] if str(i) in base_index][:n_samples]
    if not ids:  # e.g. the test split holds no annotated map: evaluate keeps no sample
        reason = ("the test split holds no sample with an annotated map" if not len(megl["ids"]) or not len(base["ids"])
                  else "the baseline and MEGL runs keep no sample in common")
        return plot_not_applicable(out_stem, f"no qualitative sample: {reason}")
    megl_index = {str(i): k for k, i in enumerate(megl["ids"])}
    titles = ["image", "ground truth", "baseline", "MEGL", "rationale"]
    fig = plt.figure(figsize=(COLUMN_WIDTH_IN * 2, 1.25 * len(ids) + 0.2))
    grid = fig.add_gridspec(len(ids), 5, width_ratios=[1, 1, 1, 1, 2.6], wspace=0.08, hspace=0.15)
    for r, sid in enumerate(ids):
        km, kb = megl_index[sid], base_index[sid]
        image = _to_display(megl["images"][km])
        size = image.shape[:2]
        panels = [image, megl["gt"][km], base["saliency"][kb], megl["saliency"][km]]
        for c, arr in enumerate(panels):
            ax = fig.add_subplot(grid[r, c])
            if c == 0:
                ax.imshow(image)
            else:
                ax.imshow(image.mean(axis=2), cmap="gray", alpha=1.0)
                ax.imshow(np.asarray(arr, dtype="float32"), cmap="jet", alpha=0.5, vmin=0, vmax=1,
                          extent=(-0.5, size[1] - 0.5, size[0] - 0.5, -0.5), interpolation="bilinear")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if r == 0:
                ax.set_title(titles[c])
            if c == 0:
                ax.set_ylabel(f"id {sid}", fontsize=6)
        ax = fig.add_subplot(grid[r, 4])
        ax.axis("off")
        rec = preds.get(sid, {})
        rationale = rec.get("rationale") or "(no rationale)"
        refs = rec.get("reference") or []
        ref = refs[0] if refs else "(no reference)"
        text = (f"true: {_class_name(rec.get('label'), class_names)}, "
                f"predicted: {_class_name(rec.get('prediction'), class_names)}\n"
                f"MEGL: {textwrap.fill(str(rationale), wrap)}\nref.: {textwrap.fill(str(ref), wrap)}")
        ax.text(0.0, 0.5, text, fontsize=5.5, va="center", ha="left", transform=ax.transAxes)
        if r == 0:
            ax.set_title(titles[4])
    if title:
        fig.suptitle(title, fontsize=7, y=1.0, va="bottom")
    return save_figure(fig, out_stem)


def _class_name(label, class_names: Sequence[str] | None) -> str:
    """A training label as its class name ("id 3" when no names are known or the label is out of range)."""
    if label is None:
        return "?"
    if class_names is not None and 0 <= int(label) < len(class_names):
        return str(class_names[int(label)])
    return f"id {label}"


LOSS_COLUMNS = ("loss", "loss_pred", "loss_visual", "loss_dc", "loss_textual")


def _run_of(path: Path) -> dict[str, object]:
    """Method and seed from .../{method}/seed{n}/train_log.csv (the folder name otherwise)."""
    seed_dir = path.parent
    if seed_dir.name.startswith("seed") and seed_dir.name[4:].isdigit():
        return {"method": seed_dir.parent.name, "seed": int(seed_dir.name[4:])}
    return {"method": seed_dir.name, "seed": 0}


def plot_training_curves(train_logs: Sequence[str | Path], out_stem: str | Path) -> list[Path]:
    """Each loss term against step, one panel per term, one line per method (mean over seeds with
    a ± std band). Terms a run leaves empty are skipped."""
    _theme()
    frames = []
    for p in map(Path, train_logs):
        log = read_train_log(p)
        cols = [c for c in LOSS_COLUMNS if c in log.columns]
        long = log.melt(id_vars=["step"], value_vars=cols, var_name="term", value_name="value")
        long["value"] = pd.to_numeric(long["value"], errors="coerce")
        long = long.dropna(subset=["value"])
        info = _run_of(p)
        long["Method"] = method_label(str(info["method"]))
        long["seed"] = info["seed"]
        frames.append(long)
    data = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if data.empty:
        return plot_not_applicable(out_stem, "no training log holds a loss value")
    terms = [t for t in LOSS_COLUMNS if t in set(data["term"])]
    fig, axes = plt.subplots(len(terms), 1, figsize=(COLUMN_WIDTH_IN, 1.3 * len(terms) + 0.4),
                             sharex=True, squeeze=False)
    hue_order = list(dict.fromkeys(data["Method"]))
    for i, (ax, term) in enumerate(zip(axes[:, 0], terms)):
        sub = data[data["term"] == term]
        sns.lineplot(data=sub, x="step", y="value", hue="Method", hue_order=hue_order, errorbar="sd",
                     ax=ax, linewidth=0.8, legend=(i == 0))
        ax.set_ylabel(term)
    if axes[0, 0].get_legend() is not None:
        sns.move_legend(axes[0, 0], "lower center", bbox_to_anchor=(0.5, 1.02), ncol=2, frameon=False,
                        title=None)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    return save_figure(fig, out_stem)
