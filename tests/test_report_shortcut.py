"""The shortcut table: the twin's baseline against the baseline, and each method's share won back."""
from __future__ import annotations

import pandas as pd
import pytest

from megl.report.shortcut import shortcut_recovery, write_shortcut_table

CONFIG = {"datasets": {"digits": {"source": "standin"},
                       "digits_control": {"source": "standin", "control_for": "digits"}}}


def runs_frame() -> pd.DataFrame:
    rows = []
    for seed, (clean, base, megl, l1) in enumerate([(.95, .70, .80, .70), (.96, .72, .84, .73), (.97, .74, .86, .71)]):
        rows += [("digits_control", "resnet18", "baseline", seed, clean),
                 ("digits", "resnet18", "baseline", seed, base),
                 ("digits", "resnet18", "megl", seed, megl), ("digits", "resnet18", "megl_visual_l1_only", seed, l1)]
    return pd.DataFrame(rows, columns=["dataset", "backbone", "method", "seed", "accuracy"])


def test_cost_and_share_won_back_are_paired_by_seed(tmp_path):
    frame = shortcut_recovery(runs_frame(), CONFIG).set_index("method")
    assert frame.loc["no shortcut (twin baseline)", "gain"] == pytest.approx(.24)  # the decoy's cost
    assert frame.loc["megl", "gain"] == pytest.approx(.34 / 3)
    assert frame.loc["megl", "share_won_back"] == pytest.approx((.34 / 3) / .24)
    assert frame.loc["megl_visual_l1_only", "gain_ci_low"] < 0 < frame.loc["megl_visual_l1_only", "gain_ci_high"]
    paths = write_shortcut_table(runs_frame(), CONFIG, tmp_path / "shortcut")
    assert "47%" in paths[1].read_text() and pd.read_csv(paths[0])["method"].tolist()[0].startswith("no shortcut")


def test_a_dataset_without_twin_has_no_row():
    frame = shortcut_recovery(runs_frame(), {"datasets": {"digits": {"source": "standin"}}})
    assert frame.empty


def test_each_row_says_whether_its_cell_is_a_fair_test(tmp_path):
    validity = pd.DataFrame({"dataset": ["digits"], "backbone": ["resnet18"], "valid": [False],
                             "reason": ["the shortcut does not bite"]})
    paths = write_shortcut_table(runs_frame(), CONFIG, tmp_path / "shortcut", validity=validity)
    table = paths[1].read_text()
    assert table.count("invalid: the shortcut does not bite") == 4  # twin, baseline, MEGL, L1-only rows
    assert "not checked" in write_shortcut_table(runs_frame(), CONFIG, tmp_path / "again")[1].read_text()
