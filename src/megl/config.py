"""Load and validate the workflow config (config/*.yaml) against its JSON schema.

The schema file is the same one Snakemake's `validate()` uses, so both read one definition.
"""
from __future__ import annotations

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


def validate_config(config: dict, source: str = "<config>") -> dict:
    """Validate `config` in place (filling schema defaults); raise MEGLError naming each bad key."""
    validator_cls = _import_jsonschema().Draft202012Validator
    errors = sorted(validator_cls(load_schema()).iter_errors(config), key=lambda e: list(e.path))
    if errors:
        lines = [f"{source}: key {'.'.join(map(str, e.path)) or '(top level)'}: {e.message}" for e in errors]
        raise MEGLError("invalid config:\n" + "\n".join(lines))
    _check_matrix_names(config, source)
    return config


def _check_matrix_names(config: dict, source: str) -> None:
    """Every dataset and backbone of the matrix must be defined; every method must be registered."""
    from megl.methods import METHODS  # late import: methods imports nothing heavy, but keep config light

    matrix = config["matrix"]
    problems = []
    for name in matrix["datasets"]:
        if name not in config["datasets"]:
            problems.append(f"{source}: key matrix.datasets: dataset {name!r} has no entry under datasets")
    for name in config["train"].get("by_backbone") or {}:
        if name not in config["backbones"]:
            problems.append(f"{source}: key train.by_backbone: backbone {name!r} has no entry under backbones")
    for name in matrix["backbones"]:
        if name not in config["backbones"]:
            problems.append(f"{source}: key matrix.backbones: backbone {name!r} has no entry under backbones")
    for name in [*matrix["methods"], *matrix.get("mllm_methods", [])]:
        if name not in METHODS:
            problems.append(
                f"{source}: key matrix.methods: unknown method {name!r}; known: {', '.join(METHODS)}"
            )
    if problems:
        raise MEGLError("invalid config:\n" + "\n".join(problems))
    from megl.matrix import check_method_kinds

    try:
        check_method_kinds(matrix)
    except MEGLError as exc:
        raise MEGLError(f"invalid config:\n{source}: {exc}") from None


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
    train = dict(config["train"])
    overrides = (train.pop("by_backbone", None) or {}).get(backbone, {})
    return {**config, "train": {**train, **overrides}}


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
