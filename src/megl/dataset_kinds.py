"""The kinds of dataset the code can make or fetch, named once: the stand-in generators
(megl.data.standin.KINDS), the official zips (megl.data.fetch), the command line's choices (megl.cli)
and the stand-in benchmark (megl.bench.empty_targets). The config schema (config.schema.yaml) spells
the stand-in kinds out for its readers; tests/test_dataset_kinds.py keeps every list equal to these."""
from __future__ import annotations

STANDIN_KINDS: tuple[str, ...] = ("objects", "actions", "digits")
OFFICIAL_ZIPS: dict[str, str] = {"objects": "Object_Classification.zip", "actions": "Action_Classification.zip"}
