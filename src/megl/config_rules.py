"""Cross-field rules of the config: what the JSON schema cannot say (a sum, a key that another key's
value requires). megl.config.validate_config calls `check` after the schema, so the megl CLI, the
Snakefile and the DVC pipeline (which runs the CLI) refuse the same files with the same lines.
Hand-written: JSON Schema has no arithmetic, and if/then for every dataset entry would word its
errors less plainly than one line per rule.
"""
from __future__ import annotations

import math

from megl.errors import MEGLError

SPLIT_SUM_TOLERANCE = 1e-9


def problems(config: dict, source: str) -> list[str]:
    """One `SOURCE: key K: what` line per broken rule (empty when none)."""
    out = []
    split = config.get("split") or {}
    parts = [split.get(k) for k in ("train", "val", "test")]
    if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in parts):
        total = math.fsum(parts)
        if abs(total - 1.0) > SPLIT_SUM_TOLERANCE:
            out.append(f"{source}: key split: train + val + test is {total:g}; the fractions must sum to 1")
        if parts[0] <= 0:
            out.append(f"{source}: key split.train: is {parts[0]:g}; training needs a fraction > 0")
    for name, entry in (config.get("datasets") or {}).items():
        if isinstance(entry, dict) and entry.get("source") == "official":
            zip_path = entry.get("zip")
            if not isinstance(zip_path, str) or not zip_path.strip():
                out.append(f"{source}: key datasets.{name}.zip: missing; source: official needs the path of "
                           f"the authors' zip (e.g. data/raw/Object_Classification.zip)")
    seeds = (config.get("matrix") or {}).get("seeds")
    if isinstance(seeds, list):
        bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
        if bad:
            out.append(f"{source}: key matrix.seeds: {bad!r} not non-negative integers")
        elif len(set(seeds)) != len(seeds):
            out.append(f"{source}: key matrix.seeds: {seeds!r} lists a seed twice")
    return out


def check(config: dict, source: str) -> None:
    found = problems(config, source)
    if found:
        raise MEGLError("invalid config:\n" + "\n".join(found))
