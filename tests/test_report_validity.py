"""Cell validity (megl.report.validity) on constructed runs: a cell at chance and a cell whose
shortcut costs nothing are invalid and leave the claims' families and tallies; valid cells stay."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from megl.report.claims import claim_lines, comparison_rows, evaluate_claims, family_sizes, write_claims
from megl.report.power import mde
from megl.report.validity import cell_mdes, cell_validity, twins

SEEDS = range(5)
CONFIG = {"datasets": {"objects": {"source": "standin"},
                       "objects_ctrl": {"source": "standin", "control_for": "objects"},
                       "actions": {"source": "standin"},
                       "actions_ctrl": {"source": "standin", "control_for": "actions"},
                       "digits": {"source": "standin"}, "digits_ctrl": {"source": "standin", "control_for": "digits"},
                       "official": {"source": "official"}}}
NOISE = [0.004, -0.006, 0.002, 0.007, -0.003]


def runs_of(dataset: str, method: str, acc: float, val: float | None = None, k: int | None = 4,
            spread: float = 1.0) -> list[dict]:
    return [{"dataset": dataset, "backbone": "resnet18", "method": method, "seed": s,
             "accuracy": acc + spread * NOISE[s] * (1 + 0.3 * i), "val_accuracy": val, "num_classes": k}
            for i, s in enumerate(SEEDS)]


def constructed() -> pd.DataFrame:
    rows = []
    for dataset in ("objects", "actions", "digits", "official"):
        rows += runs_of(dataset, "baseline", 0.60, val=0.62)
        rows += runs_of(dataset, "megl", 0.70, val=0.72, spread=-1.0)
        rows += runs_of(dataset, "cdep", 0.64, val=0.66, spread=0.5)
    rows += runs_of("objects_ctrl", "baseline", 0.85, val=0.90)       # learnable; the shortcut costs .25
    rows += runs_of("actions_ctrl", "baseline", 0.85, val=0.27)       # validation at chance (K = 4)
    rows += runs_of("digits_ctrl", "baseline", 0.60, val=0.90, spread=-1.0)   # the shortcut costs nothing
    df = pd.DataFrame(rows)
    df.loc[(df["dataset"] == "official") & (df["method"] == "baseline"), "val_accuracy"] = 0.80  # no twin: its own
    return df


def by_cell(validity: pd.DataFrame) -> dict[str, pd.Series]:
    return {r["dataset"]: r for _, r in validity.iterrows()}


def test_twins_from_control_for():
    assert twins(CONFIG) == {"objects": "objects_ctrl", "actions": "actions_ctrl", "digits": "digits_ctrl"}


def test_cell_at_chance_and_cell_without_shortcut_cost_are_invalid():
    validity = cell_validity(constructed(), CONFIG)
    cells = by_cell(validity)
    assert set(cells) == {"objects", "actions", "digits", "official"}          # twins are no claim cells
    assert cells["objects"]["valid"] and cells["objects"]["v1"] == "pass" and cells["objects"]["v2"] == "pass"
    assert cells["objects"]["cost"] == pytest.approx(0.25, abs=0.01) and cells["objects"]["cost_n"] == 5
    assert cells["objects"]["val_normalised"] == pytest.approx((0.90 - 0.25) / 0.75)
    assert not cells["actions"]["valid"] and "at chance level" in cells["actions"]["reason"]
    assert not cells["digits"]["valid"] and "the shortcut does not bite" in cells["digits"]["reason"]
    assert cells["official"]["valid"] and cells["official"]["v2"].startswith("not applicable")
    assert cells["official"]["val_accuracy"] == pytest.approx(0.80)           # its own baseline


def test_invalid_cells_are_out_of_every_family_and_tally():
    runs = constructed()
    validity = cell_validity(runs, CONFIG)
    claims = evaluate_claims(runs, validity=validity, claims=["C1"])
    assert set(claims["dataset"]) == {"objects", "official"}
    assert set(claims["k"]) == {4}                             # 2 comparisons × 2 valid cells
    line = claim_lines(claims, validity=validity)[0]
    assert "of 2 valid cells" in line and "actions / resnet18" in line and "digits / resnet18" in line


def test_mde_cell_uses_the_family_size_of_every_cell_and_the_median():
    runs = constructed()
    rows = comparison_rows(runs)
    k_all = family_sizes(rows)
    assert k_all["C1"] == 8                                    # 4 cells × 2 baselines, valid or not
    mine = [mde(r["sd_diff"], r["n"], 0.05 / k_all[r["claim"]], sided="one")
            for r in rows if r["dataset"] == "objects" and r["metric"] == "accuracy" and r["testable"]]
    assert cell_mdes(runs, None, 0.05)[("objects", "resnet18")] == pytest.approx(float(np.median(mine)))
    assert by_cell(cell_validity(runs, CONFIG))["objects"]["mde_cell"] == pytest.approx(float(np.median(mine)))


def test_v1_not_checked_without_val_accuracy_and_classes_from_the_label_map(tmp_path):
    runs = constructed().drop(columns=["val_accuracy"])
    cells = by_cell(cell_validity(runs, CONFIG))
    assert cells["actions"]["v1"].startswith("not checked") and cells["actions"]["valid"]
    runs = constructed().drop(columns=["num_classes"])
    label_map = tmp_path / "standin" / "actions_ctrl" / "label_class_id_mapping.json"
    label_map.parent.mkdir(parents=True)
    label_map.write_text(json.dumps({"a": 0, "b": 1, "c": 2, "d": 3}))
    cells = by_cell(cell_validity(runs, CONFIG, results_dir=tmp_path))
    assert cells["actions"]["num_classes"] == 4 and not cells["actions"]["valid"]
    assert cells["objects"]["v1"].startswith("not checked (number of classes unknown)")


def test_claims_md_opens_with_the_validity_table(tmp_path):
    runs = constructed()
    validity = cell_validity(runs, CONFIG)
    paths = write_claims(evaluate_claims(runs, validity=validity), tmp_path / "claims", validity=validity)
    assert (tmp_path / "validity.csv") in paths
    assert list(pd.read_csv(tmp_path / "validity.csv")["valid"]) == [True, False, False, True]
    md = (tmp_path / "claims.md").read_text()
    assert md.index("Cell validity") < md.index("Pre-registered rules")
    assert "invalid: the shortcut does not bite" in md and "invalid: actions_ctrl baseline at chance level" in md
