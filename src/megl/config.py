"""Load and validate the workflow config (config/*.yaml) against its JSON schema.

The workflow (workflow/Snakefile) validates with this module too, so both read one schema file.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from megl.errors import MEGLError

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))


def _import_jsonschema():
    """jsonschema, imported without its optional `rfc3987_syntax` format check ("iri"): that module
    builds a Lark grammar when imported, 1.5-2.5 s, which every megl job paid at start-up. The config
    is validated without a format checker, so no check is lost. Where jsonschema is already imported
    (e.g. by Snakemake), it is used as it is."""
    if "jsonschema" not in sys.modules and "rfc3987_syntax" not in sys.modules:
        sys.modules["rfc3987_syntax"] = None  # None in sys.modules: `import rfc3987_syntax` raises ImportError
        try:
            import jsonschema
        finally:
            del sys.modules["rfc3987_syntax"]
    import jsonschema

    return jsonschema


def _default_filling(validator_cls):
    """`validator_cls` extended to fill each property's schema `default` into the instance before
    validating it: jsonschema's documented extension pattern (its FAQ, "Why doesn't my schema's default
    property set the default on my instance?"), as Snakemake's own `validate()` fills them, so the
    workflow's params and the megl commands see the same filled-in config."""
    validate_properties = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if validator.is_type(instance, "object"):
            for key, subschema in properties.items():
                if isinstance(subschema, dict) and "default" in subschema:
                    instance.setdefault(key, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return _import_jsonschema().validators.extend(validator_cls, {"properties": set_defaults})


def validate_config(config: dict, source: str = "<config>") -> dict:
    """Validate `config` in place, filling schema defaults; raise MEGLError naming each bad key."""
    validator_cls = _default_filling(_import_jsonschema().Draft202012Validator)
    errors = sorted(validator_cls(load_schema()).iter_errors(config), key=lambda e: list(e.path))
    if errors:
        lines = [f"{source}: key {'.'.join(map(str, e.path)) or '(top level)'}: {e.message}" for e in errors]
        raise MEGLError("invalid config:\n" + "\n".join(lines))
    from megl import config_rules

    config_rules.check(config, source)
    _check_matrix_names(config, source)
    return config


def _check_matrix_names(config: dict, source: str) -> None:
    """Every dataset and backbone of the matrix must be defined; every method must be registered; a
    dataset's per-backbone trunk depth names declared backbones; a control twin names a dataset."""
    from megl.matrix_blocks import BLOCK_KEYS, blocks, check_method_kinds
    from megl.methods import METHODS  # late import: methods imports nothing heavy, but keep config light

    matrix = config["matrix"]
    problems = []
    if "blocks" in matrix and any(k in matrix for k in BLOCK_KEYS):
        problems.append(f"{source}: key matrix: give either matrix.blocks or the flat datasets/backbones/methods, "
                        "not both")
    for block_name, block in blocks(matrix).items():
        where = f"matrix.blocks.{block_name}" if "blocks" in matrix else "matrix"
        for name in block["datasets"]:
            if name not in config["datasets"]:
                problems.append(f"{source}: key {where}.datasets: dataset {name!r} has no entry under datasets")
        for name in block["backbones"]:
            if name not in config["backbones"]:
                problems.append(f"{source}: key {where}.backbones: backbone {name!r} has no entry under backbones")
        for name in [*block["methods"], *block["mllm_methods"]]:
            if name not in METHODS:
                problems.append(f"{source}: key {where}.methods: unknown method {name!r}; known: {', '.join(METHODS)}")
    if int(config["selection"]["seed"]) in {int(s) for s in matrix["seeds"]}:
        problems.append(f"{source}: key selection.seed: {config['selection']['seed']} is one of matrix.seeds; "
                        "the selection seed must never be a reported seed")
    for section in ("train", "pretrain"):
        for name in (config.get(section) or {}).get("by_backbone") or {}:
            if name not in config["backbones"]:
                problems.append(f"{source}: key {section}.by_backbone: backbone {name!r} has no entry under backbones")
    for dataset, entry in config["datasets"].items():
        for name in entry.get("frozen_stages") or {}:
            if name not in config["backbones"]:
                problems.append(f"{source}: key datasets.{dataset}.frozen_stages: backbone {name!r} has no entry "
                                "under backbones")
        problems += _control_twin_problems(config, dataset, entry, source)
    if problems:
        raise MEGLError("invalid config:\n" + "\n".join(problems))
    try:
        check_method_kinds(matrix)
    except MEGLError as exc:
        raise MEGLError(f"invalid config:\n{source}: {exc}") from None


def _control_twin_problems(config: dict, dataset: str, entry: dict, source: str) -> list[str]:
    """A control twin (`control_for: X`) is X without its shortcut: the same stand-in with
    shortcut_strength 0 and the same trunk depth, so that its baseline measures what the shortcut
    costs on the same images (the validity check, docs/experiment.md)."""
    target = entry.get("control_for")
    if target is None:
        return []
    key = f"{source}: key datasets.{dataset}.control_for"
    if target not in config["datasets"] or target == dataset:
        return [f"{key}: {target!r} is not another dataset under datasets"]
    twin = config["datasets"][target]
    if entry["source"] != "standin" or twin["source"] != "standin":
        return [f"{key}: a control twin is a stand-in of a stand-in (official data has no known shortcut)"]
    mine, theirs = dict(entry["standin"]), dict(twin["standin"])
    if mine.pop("shortcut_strength") != 0:
        return [f"{key}: the twin's standin.shortcut_strength must be 0"]
    theirs.pop("shortcut_strength")
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        return [f"{key}: standin keys {', '.join(diff)} differ from {target}'s; only shortcut_strength may"]
    if (entry.get("frozen_stages") or {}) != (twin.get("frozen_stages") or {}):
        return [f"{key}: frozen_stages must equal {target}'s (the same regime)"]
    return []


def for_cell(config: dict, dataset: str | None, backbone: str) -> dict:
    """The config one (dataset, backbone) cell reads: `for_backbone`, and the dataset's trunk depth
    (`datasets.<dataset>.frozen_stages[backbone]`, chosen per dataset by the regime protocol of
    docs/experiment.md) in place of the backbone's own `frozen_stages`."""
    config = for_backbone(config, backbone)
    depth = ((config["datasets"].get(dataset) or {}).get("frozen_stages") or {}).get(backbone)
    if depth is None or backbone not in config["backbones"]:
        return config
    backbones = {**config["backbones"], backbone: {**config["backbones"][backbone], "frozen_stages": int(depth)}}
    return {**config, "backbones": backbones}


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> dict:
    """Read a YAML config, apply dotted-key overrides (`{"train.epochs": 1}`), validate it."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise MEGLError(f"{path}: cannot read config: {exc}") from exc
    if not isinstance(config, dict):
        raise MEGLError(f"{path}: config must be a mapping at the top level")
    for dotted, value in (overrides or {}).items():
        set_dotted(config, dotted, value)
    return validate_config(config, str(path))


def for_backbone(config: dict, backbone: str) -> dict:
    """The config a run on `backbone` reads: `train.by_backbone[backbone]` (lr, epochs)
    replaces the shared `train` values, and `by_backbone` itself is dropped, so the run records and
    uses exactly the settings it trained with (docs/experiment.md: the regime is chosen per backbone)."""
    return {**config, "train": section_for_backbone(config["train"], backbone)}


def section_for_backbone(section: dict, backbone: str) -> dict:
    """`section` (train: or pretrain:) with its `by_backbone[backbone]` values in place of the shared
    ones and `by_backbone` dropped."""
    section = dict(section)
    overrides = (section.pop("by_backbone", None) or {}).get(backbone, {})
    return {**section, **overrides}


def image_size_for(config: dict, backbone_cfg: dict | None) -> int:
    if backbone_cfg is not None:
        return int(backbone_cfg["image_size"])
    return max(int(b["image_size"]) for b in config["backbones"].values())


def set_dotted(config: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = config
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


# ---------------------------------------------------------------- the resolved config of a workflow run
RESOLVED_NAME = "config.resolved.yaml"
RESOLVED_HEADER = (
    "# The resolved config of the last Snakemake run in this results_dir: the config file(s), the\n"
    "# --config overrides and the schema defaults, validated. Every megl command of the workflow reads\n"
    "# this file (docs/workflow.md). Written by the Snakefile; do not edit (edit the config file).\n"
)


def coerce_overrides(value: Any) -> Any:
    """Snakemake's `--config key=VALUE` reads a mapping or list VALUE with YAML's BaseLoader, which keeps
    every scalar a string (`train={epochs: 1}` gives `{"epochs": "1"}`). Read each string again as YAML
    (`"1"` -> 1, `"1e-3"` -> 0.001, `"null"` -> None, `"true"` -> True), as in a config file."""
    if isinstance(value, dict):
        return {key: coerce_overrides(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [coerce_overrides(v) for v in value]
    if isinstance(value, str):
        for parse in (int, float):  # Snakemake's own order for a top-level value; float reads `1e-3` too
            try:
                return parse(value)
            except ValueError:
                pass
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


def apply_overrides(config: dict, overrides: dict) -> dict:
    """Merge `overrides` (Snakemake's parsed `--config`, coerced) into `config` in place, mappings key by
    key as Snakemake merges them, any other value (lists too) replacing the file's."""
    for key, value in coerce_overrides(overrides).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            apply_overrides(config[key], value)
        else:
            config[key] = value
    return config


def resolve_config(config: dict, source: str = "<config>") -> dict:
    """A validated deep copy of `config` with every schema default filled in, as plain YAML data."""
    return validate_config(json.loads(json.dumps(config)), source)


def resolved_config_path(config: dict) -> Path:
    return Path(config.get("results_dir", "results")) / RESOLVED_NAME


def dump_resolved(config: dict) -> str:
    return RESOLVED_HEADER + yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=110)
