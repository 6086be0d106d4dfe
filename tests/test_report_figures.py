"""Figures from synthetic runs: each written as a non-empty PNG and PDF."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from megl.report import figures
from megl.report.claims import CLAIMS, evaluate_claims
from megl.report.collect import collect_runs, expected_runs, required_keys
from megl.report.figures import (
    plot_ablation,
    plot_forest,
    plot_metric_by_method,
    plot_qualitative,
    plot_training_curves,
)

METHODS = ["baseline", "megl", "megl_text_only", "megl_visual_only"]


def make_results(root: Path, seeds=(0, 1, 2), n_saliency: int = 3, size: int = 16) -> Path:
    """A small results tree: metrics.json, train_log.csv, predictions.jsonl, saliency.npz per run."""
    rng = np.random.default_rng(0)
    for backbone in ("resnet18", "vit_b_16"):
        for k, method in enumerate(METHODS):
            for seed in seeds:
                run = root / "runs" / "objects" / backbone / method / f"seed{seed}"
                run.mkdir(parents=True, exist_ok=True)
                rec = {key: 0.5 for key in required_keys()}
                rec.update(accuracy=0.6 + 0.05 * k + 0.01 * seed, miou=0.3 + 0.02 * k + 0.005 * seed,
                           params=1e6, latency_ms=2.0, fps=500.0, n_test=100,
                           run={"dataset": "objects", "backbone": backbone, "method": method, "seed": seed})
                (run / "metrics.json").write_text(json.dumps(rec))
                lines = ["epoch,step,loss,loss_pred,loss_visual,loss_dc,loss_textual"]
                for step in range(6):
                    text = "" if method in ("baseline", "megl_visual_only") else f"{2.0 / (step + 1):.3f}"
                    lines.append(f"0,{step},{3.0 / (step + 1) + 0.1 * seed:.3f},{1.0 / (step + 1):.3f},"
                                 f"0.2,0.1,{text}")
                (run / "train_log.csv").write_text("\n".join(lines) + "\n")
                preds = [{"id": f"s{i}", "label": 1, "prediction": 1, "topk": [1, 0],
                          "rationale": "the object has a long neck" if method != "baseline" else None,
                          "reference": ["because it has a long neck and spots"]} for i in range(n_saliency)]
                (run / "predictions.jsonl").write_text("\n".join(json.dumps(p) for p in preds) + "\n")
                np.savez(run / "saliency.npz", ids=np.array([f"s{i}" for i in range(n_saliency)]),
                         images=rng.normal(size=(n_saliency, 3, size, size)).astype(np.float16),
                         gt=(rng.random((n_saliency, size, size)) > 0.7).astype(np.float32),
                         saliency=rng.random((n_saliency, 4, 4)).astype(np.float32))
    return root


def _assert_written(paths):
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    for p in paths:
        assert p.stat().st_size > 1000
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert not list(paths[0].parent.glob(".*tmp*"))


def test_all_figures_written(tmp_path):
    root = make_results(tmp_path / "results")
    df = collect_runs(sorted(root.glob("runs/**/metrics.json")))
    out = tmp_path / "figures"
    _assert_written(plot_metric_by_method(df, "accuracy", out / "accuracy"))
    _assert_written(plot_metric_by_method(df, "miou", out / "miou"))
    _assert_written(plot_ablation(df, out / "ablation"))
    run = root / "runs" / "objects" / "resnet18"
    _assert_written(plot_qualitative(run / "baseline" / "seed0", run / "megl" / "seed0", out / "qualitative"))
    logs = sorted(run.glob("*/seed*/train_log.csv"))
    _assert_written(plot_training_curves(logs, out / "training"))


@pytest.fixture
def na_reasons(monkeypatch) -> list[str]:
    """The reasons of every "n/a" figure drawn (the real plot_not_applicable still writes the files)."""
    reasons: list[str] = []
    real = figures.plot_not_applicable

    def spy(out_stem, reason):
        reasons.append(reason)
        return real(out_stem, reason)

    monkeypatch.setattr(figures, "plot_not_applicable", spy)
    return reasons


def test_metric_without_values_is_drawn_as_not_applicable(tmp_path, na_reasons):
    """A test split without annotated maps leaves mIoU empty in every run: the figure says n/a and why
    (as the tables say "n/a (not reported)") instead of failing the report step."""
    root = make_results(tmp_path / "results", seeds=(0,), n_saliency=1)
    df = collect_runs(sorted(root.glob("runs/**/metrics.json")))
    df["miou"] = float("nan")
    _assert_written(plot_metric_by_method(df, "miou", tmp_path / "miou"))
    assert len(na_reasons) == 1 and "mIoU" in na_reasons[0] and "annotated map" in na_reasons[0], na_reasons


def test_ablation_without_a_pairing_says_why(tmp_path, na_reasons):
    """A matrix without `megl`, without any variant, or whose variants share no seed with `megl` is valid:
    the ablation figure says why it is empty instead of failing the workflow."""
    root = make_results(tmp_path / "results", seeds=(0, 1))
    df = collect_runs(sorted(root.glob("runs/**/metrics.json")))
    _assert_written(plot_ablation(df[df["method"] != "megl"], tmp_path / "no_megl"))
    _assert_written(plot_ablation(df[df["method"] == "megl"], tmp_path / "only_megl"))
    shifted = df.copy()
    shifted.loc[shifted["method"] == "megl", "seed"] += 10  # MEGL present, but no seed in common
    _assert_written(plot_ablation(shifted, tmp_path / "unpaired"))
    assert ["no full MEGL" in na_reasons[0], "no MEGL variant" in na_reasons[1],
            "shares a dataset, backbone and seed" in na_reasons[2]] == [True, True, True], na_reasons
    assert len(na_reasons) == 3
    _assert_written(plot_ablation(df, tmp_path / "paired"))  # a real pairing is drawn, not n/a
    assert len(na_reasons) == 3


def test_qualitative_without_common_samples_and_empty_logs_say_why(tmp_path, na_reasons):
    root = make_results(tmp_path / "results", seeds=(0,), n_saliency=1)
    run = root / "runs" / "objects" / "resnet18"
    np.savez(run / "megl" / "seed0" / "saliency.npz", ids=np.array([], dtype=str), images=np.zeros((0, 3, 4, 4)),
             gt=np.zeros((0, 4, 4)), saliency=np.zeros((0, 2, 2)))
    _assert_written(plot_qualitative(run / "baseline" / "seed0", run / "megl" / "seed0", tmp_path / "qual"))
    log = run / "megl" / "seed0" / "train_log.csv"
    log.write_text("epoch,step,loss\n")
    _assert_written(plot_training_curves([log], tmp_path / "training"))
    assert "no sample with an annotated map" in na_reasons[0] and "no training log" in na_reasons[1], na_reasons


def test_forest_plot_of_every_claim(tmp_path):
    root = make_results(tmp_path / "results")
    matrix = {"datasets": ["objects"], "backbones": ["resnet18", "vit_b_16"], "methods": METHODS + ["cdep"],
              "seeds": [0, 1, 2]}
    claims = evaluate_claims(collect_runs(sorted(root.glob("runs/**/metrics.json"))), expected=expected_runs(matrix))
    # rows with a bound, rows with no paired run (cdep in the matrix, never run) and more than one verdict
    assert claims["lower_bound"].notna().any() and claims["diff"].isna().any()
    assert claims["verdict"].nunique() > 1
    _assert_written(plot_forest(claims, tmp_path / "forest", {c: s for c, (s, _) in CLAIMS.items()}))
    _assert_written(plot_forest(claims.iloc[:0], tmp_path / "empty"))  # no comparison: an n/a figure


def test_accuracy_has_a_chance_line_and_qualitative_names_classes_dataset_and_backbone(tmp_path, monkeypatch):
    """build_figures on runs of a 5-class dataset: the accuracy panels draw chance at 1/5 (from
    metrics.json's num_classes), the qualitative grid names the classes from the dataset's label map
    and heads itself with the dataset and backbone labels."""
    import matplotlib

    from megl.config import load_config
    from megl.report import build

    config = load_config(Path(__file__).resolve().parents[1] / "config" / "smoke.yaml")
    root = make_results(tmp_path / "results", seeds=(0, 1))
    for path in root.glob("runs/**/metrics.json"):
        rec = json.loads(path.read_text())
        path.write_text(json.dumps({**rec, "num_classes": 5}))
    standin = root / "standin" / "objects"
    standin.mkdir(parents=True)
    names = {"giraffe": 0, "zebra": 1, "cat": 2, "dog": 3, "owl": 4}
    (standin / "label_class_id_mapping.json").write_text(json.dumps(names))
    drawn: dict[str, matplotlib.figure.Figure] = {}
    real_save = figures.save_figure

    def spy(fig, out_stem):
        drawn[Path(out_stem).name] = fig
        return real_save(fig, out_stem)

    monkeypatch.setattr(figures, "save_figure", spy)
    build.build_figures(config, root, tmp_path / "figures")

    accuracy = drawn["accuracy"]
    for ax in accuracy.axes:
        vertical = [line for line in ax.get_lines() if len(set(line.get_xdata())) == 1]
        assert [float(line.get_xdata()[0]) for line in vertical] == [pytest.approx(0.2)], ax.get_title()
    assert [t.get_text() for legend in accuracy.legends for t in legend.get_texts()] == ["chance = 0.20"]
    miou_lines = [line for ax in drawn["miou"].axes for line in ax.get_lines() if len(set(line.get_xdata())) == 1]
    assert not miou_lines  # chance is accuracy's reference only

    texts = "\n".join(t.get_text() for t in drawn["qualitative"].findobj(matplotlib.text.Text))
    assert "true: zebra, predicted: zebra" in texts, texts
    assert "objects (stand-in) · ResNet18-narrow · seed0" in texts, texts
    assert "label 1" not in texts
