"""Aggregation of synthetic metrics files into mean ± std tables, and the paper-vs-ours table."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from megl.errors import MEGLError
from megl.matrix import enumerate_runs
from megl.report.collect import collect_runs, expected_runs, required_keys
from megl.report.paper_vs_ours import STANDIN_CAPTION, caption, load_published, paper_vs_ours, rank_agreement
from megl.report.tables import fmt_number, format_cell, summarise, table2, table3, table4, table5, write_table

REPO = Path(__file__).resolve().parents[1]


def write_run(root: Path, dataset: str, backbone: str, method: str, seed: int, **values) -> Path:
    record = {k: 0.5 for k in required_keys()}
    record.update(params=11_000_000, latency_ms=8.5, fps=117.6, n_test=240)
    record.update(values)
    record["run"] = {"dataset": dataset, "backbone": backbone, "method": method, "seed": seed}
    path = root / "runs" / dataset / backbone / method / f"seed{seed}" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


MATRIX = {"datasets": ["objects"], "backbones": ["resnet18"], "methods": ["baseline", "megl"],
          "seeds": [0, 1, 2]}


@pytest.fixture()
def runs(tmp_path):
    paths = []
    for seed, acc in zip((0, 1, 2), (0.70, 0.72, 0.74)):
        paths.append(write_run(tmp_path, "objects", "resnet18", "megl", seed, accuracy=acc,
                               miou=0.30 + 0.01 * seed, miou_all=0.41 + 0.01 * seed, spice=None,
                               notes={"spice": "Java not installed"}))
    # baseline: seed 2 missing
    for seed, acc in zip((0, 1), (0.60, 0.64)):
        paths.append(write_run(tmp_path, "objects", "resnet18", "baseline", seed, accuracy=acc))
    return paths


def test_format_cell():
    assert format_cell(0.7413, 0.0021, 3) == ".7413 ± .0021 (n=3)"
    assert format_cell(0.7413, float("nan"), 1) == ".7413 (n=1)"
    assert format_cell(float("nan"), float("nan"), 0) == "missing"
    assert format_cell(7.4691, 0.25, 2) == "7.4691 ± .2500 (n=2)"


def test_summary_exact_mean_std_and_missing(runs):
    df = collect_runs(runs)
    assert len(df) == 5
    summ = summarise(df, expected_runs(MATRIX))
    megl = summ[summ["method"] == "megl"].iloc[0]
    assert megl["accuracy_mean"] == pytest.approx(0.72)
    assert megl["accuracy_std"] == pytest.approx(0.02)      # sample std, ddof=1
    assert megl["accuracy_n"] == 3 and megl["status"] == "complete"
    base = summ[summ["method"] == "baseline"].iloc[0]
    assert base["accuracy_mean"] == pytest.approx(0.62)
    assert base["accuracy_std"] == pytest.approx(0.0282842712)
    assert base["n_runs"] == 2 and base["missing_seeds"] == "2" and base["status"] == "partial (2/3)"

    t2 = table2(summ)
    assert list(t2["Method"]) == ["baseline", "MEGL"]
    assert t2.loc[1, "Accuracy"] == ".7200 ± .0200 (n=3)"
    assert t2.loc[1, "mIoU (annotated images)"] == ".3100 ± .0100 (n=3)"
    assert t2.loc[1, "mIoU (every test image)"] == ".4200 ± .0100 (n=3)"      # miou_all, labelled apart
    assert t2.loc[0, "Accuracy"] == ".6200 ± .0283 (n=2)"
    t3 = table3(summ)
    assert t3.loc[0, "SPICE"] == "n/a (Java not installed)"
    t4 = table4(summ)
    assert t4.loc[t4["Method"] == "baseline", "Change in Accuracy"].item() == "-10.00 pp"
    assert list(t4.columns[5:]) == ["mIoU (annotated images)", "Change in mIoU (annotated images)",
                                    "mIoU (every test image)", "Change in mIoU (every test image)"]
    assert t4.loc[t4["Method"] == "MEGL", "mIoU (every test image)"].item() == ".4200 ± .0100 (n=3)"
    assert t4.loc[t4["Method"] == "baseline", "mIoU (every test image)"].item().startswith("n/a")
    t5 = table5(summ)
    assert t5.loc[t5["Method"] == "MEGL", "Params (M)"].item() == "11.00 (n=3)"


def test_group_with_no_run_is_shown_missing(runs):
    matrix = dict(MATRIX, datasets=["objects", "actions"])
    summ = summarise(collect_runs(runs), expected_runs(matrix))
    gone = summ[summ["dataset"] == "actions"]
    assert len(gone) == 2 and set(gone["status"]) == {"missing"} and set(gone["n_runs"]) == {0}
    t2 = table2(summ)
    assert (t2.loc[t2["Dataset"] == "actions", "Accuracy"] == "missing").all()  # no labels: the key
    assert list(t2["Dataset"].unique()) == ["objects", "actions"]   # matrix order kept


def test_single_seed_has_no_std(tmp_path):
    p = write_run(tmp_path, "objects", "resnet18", "megl", 0, accuracy=0.7413)
    summ = summarise(collect_runs([p]))
    assert table2(summ).loc[0, "Accuracy"] == ".7413 (n=1)"


def test_bad_metrics_file_names_file_and_key(tmp_path):
    p = write_run(tmp_path, "objects", "resnet18", "megl", 0)
    rec = json.loads(p.read_text())
    del rec["f1_macro"]
    p.write_text(json.dumps(rec))
    with pytest.raises(MEGLError, match=r"metrics\.json.*'f1_macro'"):
        collect_runs([p])
    rec["f1_macro"] = 0.5
    rec["run"]["seed"] = 7
    p.write_text(json.dumps(rec))
    with pytest.raises(MEGLError, match=r"run\.seed"):
        collect_runs([p])


def test_mllm_runs_need_no_saliency_and_sit_under_mllm(tmp_path):
    p = write_run(tmp_path, "objects", "mllm", "finetune_cot", 0, accuracy=0.8)
    rec = json.loads(p.read_text())
    del rec["miou"], rec["saliency_auprc"]
    p.write_text(json.dumps(rec))
    matrix = dict(MATRIX, methods=["megl"], mllm_methods=["finetune_cot"], seeds=[0])
    exp = expected_runs(matrix)
    assert set(exp.loc[exp["method"] == "finetune_cot", "backbone"]) == {"mllm"}
    t2 = table2(summarise(collect_runs([p]), exp))
    for col in ("mIoU (annotated images)", "mIoU (every test image)"):
        assert t2.loc[t2["Backbone"] == "mllm", col].item() == "n/a (no saliency map)"


def test_expected_runs_are_the_matrix_enumeration():
    matrix = dict(MATRIX, mllm_methods=["llava_vqa", "finetune_cot"])
    exp = expected_runs(matrix)
    assert list(exp.itertuples(index=False, name=None)) == [
        (r.dataset, r.backbone, r.method, r.seed) for r in enumerate_runs({"matrix": matrix})]
    assert len(exp[exp["backbone"] == "mllm"]) == 2 * 3


def test_missing_mllm_run_reads_missing_in_table2(tmp_path):
    matrix = dict(MATRIX, mllm_methods=["llava_vqa", "finetune_cot"], seeds=[0])
    paths = [write_run(tmp_path, "objects", "resnet18", m, 0) for m in ("baseline", "megl")]
    paths += [write_run(tmp_path, "objects", "mllm", m, 0, miou=None, saliency_auprc=None)
              for m in ("llava_vqa", "finetune_cot")]
    paths[-1].unlink()                                   # finetune_cot's only run never finished
    t2 = table2(summarise(collect_runs([p for p in paths if p.exists()]), expected_runs(matrix)))
    row = t2[t2["Method"] == "LLaVA Fine-Tune-CoT"]
    assert len(row) == 1 and row["Accuracy"].item() == "missing"
    assert t2.loc[t2["Method"] == "LLaVA", "Accuracy"].item() == ".5000 (n=1)"


def test_write_table_three_formats(runs, tmp_path):
    t2 = table2(summarise(collect_runs(runs), expected_runs(MATRIX)))
    paths = write_table(t2, tmp_path / "out" / "table2", caption="Table 2, ours")
    assert [p.suffix for p in paths] == [".csv", ".md", ".tex"]
    assert pd.read_csv(paths[0])["Accuracy"].tolist() == [".6200 ± .0283 (n=2)", ".7200 ± .0200 (n=3)"]
    md = paths[1].read_text()
    assert md.startswith("Table 2, ours") and "| MEGL" in md
    tex = paths[2].read_text()
    assert r"$\pm$" in tex and "±" not in tex and r"\begin{tabular}" in tex
    assert not list((tmp_path / "out").glob(".*tmp*"))


def test_published_yaml_and_paper_vs_ours(runs):
    pub = load_published(REPO / "config" / "published.yaml")
    assert set(pub["table"]) == {"table2", "table3", "table4", "table5"}
    row = pub[(pub["table"] == "table2") & (pub["dataset"] == "Object-ME") & (pub["backbone"] == "resnet18")
              & (pub["method"] == "megl") & (pub["metric"] == "accuracy")]
    assert row["value"].item() == pytest.approx(0.7413) and row["page"].item() == 7
    summ = summarise(collect_runs(runs), expected_runs(MATRIX))
    table = paper_vs_ours(summ, pub, standin={"objects": True})
    acc = table[(table["Table"] == "2") & (table["Method"] == "MEGL") & (table["Metric"] == "Accuracy")]
    assert acc["Published"].item() == ".7413" and acc["Ours"].item() == ".7200 ± .0200 (n=3)"
    assert acc["Data"].item() == "stand-in" and acc["Rank (ours)"].item() == "1"
    assert STANDIN_CAPTION in caption({"objects": True})
    assert STANDIN_CAPTION not in caption({"objects": False})


# ---------------------------------------------------------------- validity and rank agreement
def test_paper_vs_ours_leaves_invalid_cells_out(runs):
    pub = load_published(REPO / "config" / "published.yaml")
    summ = summarise(collect_runs(runs), expected_runs(MATRIX))
    validity = pd.DataFrame({"dataset": ["objects"], "backbone": ["resnet18"], "valid": [False],
                             "reason": ["baseline at chance level"]})
    table = paper_vs_ours(summ, pub, standin={"objects": True}, validity=validity)
    acc = table[(table["Table"] == "2") & (table["Method"] == "MEGL") & (table["Metric"] == "Accuracy")]
    assert acc["Ours"].item() == "left out (invalid: baseline at chance level)" and acc["Rank (ours)"].item() == ""


def ranked_runs(order: dict[str, list[str]], seeds=(0, 1, 2)) -> pd.DataFrame:
    """Runs whose accuracy means follow `order` (best first) per backbone, seed noise well below the gaps."""
    rows = []
    for backbone, methods in order.items():
        for rank, method in enumerate(methods):
            for s in seeds:
                rows.append({"dataset": "objects", "backbone": backbone, "method": method, "seed": s,
                             "accuracy": 0.9 - 0.05 * rank + 0.001 * s, "miou": np.nan})
    return pd.DataFrame(rows)


PAPER_ORDER = ["megl", "res_l", "baseline", "haics", "res_g", "cdep"]   # Object-ME, ResNet18, Table 2


def test_kendall_tau_per_cell_and_pooled_with_a_seeded_bootstrap():
    pub = load_published(REPO / "config" / "published.yaml")
    df = ranked_runs({"resnet18": PAPER_ORDER, "vit_b_16": PAPER_ORDER[::-1]})
    tau = rank_agreement(df, pub, n_boot=200, seed=1)
    acc = tau[tau["Metric"] == "Accuracy"].set_index("Backbone")
    assert acc.loc["resnet18", "Kendall tau"] == "+1.00" and acc.loc["resnet18", "n methods"] == 6
    x = [0.7413, 0.7307, 0.7265, 0.7203, 0.7171, 0.7119]
    assert acc.loc["resnet18", "p"] == fmt_number(stats.kendalltau(x, range(6, 0, -1)).pvalue, 3)   # .003
    assert acc.loc["resnet18", "95% CI (bootstrap over seeds)"] == "[+1.00, +1.00]"   # gaps ≫ seed noise
    # vit_b_16: the paper's ViT order differs from the reverse of the ResNet order; scipy says how much
    pub_vit = pub[(pub["dataset"] == "Object-ME") & (pub["backbone"] == "vit_b_16") & (pub["table"] == "table2")
                  & (pub["metric"] == "accuracy")].set_index("method")["value"]
    ours_vit = [0.9 - 0.05 * PAPER_ORDER[::-1].index(m) for m in PAPER_ORDER]
    expected = stats.kendalltau([pub_vit[m] for m in PAPER_ORDER], ours_vit).statistic
    assert acc.loc["vit_b_16", "Kendall tau"] == f"{expected:+.2f}"
    pooled = acc.loc["-"]
    assert pooled["Dataset"] == "pooled (valid cells)" and pooled["Kendall tau"] == f"{(1 + expected) / 2:+.2f}"
    again = rank_agreement(df, pub, n_boot=200, seed=1)
    assert again.equals(tau)                                     # seeded: reproducible
    validity = pd.DataFrame({"dataset": ["objects"], "backbone": ["vit_b_16"], "valid": [False], "reason": ["x"]})
    left = rank_agreement(df, pub, validity=validity, n_boot=50).set_index(["Backbone", "Metric"])
    assert left.loc[("vit_b_16", "Accuracy"), "Note"] == "left out (invalid: x)"
    assert left.loc[("-", "Accuracy"), "Kendall tau"] == "+1.00"   # pooled over the valid cell only
    assert left.loc[("resnet18", "mIoU"), "Note"].startswith("fewer than 3")
