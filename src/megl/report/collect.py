"""Read every run's metrics.json into one frame; enumerate the runs the matrix expects."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from megl import metric_registry
from megl.errors import MEGLError
from megl.matrix import enumerate_runs
from megl.methods import METHODS, MLLM_BACKBONE
from megl.metric_registry import keys

RUN_KEYS: tuple[str, ...] = ("dataset", "backbone", "method", "seed")


# The metric keys are the registry's as it is when a file is read (megl.metric_registry.METRICS): a metric
# added there is read here with nothing else edited.
def classification_keys() -> tuple[str, ...]:
    return keys(group="classification")


def text_keys() -> tuple[str, ...]:
    return keys(group="text")


def required_keys() -> tuple[str, ...]:
    """Keys every metrics.json must carry (the value may be null except for the classification keys)."""
    return keys(required=True)


def optional_keys() -> tuple[str, ...]:
    """Keys a metrics.json may lack (read as null): a metric added later is declared one, so that the
    metrics.json files scored before it still read."""
    return keys(required=False)


def metric_keys() -> tuple[str, ...]:
    """Every metric column of the collected frame, in order: the required keys, then the optional ones."""
    return required_keys() + optional_keys()


def nested_keys() -> dict[str, tuple[str, str]]:
    """Optional keys that sit in a block of metrics.json (MLLM runs): column -> (block, key)."""
    return {m.key: m.nested for m in metric_registry.METRICS if m.nested}


def mllm_absent_ok() -> tuple[str, ...]:
    """MLLM runs have no saliency: these required keys may be absent from their metrics.json."""
    return tuple(m.key for m in metric_registry.METRICS if m.required and m.reported_by == "classifier runs")


_SEED_DIR = re.compile(r"^seed(\d+)$")


def _fail(path: Path, what: str) -> MEGLError:
    return MEGLError(f"{path}: {what}")


def _number_or_none(path: Path, key: str, value: Any, nullable: bool) -> float | None:
    if value is None:
        if nullable:
            return None
        raise _fail(path, f"field '{key}' is null; a number is required")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, f"field '{key}' is {value!r}; a number is required")
    return float(value)


def _optional_value(record: Mapping[str, Any], key: str, nested: Mapping[str, tuple[str, str]]) -> Any:
    if key in nested:
        block, sub = nested[key]
        value = record.get(block)
        return value.get(sub) if isinstance(value, dict) else None
    return record.get(key)


def _check_path_matches(path: Path, run: Mapping[str, Any]) -> None:
    """When the file sits in {dataset}/{backbone}/{method}/seed{n}/, the folders must agree with `run`."""
    parts = path.parent.parts
    if len(parts) < 4 or not _SEED_DIR.match(parts[-1]):
        return
    folder = dict(zip(("dataset", "backbone", "method"), parts[-4:-1]))
    folder["seed"] = int(_SEED_DIR.match(parts[-1]).group(1))
    for key, value in folder.items():
        if run[key] != value:
            raise _fail(path, f"field 'run.{key}' is {run[key]!r} but the folder says {value!r}")


def read_metrics(path: str | Path) -> dict[str, Any]:
    """One validated row: the run keys, every metric key (None where null) and `notes` as JSON text."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise _fail(path, "file not found") from exc
    except json.JSONDecodeError as exc:
        raise _fail(path, f"not valid JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise _fail(path, "top level is not an object")
    run = record.get("run")
    if not isinstance(run, dict):
        raise _fail(path, "missing key 'run' (an object with dataset, backbone, method, seed)")
    for key in RUN_KEYS:
        if key not in run:
            raise _fail(path, f"missing key 'run.{key}'")
    if isinstance(run["seed"], bool) or not isinstance(run["seed"], int):
        raise _fail(path, f"field 'run.seed' is {run['seed']!r}; an integer is required")
    for key in ("dataset", "backbone", "method"):
        if not isinstance(run[key], str) or not run[key]:
            raise _fail(path, f"field 'run.{key}' is {run[key]!r}; a non-empty string is required")
    _check_path_matches(path, run)

    row: dict[str, Any] = {key: run[key] for key in RUN_KEYS}
    is_mllm = (run["method"] in METHODS and METHODS[run["method"]].is_mllm) or run["backbone"] == MLLM_BACKBONE
    absent_ok, not_null, nested = mllm_absent_ok(), classification_keys(), nested_keys()
    for key in required_keys():
        if key not in record:
            if is_mllm and key in absent_ok:
                row[key] = None
                continue
            raise _fail(path, f"missing key '{key}'")
        row[key] = _number_or_none(path, key, record[key], nullable=key not in not_null)
    for key in optional_keys():  # absent (a metrics.json scored before the metric existed): null
        row[key] = _number_or_none(path, key, _optional_value(record, key, nested), nullable=True)
    notes = record.get("notes")
    row["notes"] = None if notes in (None, "", {}) else json.dumps(notes, sort_keys=True)
    row["path"] = str(path)
    return row


def collect_runs(metrics_paths: Iterable[str | Path]) -> pd.DataFrame:
    """One row per run: run keys, metric keys (NaN where null), `notes` and the source `path`.

    Raises MEGLError naming the file and the key when a file is malformed or a run appears twice.
    """
    rows = [read_metrics(p) for p in metrics_paths]
    metrics = metric_keys()
    columns = list(RUN_KEYS) + list(metrics) + ["notes", "path"]
    df = pd.DataFrame(rows, columns=columns)
    if df.empty:
        return df.astype({"seed": "int64"})
    dup = df.duplicated(list(RUN_KEYS), keep=False)
    if dup.any():
        first = df[dup].iloc[0]
        others = df[dup & (df[list(RUN_KEYS)] == first[list(RUN_KEYS)]).all(axis=1)]["path"].tolist()
        raise MEGLError(f"run {dict(first[list(RUN_KEYS)])} appears in more than one file: {others}")
    for key in metrics:
        df[key] = pd.to_numeric(df[key], errors="raise").astype("float64")
    df["seed"] = df["seed"].astype("int64")
    return df.sort_values(list(RUN_KEYS), kind="stable").reset_index(drop=True)


def expected_runs(matrix: Mapping[str, Any]) -> pd.DataFrame:
    """Every run the matrix asks for, exactly as megl.matrix.enumerate_runs lists them (classifier
    methods on every backbone; `mllm_methods` once per dataset and seed under backbone 'mllm'):
    columns dataset, backbone, method, seed, in matrix order."""
    required = ("seeds", "blocks") if "blocks" in matrix else ("datasets", "backbones", "methods", "seeds")
    for key in required:
        if key not in matrix:
            raise MEGLError(f"config matrix: missing key '{key}'")
    rows = [(r.dataset, r.backbone, r.method, int(r.seed)) for r in enumerate_runs({"matrix": dict(matrix)})]
    df = pd.DataFrame(rows, columns=list(RUN_KEYS)).drop_duplicates()
    df["seed"] = df["seed"].astype("int64")
    return df.reset_index(drop=True)


def read_csv(path: str | Path, columns: Iterable[str], what: str) -> pd.DataFrame:
    """A CSV file that must have `columns`; a MEGLError names the file, `what` it should be and the
    first missing column."""
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise MEGLError(f"{path}: cannot read {what} ({exc})") from exc
    for col in columns:
        if col not in df.columns:
            raise MEGLError(f"{path}: missing column '{col}'")
    return df


def read_train_log(path: str | Path) -> pd.DataFrame:
    """A run's train_log.csv; it must have the `step` and `loss` columns."""
    return read_csv(path, ("step", "loss"), "training log")
