"""One workflow job per (dataset, backbone, method): choose the guidance weight on the validation
split, then train and evaluate every seed, in one process.

Why one process per method cell (docs/workflow.md): an interpreter with torch, transformers and
the scorers costs seconds to start, more than a small run trains; the decoded data and the frozen
trunk's features come from one cache file; the text scorers' JVMs start once for all seeds. Each
seed still gets its own run folder (model, log, metrics, predictions), written atomically, and the
numbers equal what `megl train` + `megl evaluate` give for that run (tests/test_cell.py).

Selection protocol (docs/experiment.md), the same for every method: the method's guidance weights
take each point of `selection.grid` in turn (the lists are zipped, so every guided method trains
the same number of candidates); each candidate trains with `selection.seed` on the training split
and is scored by `selection.metric` on the validation split; the first best wins (the grids are
ordered from weak to strong). The test split is loaded only after the choice is written.
"""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import torch

from megl.config import for_backbone, image_size_for
from megl.data.annotations import read_dataset
from megl.data.split import read_split
from megl.data.tensors import SplitTensors, decode_split, load_cache, mean_map_of
from megl.errors import MEGLError
from megl.evaluate import Prediction, predict, write_evaluation
from megl.io import write_json
from megl.methods import Method, get_method
from megl.metrics import text as text_metrics
from megl.runtime import resolve_device, set_determinism
from megl.train import backbone_entry, class_names_of, finish_run, fit, new_run_model, write_run_record

log = logging.getLogger(__name__)


def guidance_grid(config: dict, method: Method) -> list[dict[str, float]]:
    """The candidate settings of the method's guidance weights (empty when it has none)."""
    grid = config["selection"]["grid"]
    keys = method.guidance_keys
    values = {k: grid["lambda_v"] if k == "train.lambda_v" else grid["lambda_t"] if k == "train.lambda_t"
              else grid["weight"] for k in keys}
    n = {len(v) for v in values.values()}
    if len(n) > 1:
        raise MEGLError(f"selection.grid: lists for {keys} differ in length; they are zipped, so give equal lengths")
    return [{k: float(values[k][i]) for k in keys} for i in range(n.pop())] if keys else []


def with_overrides(config: dict, overrides: dict[str, float]) -> dict:
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
    model.train(False)
    correct = 0
    with torch.no_grad():
        for start in range(0, len(val), 256):
            batch = val.batch(torch.arange(start, min(start + 256, len(val))), device)
            out = (model.classifier.head_forward(batch["features"]) if "features" in batch
                   else model.classifier.forward_with_features(batch["image"]))
            correct += int((out.logits.argmax(1) == batch["label"]).sum())
    return correct / len(val)


class Cell:
    """The shared state of one (dataset, backbone, method) job."""

    def __init__(self, config: dict, dataset: str, backbone: str, method: str, data_root: Path,
                 split_path: Path, cache_path: Path | None, pretrained_dir: Path | None,
                 backbone_weights: Path | None):
        self.config, self.dataset, self.backbone = config, dataset, backbone
        self.method = get_method(method)
        self.bb_cfg = backbone_entry(config, backbone, self.method)
        self.data_root, self.split_path, self.cache_path = Path(data_root), Path(split_path), cache_path
        self.pretrained_dir, self.backbone_weights = pretrained_dir, backbone_weights
        self.device = resolve_device(config["device"])
        self.data = read_dataset(self.data_root)
        self.class_names = class_names_of(self.data)
        self.trained: dict[tuple[str, int], tuple] = {}  # (overrides, seed) -> (model, log rows, seconds) of a selection candidate

    def splits(self, names: tuple[str, ...]) -> dict[str, SplitTensors]:
        """Decoded splits (with the trunk's cached features when a cache is given)."""
        if self.cache_path is not None:
            return load_cache(self.cache_path, names)[0]
        split = read_split(self.split_path, self.data)
        size = image_size_for(self.config, self.bb_cfg)
        return {n: decode_split(self.data, split[n], size, with_full_maps=(n == "test")) for n in names}

    def train(self, config: dict, seed: int, train: SplitTensors, mean_map, label: str):
        set_determinism(seed, config["train"]["num_threads"])
        model = new_run_model(config, self.method, self.bb_cfg, self.data.num_classes, seed, self.pretrained_dir,
                              self.backbone_weights, self.device)
        names = self.class_names if self.method.kind == "mllm" else None
        started = time.time()
        rows = fit(model, train, config, seed, self.device, mean_map, names, label=label)
        return model, rows, time.time() - started

    def select(self, train: SplitTensors, val: SplitTensors, mean_map) -> dict:
        sel = self.config["selection"]
        grid = guidance_grid(self.config, self.method)
        record = {"method": self.method.name, "dataset": self.dataset, "backbone": self.backbone,
                  "metric": sel["metric"], "split": "val", "seed": int(sel["seed"]), "candidates": [],
                  "chosen": {}}
        if not grid:
            record["note"] = "no guidance weight to choose"
            return record
        best = None
        for overrides in grid:
            model, rows, seconds = self.train(with_overrides(self.config, overrides), int(sel["seed"]), train,
                                              mean_map, f"select {overrides} ")
            score = validation_score(model, val, sel["metric"], self.device)
            record["candidates"].append({"overrides": overrides, f"val_{sel['metric']}": round(score, 6)})
            log.info("selection %s: %s -> val %s %.4f", self.method.name, overrides, sel["metric"], score)
            self.trained[(repr(overrides), int(sel["seed"]))] = (model, rows, seconds)
            if best is None or score > best[0]:
                best = (score, overrides)
        record["chosen"] = best[1]
        return record


