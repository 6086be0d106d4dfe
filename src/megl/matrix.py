"""The run matrix, read from the config: the one enumeration Snakemake and DVC both follow.

The matrix is a union of BLOCKS, each a cross product datasets × backbones × methods (and MLLM
methods, which have no classifier backbone and run once per dataset under the backbone folder
`mllm`), all over the shared `matrix.seeds`. The paper's shape is three blocks: its Table 2/3/5
methods on every dataset, its Table 4 ablations on Object-ME only, and (ours) the positive control.
A flat matrix (`datasets`, `backbones`, `methods`, `mllm_methods` directly under `matrix`) is one
block. A cell named by two blocks is one cell: it runs once.
"""
from __future__ import annotations

from dataclasses import dataclass

from megl.matrix_blocks import blocks, check_method_kinds
from megl.methods import MLLM_BACKBONE
from megl.run_spec import resolve_run_spec


@dataclass(frozen=True, order=True)
class Run:
    dataset: str
    backbone: str
    method: str
    seed: int

    @property
    def path(self) -> str:
        """Folder of the run below the results root: runs/{dataset}/{backbone}/{method}/seed{seed}."""
        return f"runs/{self.dataset}/{self.backbone}/{self.method}/seed{self.seed}"

    @property
    def cell(self) -> str:
        """The cell's key: `{dataset}-{backbone}-{method}` (`{dataset}-{method}` for an MLLM run)."""
        if self.backbone == MLLM_BACKBONE:
            return f"{self.dataset}-{self.method}"
        return f"{self.dataset}-{self.backbone}-{self.method}"

    @property
    def dvc_stage(self) -> str:
        """DVC's name of the stage that trains and evaluates the run's cell (`dvc repro <name>`)."""
        return f"{'cell_mllm' if self.backbone == MLLM_BACKBONE else 'cell'}@{self.cell}"


def _union(matrix: dict, key: str) -> list[str]:
    return list(dict.fromkeys(x for block in blocks(matrix).values() for x in block[key]))


def matrix_datasets(matrix: dict) -> list[str]:
    """Every dataset some block names, in order of first appearance."""
    return _union(matrix, "datasets")


def matrix_backbones(matrix: dict) -> list[str]:
    """Every classifier backbone some block crosses with at least one classifier method."""
    return list(dict.fromkeys(b for block in blocks(matrix).values() if block["methods"] for b in block["backbones"]))


def matrix_methods(matrix: dict) -> list[str]:
    return _union(matrix, "methods")


def matrix_mllm_methods(matrix: dict) -> list[str]:
    return _union(matrix, "mllm_methods")


def enumerate_runs(config: dict) -> list[Run]:
    """Every run of the matrix, each once, block by block in the config's order."""
    matrix = config["matrix"]
    check_method_kinds(matrix)
    seeds = matrix["seeds"]
    runs: dict[Run, None] = {}
    for block in blocks(matrix).values():
        for run in [Run(d, b, m, s) for d in block["datasets"] for b in block["backbones"]
                    for m in block["methods"] for s in seeds]:
            runs[run] = None
        for run in [Run(d, MLLM_BACKBONE, m, s) for d in block["datasets"]
                    for m in block["mllm_methods"] for s in seeds]:
            runs[run] = None
    return list(runs)


def cells(config: dict) -> list[Run]:
    """One seed-less entry (seed -1) per (dataset, backbone, method) cell, in enumeration order."""
    return list(dict.fromkeys(Run(r.dataset, r.backbone, r.method, -1) for r in enumerate_runs(config)))


def cell_methods(config: dict, dataset: str, backbone: str) -> list[str]:
    """The methods the matrix runs on one (dataset, backbone) cell, in matrix order (`mllm`: the
    MLLM methods of the dataset)."""
    return list(dict.fromkeys(c.method for c in cells(config) if (c.dataset, c.backbone) == (dataset, backbone)))


def dvc_matrix(config: dict) -> dict:
    """The lists and mappings DVC's `foreach` stages iterate over (dvc.yaml): DVC cannot compute a
    union of blocks itself, so `megl dvc-matrix` writes these into a vars file beside the config."""
    all_cells = cells(config)
    classifier = [c for c in all_cells if c.backbone != MLLM_BACKBONE]
    caches = dict.fromkeys((c.dataset, c.backbone) for c in classifier)
    return {
        "datasets": matrix_datasets(config["matrix"]),
        "backbones": matrix_backbones(config["matrix"]),
        "methods": matrix_methods(config["matrix"]),
        "caches": {f"{d}-{b}": {"dataset": d, "backbone": b} for d, b in caches},
        "cells": {c.cell: {"dataset": c.dataset, "backbone": c.backbone, "method": c.method} for c in classifier},
        "mllm_cells": {c.cell: {"dataset": c.dataset, "method": c.method}
                       for c in all_cells if c.backbone == MLLM_BACKBONE},
    }


def training_config(config: dict, method: str, backbone: str, dataset: str | None = None) -> dict:
    """The rule params of a cell: what its runs read (megl.run_spec.RunSpec.params), so a change to another
    method's hyperparameter (e.g. train.lambda_t, baselines.haics) leaves this cell alone."""
    return resolve_run_spec(config, dataset, backbone, method).params()
