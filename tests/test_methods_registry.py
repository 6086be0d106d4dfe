"""Issue #22: a method that combines existing flags is one declaration in megl.methods. The test
declares one (L_dc without L1: the consistency loss alone) only in a monkeypatched registry and runs it
through everything that reads the registry: config validation, the matrix, the selection grid, one
real cell (select, train, evaluate), the tables and the claims."""
from __future__ import annotations

import json

import pytest

from megl import methods
from megl.cell import guidance_grid, run_cell
from megl.config import validate_config
from megl.errors import MEGLError
from megl.matrix import cells, dvc_matrix, enumerate_runs, training_config
from megl.report.claims import claim_definitions
from megl.report.collect import collect_runs, expected_runs
from megl.report.tables import method_label, method_order, summarise, table2, table4, table_methods
from megl.score import score_runs

NEW = methods.Method("megl_consistency_only", "L_dc only", "distribution consistency on unannotated samples only",
                     "ablation", consistency=True)


@pytest.fixture
def registry_with_new_method(monkeypatch):
    monkeypatch.setitem(methods.METHODS, NEW.name, NEW)
    return NEW


def test_the_declaration_alone_gives_the_fields_every_reader_uses(registry_with_new_method):
    assert methods.get_method(NEW.name) is NEW and not NEW.is_mllm and not NEW.writes_text
    assert NEW.needs_saliency_graph  # L_dc is a loss on Â: Grad-CAM must be differentiable
    assert NEW.guidance == {"train.lambda_v": "lambda_v"}
    assert methods.methods_in("ablation")[-1] == NEW.name
    assert NEW.name in methods.describe()
    assert "group" not in NEW.run_record() and NEW.run_record()["consistency"] is True
    with pytest.raises(MEGLError, match="unknown method group"):
        methods.methods_in("ablations")


def test_a_method_outside_the_registry_is_refused_by_the_config(tiny_config):
    tiny_config["matrix"]["methods"] = ["baseline", NEW.name]
    with pytest.raises(MEGLError, match=f"unknown method '{NEW.name}'"):
        validate_config(tiny_config, "test")


def test_a_new_method_runs_through_matrix_cell_tables_and_claims(registry_with_new_method, tiny_data, tiny_config,
                                                                  tmp_path):
    config = tiny_config
    config["matrix"].update(datasets=["objects"], backbones=["resnet18"], methods=["baseline", NEW.name],
                            mllm_methods=[], seeds=[0])
    config["selection"]["grid"].update(lambda_v=[1.0, 10.0], lambda_t=[0.1, 1.0], weight=[1.0, 10.0])
    config = validate_config(config, "test")

    # the matrix: its runs, cells, DVC's foreach lists and the training config of the rule
    assert [r.method for r in enumerate_runs(config)] == ["baseline", NEW.name]
    assert f"objects-resnet18-{NEW.name}" in dvc_matrix(config)["cells"]
    assert [c.cell for c in cells(config)][-1] == f"objects-resnet18-{NEW.name}"
    rule = training_config(config, NEW.name, "resnet18", "objects")
    assert rule["selection"]["grid"] == {"lambda_v": [1.0, 10.0]} and "lambda_t" not in rule["train"]
    assert guidance_grid(config, NEW) == [{"train.lambda_v": 1.0}, {"train.lambda_v": 10.0}]

    # one real cell: select λ_v on validation, train and evaluate the seed
    cell_dir = tmp_path / "runs" / "objects" / "resnet18" / NEW.name
    selection = run_cell(config, dataset="objects", backbone="resnet18", method=NEW.name, seeds=[0],
                         runs_root=cell_dir, selection_out=tmp_path / "selection.json", data_root=tiny_data.root,
                         split_path=tiny_data.split, pretrained_dir=tiny_data.pretrained)
    score_runs([cell_dir / "seed0"])  # the workflow's score step (metrics.json)
    assert [c["overrides"] for c in selection["candidates"]] == guidance_grid(config, NEW)
    assert set(selection["chosen"]) == {"train.lambda_v"}
    log = (cell_dir / "seed0" / "train_log.csv").read_text().splitlines()
    assert log[0].split(",")[:7] == ["epoch", "step", "loss", "loss_pred", "loss_visual", "loss_dc", "loss_textual"]
    assert all(row.split(",")[5] and not row.split(",")[4] for row in log[1:])  # L_dc logged, no L_visual
    record = json.loads((cell_dir / "seed0" / "run.json").read_text())
    assert record["method"] == NEW.run_record()

    # the tables and the claims: its group puts it in Table 4 and the ablation claims, not in Table 2
    summary = summarise(collect_runs([cell_dir / "seed0" / "metrics.json"]), expected_runs(config["matrix"]))
    assert NEW.name in table_methods("table4") and NEW.name not in table_methods("table2")
    assert method_order().index(NEW.name) > method_order().index("megl")
    assert method_label(NEW.name) in set(table4(summary)["Method"])
    assert method_label(NEW.name) not in set(table2(summary)["Method"])
    definitions = claim_definitions()
    assert ("megl", NEW.name, "accuracy") in definitions["C3"][1]
    assert (NEW.name, "baseline", "accuracy") in definitions["C4"][1]