def run_cell(config: dict, *, dataset: str, backbone: str, method: str, seeds: list[int], runs_root: Path,
             selection_out: Path, data_root: Path, split_path: Path, cache_path: Path | None = None,
             pretrained_dir: Path | None = None, backbone_weights: Path | None = None) -> dict:
    """Select on validation, then train + evaluate each seed into runs_root/seed{N}/. Returns the selection."""
    config = for_backbone(config, backbone)
    cell = Cell(config, dataset, backbone, method, data_root, split_path, cache_path, pretrained_dir,
                backbone_weights)
    m = cell.method
    splits = cell.splits(("train", "val"))
    train, val = splits["train"], splits["val"]
    mean_map = mean_map_of(train).to(cell.device) if m.consistency else None
    selection = cell.select(train, val, mean_map)
    write_json(selection_out, selection)
    del val
    run_config = with_overrides(config, selection["chosen"])
    test = cell.splits(("test",))["test"]  # read only now: the choice above never saw it

    predictions: dict[int, tuple] = {}
    for seed in seeds:
        run_dir = Path(runs_root) / f"seed{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        identity = {"dataset": dataset, "backbone": backbone, "method": method, "seed": int(seed)}
        write_run_record(run_dir, run_config, identity, m, data_root, split_path, pretrained_dir,
                         backbone_weights, cell.device)
        reuse = cell.trained.get((repr(selection["chosen"]), int(seed)))
        model, rows, seconds = reuse if reuse else cell.train(run_config, int(seed), train, mean_map,
                                                              f"{method} seed{seed} ")
        finish_run(run_dir, model, identity, run_config["train"], rows, seconds)
        set_determinism(int(seed), run_config["train"]["num_threads"])
        model.train(False)
        predictions[seed] = (run_dir, identity, model, predict(model, test, run_config, cell.device, cell.class_names))
    text = score_text_many(m, {s: p[3] for s, p in predictions.items()}, config["evaluate"])
    for seed, (run_dir, identity, model, prediction) in predictions.items():
        write_evaluation(run_dir, identity, str(split_path), model, m, prediction, text.get(seed), run_config,
                         cell.device, cell.data.num_classes)
    return selection


def score_text_many(method: Method, predictions: dict[int, Prediction], ev: dict) -> dict:
    """Text scores of every seed's rationales, with one tokenizer and METEOR process for all."""
    if not method.writes_text:
        return {}
    hyps = {s: {r["id"]: r["rationale"] for r in p.records} for s, p in predictions.items()
            if p.records and p.records[0]["rationale"] is not None}
    if not hyps:
        return {}
    first = next(iter(predictions.values())).records
    refs = {r["id"]: r["reference"] for r in first}
    return text_metrics.text_metrics_many(refs, hyps, spice=ev.get("spice", True))
