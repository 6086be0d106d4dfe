"""The dataset kinds are named once (megl.dataset_kinds); the command line, the config schema, the
stand-in generators, the fetcher and the stand-in benchmark all offer exactly those."""
from __future__ import annotations

import argparse

from megl.bench.empty_targets import DEFAULT_KNOBS
from megl.cli import build_parser
from megl.config import load_schema
from megl.data import fetch, standin
from megl.dataset_kinds import OFFICIAL_ZIPS, STANDIN_KINDS


def _choices(command: str, dest: str) -> list[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return next(a for a in sub.choices[command]._actions if a.dest == dest).choices


def test_the_command_line_offers_the_registered_kinds():
    assert _choices("make-standin", "kind") == list(STANDIN_KINDS)
    assert _choices("fetch-data", "dataset") == list(OFFICIAL_ZIPS)


def test_the_schema_enum_is_the_registered_stand_in_kinds():
    datasets = load_schema()["properties"]["datasets"]["additionalProperties"]["properties"]
    assert datasets["standin"]["properties"]["kind"]["enum"] == list(STANDIN_KINDS)


def test_generators_fetcher_and_benchmark_cover_exactly_the_kinds():
    assert tuple(standin.KINDS) == STANDIN_KINDS
    assert fetch.ZIP_NAMES == OFFICIAL_ZIPS and set(OFFICIAL_ZIPS) <= set(STANDIN_KINDS)
    assert tuple(DEFAULT_KNOBS) == STANDIN_KINDS
