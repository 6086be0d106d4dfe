"""One workflow job per (dataset, backbone, method): choose the guidance weight on the validation
split, then train every seed and predict with it on the test split, in one process. Scoring (metrics.json)
is the next job, `megl score` (megl.score): editing a metric re-runs no training.

Why one process per method cell (docs/workflow.md): an interpreter with torch, transformers and
the scorers costs seconds to start, more than a small run trains; the decoded data and the frozen
trunk's features come from one cache file. Each seed still gets its own run folder (model, log,
predictions, score inputs), written atomically, by the same functions `megl train` + `megl evaluate`
run (train.write_run_record, fit, finish_run; predict.predict_into), so the numbers equal theirs
(tests/test_cell.py).

Selection protocol (docs/experiment.md §2), the same for every method: the method's guidance weights
take each point of `selection.grid` in turn (the lists are zipped, so every guided method trains
the same number of candidates); each candidate trains with `selection.seed`, a seed that is never a
reported seed, on the training split and is scored by `selection.metric` on the validation split.
`selection.rule: one_se` (the default) takes the WEAKEST candidate whose score is within one binomial
standard error of the best score (the grids are ordered from weak to strong): a stronger guidance
must win by more than the validation score's own noise. The test split is loaded only after the
choice is written; every reported seed is trained afresh at the chosen weights.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path

import torch

from megl.config import for_cell
from megl.data.annotations import read_dataset
from megl.data.split import read_split
from megl.data.tensors import SplitTensors, decode_split, load_cache, mean_map_of
from megl.errors import MEGLError
from megl.io import write_json
from megl.methods import Method
from megl.mllm_protocol import class_names_of
from megl.models.build import new_run_model
from megl.predict import predict_into, split_accuracy
from megl.run_spec import RunSpec, resolve_run_spec
from megl.rundir import finish_run, write_run_record
from megl.runtime import resolve_device, set_determinism
from megl.train import fit

log = logging.getLogger(__name__)


def guidance_grid(config: dict, method: Method) -> list[dict[str, float]]:
    """The candidate settings of the method's guidance weights (empty when it has none)."""
    return method.guidance_points(config["selection"]["grid"])


def with_overrides(config: dict, overrides: dict[str, float]) -> dict:
    """A copy of the whole config with dotted keys set: a run folder's config.yaml (a run: RunSpec.with_guidance)."""
    out = copy.deepcopy(config)
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise MEGLError(f"selection: config has no key {dotted!r}")
        node[leaf] = value
    return out


def validation_score(model, val: SplitTensors, metric: str, device: torch.device) -> float:
    """Accuracy (the only selection metric so far) of the classifier on the validation split."""
    if metric != "accuracy":
        raise MEGLError(f"selection.metric: {metric!r} is not supported (accuracy)")
    return split_accuracy(model, val, device)


def binomial_se(score: float, n: int) -> float:
    """Standard error of an accuracy `score` measured on `n` images: sqrt(p (1 - p) / n)."""
    return math.sqrt(max(score * (1 - score), 0.0) / n) if n else float("nan")


def choose(scores: list[float], n_val: int, rule: str) -> int:
    """Index of the chosen candidate (candidates ordered weak to strong). `best`: the first highest
    score. `one_se`: the first candidate scoring at least best - SE(best), SE binomial on n_val images."""
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    if rule == "best":
        return best
    if rule != "one_se":
        raise MEGLError(f"selection.rule: {rule!r} is not supported (one_se, best)")
    floor = scores[best] - binomial_se(scores[best], n_val)
    return next(i for i, s in enumerate(scores) if s >= floor - 1e-12)


