"""The shipped configs validate; bad configs fail naming the key; config/README.md documents every key."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from megl.config import load_config, load_schema, validate_config
from megl.errors import MEGLError
from megl.matrix import enumerate_runs
from megl.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "config"
CONFIGS = ["config.yaml", "smoke.yaml", "paper.yaml"]
DEFAULT = CONFIG_DIR / "config.yaml"
README = CONFIG_DIR / "README.md"
NAMED = (("datasets",), ("backbones",), ("train", "by_backbone"), ("pretrain", "by_backbone"), ("matrix", "blocks"),
         ("datasets", "<name>", "frozen_stages"))  # mappings keyed by user-chosen names (<name>)


# ---------------------------------------------------------------- shipped configs
@pytest.mark.parametrize("name", [*CONFIGS, "full.yaml"])
def test_shipped_config_validates(name: str) -> None:
    config = load_config(CONFIG_DIR / name)
    assert enumerate_runs(config)


def test_paper_config_runs_the_papers_matrix_shape() -> None:
    """Tables 2/3/5's methods on both datasets, Table 4's ablations on Object-ME only."""
    from megl.matrix import cells

    config = load_config(CONFIG_DIR / "paper.yaml")
    classifier = [n for n, meth in METHODS.items() if meth.kind == "classifier"]
    ablations = [n for n in classifier if n.startswith("megl_")]
    got = {(c.dataset, c.backbone, c.method) for c in cells(config)}
    for backbone in ("resnet18", "vit_b_16"):
        for method in classifier:
            assert ("objects", backbone, method) in got
            assert (("actions", backbone, method) in got) == (method not in ablations)
    assert {("objects", "mllm", m) for m in ("llava_vqa", "finetune_cot")} <= got
    assert len(config["matrix"]["seeds"]) == 5
    assert len(enumerate_runs(config)) == (2 * 12 + 2 * 6) * 5 + 2 * 2 * 5
    assert all(d["source"] == "official" for d in config["datasets"].values())
    assert config["backbones"]["resnet18"]["widths"] == [64, 128, 256, 512]
    assert config["vision_encoder"]["kind"] == config["lm"]["kind"] == "pretrained"


def test_a_cell_in_two_blocks_runs_once() -> None:
    from megl.matrix import cells

    config = load_config(DEFAULT)
    config["matrix"]["blocks"]["again"] = {"datasets": ["objects"], "backbones": ["resnet18"], "methods": ["megl"]}
    runs = enumerate_runs(config)
    assert len(runs) == len(set(runs))
    assert sum(1 for c in cells(config) if (c.dataset, c.backbone, c.method) == ("objects", "resnet18", "megl")) == 1


def test_full_config_is_the_default_matrix_crossed_whole() -> None:
    """config/full.yaml differs from config/config.yaml only in its matrix (every method on every
    dataset) and results_dir."""
    from megl.matrix import cells

    default, full = (yaml.safe_load((CONFIG_DIR / name).read_text()) for name in ("config.yaml", "full.yaml"))
    assert full.pop("results_dir") == "results/full"
    assert {k: v for k, v in full.items() if k != "matrix"} == {k: v for k, v in default.items() if k != "matrix"}
    config = load_config(CONFIG_DIR / "full.yaml")
    classifier = [n for n, meth in METHODS.items() if meth.kind == "classifier"]
    got = {(c.dataset, c.backbone, c.method) for c in cells(config)}
    assert {(d, b, m) for d in ("objects", "actions", "digits") for b in ("resnet18", "vit_b_16")
            for m in classifier} <= got
    assert cells(load_config(DEFAULT)) != cells(config)


def test_default_control_twins_differ_only_in_the_shortcut() -> None:
    config = load_config(DEFAULT)
    twins = {n: e["control_for"] for n, e in config["datasets"].items() if "control_for" in e}
    assert set(twins.values()) == {"objects", "actions", "digits"}
    for twin, target in twins.items():
        a, b = dict(config["datasets"][twin]["standin"]), dict(config["datasets"][target]["standin"])
        assert a.pop("shortcut_strength") == 0 and b.pop("shortcut_strength") > 0 and a == b


@pytest.mark.parametrize("change, words", [
    ({"datasets.objects_control.standin.seed": 7}, "seed differ from objects"),
    ({"datasets.objects_control.standin.shortcut_strength": 0.5}, "shortcut_strength must be 0"),
    ({"datasets.objects_control.control_for": "nothing"}, "is not another dataset"),
    ({"datasets.digits_control.frozen_stages": {"resnet18": 4}}, "frozen_stages must equal digits"),
])
def test_a_control_twin_that_is_not_a_twin_is_refused(change, words) -> None:
    msg = _error(change)
    assert "control_for" in msg and words in msg


def test_selection_seed_must_not_be_a_reported_seed() -> None:
    msg = _error({"selection.seed": 3})
    assert "selection.seed" in msg and "reported seed" in msg


def test_a_dataset_sets_the_trunk_depth_of_its_cells() -> None:
    from megl.config import for_cell
    from megl.matrix import training_config

    config = load_config(DEFAULT, {"datasets.digits.frozen_stages": {"resnet18": 1},
                                   "datasets.digits_control.frozen_stages": {"resnet18": 1}})
    assert for_cell(config, "digits", "resnet18")["backbones"]["resnet18"]["frozen_stages"] == 1
    assert for_cell(config, "objects", "resnet18")["backbones"]["resnet18"]["frozen_stages"] == 4
    assert training_config(config, "baseline", "resnet18", "digits")["backbone"]["frozen_stages"] == 1
    assert "datasets.digits.frozen_stages" in _error({"datasets.digits.frozen_stages": {"resnet99": 0}})


def test_blocks_and_a_flat_matrix_are_not_mixed() -> None:
    assert "not both" in _error({"matrix.methods": ["baseline"]})


# ---------------------------------------------------------------- bad configs
def _error(overrides: dict) -> str:
    with pytest.raises(MEGLError) as info:
        load_config(DEFAULT, overrides)
    return str(info.value)


def test_unknown_method_is_named() -> None:
    msg = _error({"matrix.blocks.comparison.methods": ["baseline", "megl_plus_plus"]})
    assert "megl_plus_plus" in msg and "matrix.blocks.comparison.methods" in msg


def test_unknown_mllm_method_is_named() -> None:
    msg = _error({"matrix.blocks.comparison.mllm_methods": ["gpt_vqa"]})
    assert "gpt_vqa" in msg


@pytest.mark.parametrize("dotted, key", [("train.epochz", "epochz"), ("colour", "colour"),
                                         ("lm.lora_rank", "lora_rank"), ("split.shuffle", "shuffle")])
def test_unknown_key_is_rejected_naming_it(dotted: str, key: str) -> None:
    msg = _error({dotted: 1})
    assert key in msg


def test_matrix_dataset_without_entry() -> None:
    msg = _error({"matrix.blocks.ablation.datasets": ["objects", "birds"]})
    assert "birds" in msg and "matrix.blocks.ablation.datasets" in msg


def test_matrix_backbone_without_entry() -> None:
    msg = _error({"matrix.blocks.ablation.backbones": ["resnet50"]})
    assert "resnet50" in msg and "matrix.blocks.ablation.backbones" in msg


def test_classifier_method_under_mllm_methods() -> None:
    msg = _error({"matrix.blocks.ablation.mllm_methods": ["megl"]})
    assert "'megl'" in msg and "matrix.blocks.ablation.mllm_methods" in msg and "matrix.blocks.ablation.methods" in msg


def test_mllm_method_under_methods() -> None:
    msg = _error({"matrix.blocks.ablation.methods": ["baseline", "finetune_cot"]})
    assert "'finetune_cot'" in msg and "matrix.blocks.ablation.mllm_methods" in msg


@pytest.mark.parametrize("dotted, path, key", [
    ("baselines.haics.weigth", "baselines.haics", "weigth"),
    ("baselines.res_l.imputation_factr", "baselines.res_l", "imputation_factr"),
    ("baselines.hiacs", "baselines", "hiacs"),
    ("lm.tiny.hiden_size", "lm.tiny", "hiden_size"),
    ("vision_encoder.tiny.epoch", "vision_encoder.tiny", "epoch"),
    ("evaluate.decoding.num_beam", "evaluate.decoding", "num_beam"),
    ("backbones.resnet18.width", "backbones.resnet18", "width"),
])
def test_typo_in_a_formerly_untyped_block_is_named(dotted: str, path: str, key: str) -> None:
    msg = _error({dotted: 1})
    assert f"key {path}:" in msg and repr(key) in msg, msg


@pytest.mark.parametrize("dotted, value", [("baselines.cdep.classes", "every"), ("lm.tiny.lr", 0),
                                           ("baselines.res_l.imputation_factor", 3)])
def test_bad_value_in_a_typed_block_names_the_key(dotted: str, value) -> None:
    assert f"key {dotted}:" in _error({dotted: value})


def test_tiny_models_need_their_tiny_block() -> None:
    raw = yaml.safe_load(DEFAULT.read_text())
    del raw["lm"]["tiny"]
    with pytest.raises(MEGLError, match="key lm: 'tiny' is a required property"):
        validate_config(raw)


def test_schema_defaults_are_filled() -> None:
    raw = yaml.safe_load((CONFIG_DIR / "smoke.yaml").read_text())
    assert "schedule" not in raw["train"] and raw["results_dir"] == "results/smoke"  # its own (make smoke)
    config = load_config(CONFIG_DIR / "smoke.yaml")
    assert (config["train"]["schedule"], config["train"]["warmup_fraction"], config["train"]["amp_bf16"]) == \
        ("constant", 0, True)
    assert config["results_dir"] == "results/smoke"
    del raw["results_dir"]
    assert validate_config(raw)["results_dir"] == "results"


def test_bad_value_names_the_key() -> None:
    msg = _error({"train.epochs": 0})
    assert "train.epochs" in msg


# ---------------------------------------------------------------- overrides
def test_dotted_overrides() -> None:
    epochs_in_file = yaml.safe_load(DEFAULT.read_text())["train"]["epochs"]
    assert epochs_in_file != 1
    config = load_config(DEFAULT, {"train.epochs": 1, "evaluate.decoding.num_beams": 2,
                                   "matrix.seeds": [7], "lm.lora": None})
    assert config["train"]["epochs"] == 1
    assert config["evaluate"]["decoding"]["num_beams"] == 2
    assert config["lm"]["lora"] is None
    assert {r.seed for r in enumerate_runs(config)} == {7}
    assert load_config(DEFAULT)["train"]["epochs"] == epochs_in_file  # the file itself is untouched


def test_cli_set_parses_yaml_values() -> None:
    from megl.cli import _config

    config = _config(SimpleNamespace(
        config=str(DEFAULT), set=["train.epochs=1", "train.lr=1.0e-4", "matrix.blocks.ablation.methods=[megl]"]))
    # (YAML 1.1: write 1.0e-4; a bare 1e-4 is a string and fails validation naming train.lr)
    assert config["train"]["epochs"] == 1
    assert config["train"]["lr"] == pytest.approx(1e-4)
    assert config["matrix"]["blocks"]["ablation"]["methods"] == ["megl"]


# ---------------------------------------------------------------- the resolved config (Snakefile)
def test_snakemake_config_overrides_are_typed_and_merged() -> None:
    from megl.config import apply_overrides

    config = load_config(DEFAULT)
    # what Snakemake's parser makes of --config 'train={epochs: 1, lr: 1e-3}' 'matrix={seeds: [7]}' device=cuda
    apply_overrides(config, {"train": {"epochs": "1", "lr": "1e-3"}, "matrix": {"seeds": ["7"]}, "device": "cuda",
                             "lm": {"lora": "null"}})
    assert (config["train"]["epochs"], config["train"]["lr"], config["train"]["batch_size"]) == (1, 0.001, 32)
    assert config["matrix"]["seeds"] == [7] and config["matrix"]["blocks"]  # siblings kept
    assert config["device"] == "cuda" and config["lm"]["lora"] is None
    validate_config(config)


def test_resolved_config_file_is_what_load_config_returns(tmp_path: Path) -> None:
    import os

    from megl.config import dump_resolved, resolve_config, resolved_config_path
    from megl.io import write_text_if_changed as write_if_changed

    raw = yaml.safe_load((CONFIG_DIR / "smoke.yaml").read_text())
    raw["results_dir"] = str(tmp_path / "res")
    path = resolved_config_path(raw)
    assert path == tmp_path / "res" / "config.resolved.yaml"
    assert write_if_changed(path, dump_resolved(resolve_config(raw)))
    written = yaml.safe_load(path.read_text())
    assert written["train"]["schedule"] == "constant"  # defaults filled in the file itself
    assert written == load_config(path)
    expected = load_config(CONFIG_DIR / "smoke.yaml")
    expected["results_dir"] = raw["results_dir"]
    assert written == expected
    os.utime(path, ns=(0, 0))
    assert not write_if_changed(path, dump_resolved(resolve_config(raw)))  # same content: mtime kept
    assert path.stat().st_mtime_ns == 0 and not list(path.parent.glob(".*.tmp"))


# ---------------------------------------------------------------- config/README.md
ROW = re.compile(r"^\|\s*`([A-Za-z_][\w.<>]*)`\s*\|(.*)$")


def readme_rows() -> dict[str, list[str]]:
    """Key tables of config/README.md: backticked key path in the first cell → the other cells."""
    rows = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        m = ROW.match(line)
        if m:
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def config_leaves(node, prefix: tuple = ()) -> set[str]:
    """Dotted leaf paths; names under datasets/backbones become <name>. Lists are leaves."""
    out = set()
    for key, value in node.items():
        path = prefix + (("<name>",) if prefix in NAMED else (key,))
        if isinstance(value, dict) and value:
            out |= config_leaves(value, path)
        else:
            out.add(".".join(path))
    return out


def exists(node, parts: list[str]) -> bool:
    if not parts:
        return True
    if not isinstance(node, dict):
        return False
    head, rest = parts[0], parts[1:]
    if head == "<name>":
        return any(exists(child, rest) for child in node.values())
    return head in node and exists(node[head], rest)


def raw_configs() -> list[dict]:
    return [yaml.safe_load((CONFIG_DIR / name).read_text(encoding="utf-8")) for name in CONFIGS]


def test_readme_parses_many_keys() -> None:
    rows = readme_rows()
    assert len(rows) >= 90, "config/README.md key tables not found (rows must start with | `key.path` |)"
    assert all(len(cells) >= 5 for cells in rows.values()), "each key row needs type|default|meaning|read by|source"


def test_every_config_key_is_documented() -> None:
    documented = set(readme_rows())
    missing = set()
    for name, cfg in zip(CONFIGS, raw_configs()):
        missing |= {f"{leaf} ({name})" for leaf in config_leaves(cfg) if leaf not in documented}
    assert not missing, f"keys missing from config/README.md: {sorted(missing)}"


def test_every_documented_key_exists() -> None:
    """A documented key is set in one of the shipped configs, or is marked optional and accepted by
    the schema when set to its documented default."""
    configs = raw_configs()
    problems = []
    for key, cells in readme_rows().items():
        parts = key.split(".")
        if any(exists(cfg, parts) for cfg in configs):
            continue
        if "optional" not in cells[0]:
            problems.append(f"{key}: in no shipped config and not marked optional")
            continue
        literal = re.search(r"`([^`]*)`", cells[1])
        if literal is None:
            problems.append(f"{key}: optional but no backticked default")
            continue
        try:
            load_config(DEFAULT, {key: yaml.safe_load(literal.group(1))})
        except MEGLError as exc:
            problems.append(f"{key}: the schema rejects it: {exc}")
    assert not problems, "\n".join(problems)


def schema_paths(node: dict, prefix: tuple = ()) -> set[str]:
    """Dotted paths of every property the schema declares (additionalProperties schemas → <name>)."""
    out = set()
    props = node.get("properties") or {}
    for key, sub in props.items():
        path = prefix + (key,)
        out.add(".".join(path))
        out |= schema_paths(sub, path)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and extra.get("properties"):
        out |= schema_paths(extra, prefix + ("<name>",))
    return out


def test_every_schema_key_is_documented() -> None:
    documented = set(readme_rows())
    undocumented = [p for p in sorted(schema_paths(load_schema()))
                    if p not in documented and not any(d.startswith(p + ".") for d in documented)]
    assert not undocumented, f"schema keys missing from config/README.md: {undocumented}"


def test_per_backbone_training_regime_replaces_the_shared_one() -> None:
    from megl.config import for_backbone
    from megl.matrix import training_config

    config = load_config(DEFAULT, {"train.lr": 0.001, "train.epochs": 4,
                                   "train.by_backbone": {"resnet18": {"lr": 0.003, "epochs": 8}}})
    res, vit = for_backbone(config, "resnet18")["train"], for_backbone(config, "vit_b_16")["train"]
    assert (res["lr"], res["epochs"], vit["lr"], vit["epochs"]) == (0.003, 8, 0.001, 4)
    assert "by_backbone" not in res and "by_backbone" not in vit
    assert config["train"]["lr"] == 0.001  # the loaded config itself is untouched
    # a rule's params (what triggers a re-run) carry the effective values of its own backbone only
    assert training_config(config, "baseline", "resnet18")["train"]["epochs"] == 8
    assert training_config(config, "baseline", "vit_b_16")["train"]["epochs"] == 4


def test_per_backbone_regime_for_an_unknown_backbone_is_named() -> None:
    with pytest.raises(MEGLError, match="train.by_backbone"):
        load_config(DEFAULT, {"train.by_backbone": {"resnet50": {"lr": 0.01}}})


def test_per_backbone_pretraining_reaches_the_command(tiny_config, tmp_path) -> None:
    """`pretrain.by_backbone` changes what `megl pretrain-backbone` trains for that backbone only."""
    import yaml

    from megl.cli import main

    config = copy.deepcopy(tiny_config)
    config["pretrain"].update(n_images=40, epochs=1, by_backbone={"vit_b_16": {"epochs": 2}})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    epochs = {}
    for backbone in ("resnet18", "vit_b_16"):
        report = tmp_path / f"{backbone}.json"
        assert main(["pretrain-backbone", "--config", str(path), "--backbone", backbone,
                     "--out", str(tmp_path / f"{backbone}.safetensors"), "--report", str(report)]) == 0
        epochs[backbone] = len(json.loads(report.read_text())["losses"])
    assert epochs == {"resnet18": 1, "vit_b_16": 2}


def test_per_backbone_pretraining_for_an_unknown_backbone_is_named() -> None:
    with pytest.raises(MEGLError, match="pretrain.by_backbone"):
        load_config(DEFAULT, {"pretrain.by_backbone": {"resnet50": {"epochs": 2}}})
