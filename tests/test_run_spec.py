"""The run spec (megl.run_spec): what a cell's runs read is resolved once, and the rule params declare it.

The guarantee: a cell run from a config in which every key its spec does not draw on is garbage trains
and predicts byte for byte what the normal run does; and every field of the spec is a param of the rule
that runs the cell (Snakemake's run_cell, DVC's cell/cell_mllm stages), so changing what a run reads
re-runs it."""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from megl.cell import run_cell
from megl.config import load_config
from megl.matrix import cells, training_config
from megl.methods import MLLM_BACKBONE
from megl.run_spec import RunSpec, resolve_run_spec
from megl.score_inputs import MAP_KEYS

REPO = Path(__file__).resolve().parents[1]
GARBAGE = "garbage: not read by this run"
TIMING = {"latency_ms", "fps", "latency_device"}


def leaves(node: dict, path: tuple = ()):
    """Dotted paths of every leaf (a non-mapping value, or an empty mapping) of a nested mapping."""
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, (*path, key))
        else:
            yield (*path, key)


def with_leaf(config: dict, path: tuple, value) -> dict:
    out = copy.deepcopy(config)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def garbage_outside_spec(config: dict, dataset: str, backbone: str, method: str) -> tuple[dict, list, list]:
    """The config with every leaf the spec does not depend on (garbaging it alone leaves the spec equal)
    set to garbage; and the paths garbaged and kept."""
    spec = resolve_run_spec(config, dataset, backbone, method)
    outside, inside = [], []
    for path in leaves(config):
        try:
            same = resolve_run_spec(with_leaf(config, path, GARBAGE), dataset, backbone, method) == spec
        except Exception:  # noqa: BLE001 - any failure means the resolution reads it
            same = False
        (outside if same else inside).append(path)
    garbage = config
    for path in outside:
        garbage = with_leaf(garbage, path, GARBAGE)
    assert resolve_run_spec(garbage, dataset, backbone, method) == spec
    return garbage, outside, inside


def run_outputs(folder: Path) -> dict:
    """What a run's prediction and training wrote, timing measurements left out."""
    with np.load(folder / "score_inputs.npz", allow_pickle=False) as npz:
        arrays = {k: (npz[k].dtype.str, npz[k].shape, npz[k].tobytes()) for k in (*MAP_KEYS, "clip_sims")}
        facts = json.loads(str(npz["facts"]))
    facts["efficiency"] = {k: v for k, v in facts["efficiency"].items() if k not in TIMING}
    return {"predictions": (folder / "predictions.jsonl").read_bytes(), "arrays": arrays, "facts": facts,
            "weights": (folder / "model.safetensors").read_bytes(),
            "log": (folder / "train_log.csv").read_bytes()}


@pytest.mark.parametrize("method", ["megl", "haics", "baseline"])
def test_a_cell_reads_nothing_outside_its_spec(tiny_data, tmp_path, method):
    """Every config key the spec does not draw on set to garbage: the same selection, weights, log,
    predictions and score inputs, byte for byte."""
    config = copy.deepcopy(tiny_data.config)
    garbage, outside, inside = garbage_outside_spec(config, "objects", "resnet18", method)
    assert ("matrix", "datasets") in outside and ("split", "seed") in outside  # the check has teeth
    spec = resolve_run_spec(config, "objects", "resnet18", method)
    sources = [key for keys in spec.config_keys().values() for key in keys]
    for path in inside:  # what the spec reads lies below the keys it declares (DVC's params name those)
        assert any(".".join(path) == k or ".".join(path).startswith(k + ".") for k in sources), path
    outputs = []
    for name, cfg in (("clean", config), ("garbage", garbage)):
        out = tmp_path / name
        run_cell(cfg, dataset="objects", backbone="resnet18", method=method, seeds=[1], runs_root=out / "runs",
                 selection_out=out / "selection.json", data_root=tiny_data.root, split_path=tiny_data.split,
                 pretrained_dir=tiny_data.pretrained)
        outputs.append({"selection": (out / "selection.json").read_bytes(), **run_outputs(out / "runs" / "seed1")})
    assert outputs[0] == outputs[1]


def test_the_spec_is_the_rule_params_and_what_the_guidance_sets():
    config = load_config(REPO / "config" / "config.yaml")
    names = {RunSpec.PARAM_NAMES.get(f.name, f.name) for f in dataclasses.fields(RunSpec)
             if f.name not in RunSpec.IDENTITY}
    for cell in cells(config):
        spec = resolve_run_spec(config, cell.dataset, cell.backbone, cell.method)
        params = training_config(config, cell.method, cell.backbone, cell.dataset)
        assert set(params) == names and params == spec.params()
        json.dumps(params)  # plain data: Snakemake compares it between runs
        grid = spec.method_def.guidance_points(spec.selection.get("grid", {})) if spec.method_def.guidance else []
        for point in grid:
            chosen = spec.with_guidance(point)
            for dotted, value in point.items():
                section, key = dotted.split(".")[0], dotted.split(".")[-1]
                assert (chosen.train if section == "train" else chosen.baseline)[key] == value
    common = (REPO / "workflow" / "rules" / "common.smk").read_text(encoding="utf-8")
    rule = (REPO / "workflow" / "rules" / "cell.smk").read_text(encoding="utf-8")
    assert "from megl.matrix import training_config as training_config_of" in common
    assert "return training_config_of(config, wildcards.method, wildcards.backbone, wildcards.dataset)" in common
    assert "run_config=cell_config," in rule.split("rule run_cell:")[1].split("\nrule ")[0]


def _covered(key: str, params: list[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in params)


def test_dvc_cell_stages_declare_every_key_the_spec_reads():
    """DVC cannot run the resolution: its cell stages name config keys as params, and every key a
    spec field comes from must be one of them (or below one). `pretrain` reaches the cell as the
    trunk's weights file, a dependency made by the stage whose params hold it."""
    config = load_config(REPO / "config" / "config.yaml")
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]

    def params_of(stage: str, item: dict) -> list[str]:
        listed = stages[stage]["do"]["params"][0]["config/config.yaml"]
        return [p.replace("${item.backbone}", item.get("backbone", "")).replace("${item.dataset}", item["dataset"])
                for p in listed]

    assert "pretrain" in stages["pretrain_backbone"]["do"]["params"][0]["config/config.yaml"]
    for cell in cells(config):
        mllm = cell.backbone == MLLM_BACKBONE
        stage = "cell_mllm" if mllm else "cell"
        params = params_of(stage, {"dataset": cell.dataset, "backbone": cell.backbone})
        spec = resolve_run_spec(config, cell.dataset, cell.backbone, cell.method)
        for field, keys in spec.config_keys().items():
            if field == "pretrain":
                assert "${dvc_root}/backbones/${item.backbone}.safetensors" in stages[stage]["do"]["deps"]
                continue
            for key in keys:
                assert _covered(key, params), (stage, cell, field, key)