class Cell:
    """The shared state of one (dataset, backbone, method) job; everything it reads of the config is its spec."""

    def __init__(self, spec: RunSpec, data_root: Path, split_path: Path, cache_path: Path | None,
                 pretrained_dir: Path | None, backbone_weights: Path | None):
        self.spec, self.dataset, self.backbone = spec, spec.dataset, spec.backbone
        self.method = spec.method_def
        self.data_root, self.split_path, self.cache_path = Path(data_root), Path(split_path), cache_path
        self.pretrained_dir, self.backbone_weights = pretrained_dir, backbone_weights
        self.device = resolve_device(spec.device)
        self.data = read_dataset(self.data_root)
        self.class_names = class_names_of(self.data)

    def splits(self, names: tuple[str, ...]) -> dict[str, SplitTensors]:
        """Decoded splits (with the trunk's cached features when a cache is given)."""
        if self.cache_path is not None:
            return load_cache(self.cache_path, names)[0]
        split = read_split(self.split_path, self.data)
        return {n: decode_split(self.data, split[n], self.spec.image_size, with_full_maps=(n == "test"))
                for n in names}

    def train(self, spec: RunSpec, seed: int, train: SplitTensors, mean_map, label: str):
        set_determinism(seed, spec.train["num_threads"])
        model = new_run_model(spec, self.data.num_classes, seed, self.pretrained_dir, self.backbone_weights,
                              self.device)
        names = self.class_names if self.method.is_mllm else None
        started = time.time()
        rows = fit(model, train, spec, seed, self.device, mean_map, names, label=label)
        return model, rows, time.time() - started

    def select(self, train: SplitTensors, val: SplitTensors, mean_map) -> dict:
        sel = self.spec.selection
        grid = self.method.guidance_points(sel["grid"]) if self.method.guidance else []
        rule = sel.get("rule", "one_se")
        record = {"method": self.method.name, "dataset": self.dataset, "backbone": self.backbone,
                  "metric": sel["metric"], "split": "val", "n_val": len(val), "seed": int(sel["seed"]),
                  "rule": rule, "candidates": [], "chosen": {}}
        if not grid:
            record["note"] = "no guidance weight to choose"
            return record
        scores = []
        for overrides in grid:
            model, _, _ = self.train(self.spec.with_guidance(overrides), int(sel["seed"]), train, mean_map,
                                     f"select {overrides} ")
            score = validation_score(model, val, sel["metric"], self.device)
            scores.append(score)
            record["candidates"].append({"overrides": overrides, f"val_{sel['metric']}": round(score, 6),
                                         "se": round(binomial_se(score, len(val)), 6)})
            log.info("selection %s: %s -> val %s %.4f", self.method.name, overrides, sel["metric"], score)
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        chosen = choose(scores, len(val), rule)
        record["best"] = grid[best]
        record["chosen"] = grid[chosen]
        others = [x for i, x in enumerate(scores) if i != best]
        record["margin_to_runner_up"] = round(scores[best] - max(others), 6) if others else None
        return record


def run_cell(config: dict, *, dataset: str, backbone: str, method: str, seeds: list[int], runs_root: Path,
             selection_out: Path, data_root: Path, split_path: Path, cache_path: Path | None = None,
             pretrained_dir: Path | None = None, backbone_weights: Path | None = None) -> dict:
    """Select on validation, then train + predict each seed into runs_root/seed{N}/ (scoring: megl.score).
    Returns the selection. The config is read once, here: the run spec (megl.run_spec) drives the rest;
    the whole config, resolved for the cell, is only written into each run folder (config.yaml)."""
    spec = resolve_run_spec(config, dataset, backbone, method)
    snapshot = for_cell(config, dataset, backbone)
    if int(spec.selection["seed"]) in {int(s) for s in seeds}:
        raise MEGLError(f"selection.seed {spec.selection['seed']} is one of the reported seeds {list(seeds)}: "
                        "the selection seed must never be a reported seed")
    cell = Cell(spec, data_root, split_path, cache_path, pretrained_dir, backbone_weights)
    m = cell.method
    splits = cell.splits(("train", "val"))
    train, val = splits["train"], splits["val"]
    mean_map = mean_map_of(train).to(cell.device) if m.consistency else None
    selection = cell.select(train, val, mean_map)
    write_json(selection_out, selection)
    run_spec = spec.with_guidance(selection["chosen"])
    snapshot = with_overrides(snapshot, selection["chosen"])

    trained: dict[int, tuple] = {}
    for seed in seeds:
        run_dir = Path(runs_root) / f"seed{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.json").unlink(missing_ok=True)  # scores an older model: megl score writes it anew
        identity = {"dataset": dataset, "backbone": backbone, "method": method, "seed": int(seed)}
        write_run_record(run_dir, snapshot, identity, m, data_root, split_path, pretrained_dir,
                         backbone_weights, cell.device)
        model, rows, seconds = cell.train(run_spec, int(seed), train, mean_map, f"{method} seed{seed} ")
        finish_run(run_dir, model, identity, run_spec.train, rows, seconds)
        set_determinism(int(seed), run_spec.train["num_threads"])
        model.train(False)
        val_acc = split_accuracy(model, val, cell.device) if model.classifier is not None else None
        trained[seed] = (run_dir, identity, model, val_acc)
    del val
    test = cell.splits(("test",))["test"]  # read only now: the choice above never saw it
    for run_dir, identity, model, val_acc in trained.values():
        predict_into(run_dir, identity, str(split_path), model, test, run_spec, cell.device, cell.class_names,
                     cell.data.num_classes, val_acc)
    return selection
