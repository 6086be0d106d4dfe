"""`megl summarize` on a small results tree and `megl compare` on constructed summaries."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from megl.cli import build_parser, main
from megl.report.collect import required_keys
from megl.report.summary import compare_summaries, write_summary, z_score

MATRIX = {"datasets": ["objects"], "backbones": ["resnet18"], "methods": ["baseline", "megl"],
          "mllm_methods": ["llava_vqa"], "seeds": [0, 1, 2]}


def write_run(root: Path, backbone: str, method: str, seed: int, **values) -> None:
    rec = {k: 0.5 for k in required_keys()} | values
    rec["run"] = {"dataset": "objects", "backbone": backbone, "method": method, "seed": seed}
    path = root / "runs" / "objects" / backbone / method / f"seed{seed}" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))


def test_summarize_writes_flat_json_per_cell_and_csv(tmp_path):
    results = tmp_path / "results"
    for seed, acc in enumerate((0.70, 0.72, 0.74)):
        write_run(results, "resnet18", "megl", seed, accuracy=acc, miou_all=0.4 + 0.1 * seed)
        write_run(results, "resnet18", "baseline", seed, accuracy=0.6)
    write_run(results, "mllm", "llava_vqa", 0, accuracy=0.55, miou=None, saliency_auprc=None)  # seeds 1, 2 missing
    paths = write_summary({"matrix": MATRIX}, results, tmp_path / "metrics")
    assert sorted(p.name for p in paths) == ["objects_mllm.json", "objects_resnet18.json", "summary.csv"]

    cell = json.loads((tmp_path / "metrics" / "objects_resnet18.json").read_text())
    acc = cell["megl"]["accuracy"]
    assert acc["mean"] == pytest.approx(0.72) and acc["std"] == pytest.approx(0.02) and acc["n"] == 3
    assert acc["per_seed"] == pytest.approx({"seed0": 0.70, "seed1": 0.72, "seed2": 0.74})
    assert cell["megl"]["miou_all"]["mean"] == pytest.approx(0.5)
    assert "miou_all" not in cell["baseline"] and cell["baseline"]["accuracy"]["std"] == 0
    mllm = json.loads((tmp_path / "metrics" / "objects_mllm.json").read_text())
    assert mllm["llava_vqa"]["accuracy"] == {"mean": 0.55, "std": None, "n": 1, "per_seed": {"seed0": 0.55}}
    assert "miou" not in mllm["llava_vqa"]

    def leaves(obj):  # only dicts, numbers and null: what `dvc metrics show` flattens
        return [x for v in obj.values() for x in (leaves(v) if isinstance(v, dict) else [v])]
    assert all(v is None or isinstance(v, (int, float)) for v in leaves(cell) + leaves(mllm))

    csv = pd.read_csv(tmp_path / "metrics" / "summary.csv")
    assert list(csv.columns) == ["dataset", "backbone", "method", "metric", "mean", "std", "n"]
    row = csv[(csv["method"] == "megl") & (csv["metric"] == "accuracy")].iloc[0]
    assert row["mean"] == pytest.approx(0.72) and row["n"] == 3
    assert math.isnan(csv[(csv["method"] == "llava_vqa") & (csv["metric"] == "accuracy")]["std"].item())


def summary(rows) -> pd.DataFrame:
    return pd.DataFrame([dict(zip(["dataset", "backbone", "method", "metric", "mean", "std", "n"],
                                  ("objects", "resnet18", m, k, mean, sd, n))) for m, k, mean, sd, n in rows])


REFERENCE = summary([("megl", "accuracy", 0.70, 0.02, 3), ("megl", "miou", 0.70, 0.01, 4),
                     ("baseline", "accuracy", 0.50, 0.10, 4), ("baseline", "miou", 0.50, 0.0, 3),
                     ("cdep", "accuracy", 0.60, 0.01, 3)])
NEW = summary([("megl", "accuracy", 0.72, 0.02, 3), ("megl", "miou", 0.80, 0.01, 4),
               ("baseline", "accuracy", 0.60, float("nan"), 1), ("baseline", "miou", 0.51, 0.0, 3),
               ("haics", "accuracy", 0.62, 0.01, 3)])


def test_z_by_hand():
    assert z_score(0.70, 0.02, 3, 0.72, 0.02, 3) == pytest.approx(0.02 / math.sqrt(2 * 0.0004 / 3))  # 1.2247
    assert z_score(0.70, 0.01, 4, 0.80, 0.01, 4) == pytest.approx(0.10 / math.sqrt(2 * 0.0001 / 4))  # 14.14
    # one new seed: its sd is borrowed from the reference, √(.01/4 + .01/1) = .1118
    assert z_score(0.50, 0.10, 4, 0.60, float("nan"), 1) == pytest.approx(0.10 / math.sqrt(0.01 / 4 + 0.01))
    assert z_score(0.5, 0.0, 3, 0.5, 0.0, 3) == 0.0
    assert z_score(0.5, 0.0, 3, 0.51, 0.0, 3) == math.inf
    assert z_score(0.5, float("nan"), 1, 0.4, float("nan"), 1) == -math.inf


def test_compare_statuses():
    table = compare_summaries(REFERENCE, NEW).set_index(["method", "metric"])
    assert table.loc[("megl", "accuracy"), "status"] == "agrees"
    assert table.loc[("megl", "accuracy"), "diff"] == pytest.approx(0.02)
    assert table.loc[("megl", "accuracy"), "reference"] == ".7000 ± .0200 (n=3)"
    assert table.loc[("megl", "miou"), "status"] == "differs"
    assert table.loc[("baseline", "accuracy"), "status"] == "agrees"
    assert table.loc[("baseline", "accuracy"), "new"] == ".6000 (n=1)"
    assert table.loc[("baseline", "miou"), "status"] == "differs"
    assert table.loc[("cdep", "accuracy"), "status"] == "missing in new"
    assert table.loc[("haics", "accuracy"), "status"] == "new cell"


def test_compare_cli_exit_codes_and_markdown(tmp_path, capsys):
    ref, new = tmp_path / "ref.csv", tmp_path / "new.csv"
    REFERENCE.to_csv(ref, index=False)
    NEW.to_csv(new, index=False)
    assert main(["compare", "--reference", str(ref), "--summary", str(new), "--out", str(tmp_path / "c.md")]) == 0
    md = (tmp_path / "c.md").read_text()
    assert "| objects" in md and "missing in new" in md and "differs: 2" in md and "+14.14" in md
    assert capsys.readouterr().out == md
    assert main(["compare", "--reference", str(ref), "--summary", str(new), "--strict"]) == 1
    assert main(["compare", "--reference", str(ref), "--summary", str(ref), "--strict"]) == 0


def test_new_subcommands_document_every_argument():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in ("summarize", "compare"):
        for action in sub.choices[name]._actions:
            assert action.help, f"megl {name} {action.option_strings}: no help text"
