"""Training-regime pilot: the plain baseline over several seeds for each candidate regime (lr, epochs,
trunk depth), scored on the VALIDATION split only (docs/experiment.md §1): the test split is not read.
A candidate that changes a backbone's `frozen_stages` trains from the decoded images (the feature
cache holds another trunk depth's features).

    python -m megl.bench.regime_pilot --results results --dataset objects --backbone resnet18 \
        --candidate train.lr=1e-3,train.epochs=4 --candidate train.lr=3e-3,train.epochs=8

Needs a finished workflow's stand-in, split, backbone weights and feature cache under --results.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from megl.cell import Cell, validation_score, with_overrides
from megl.config import coerce_overrides, for_cell, load_config
from megl.run_spec import resolve_run_spec


def parse_candidate(text: str) -> dict:
    """'train.lr=3e-3,train.epochs=8' -> {'train.lr': 0.003, 'train.epochs': 8}."""
    return {key: coerce_overrides(value) for key, value in (item.split("=", 1) for item in text.split(","))}


def pilot(config: dict, dataset: str, backbone: str, candidate: dict, seeds: list[int], *, data_root: Path,
          split_path: Path, cache_path: Path, backbone_weights: Path) -> dict:
    """Val and test accuracy of the plain baseline under one candidate regime, per seed."""
    spec = resolve_run_spec(with_overrides(for_cell(config, dataset, backbone), candidate), dataset, backbone,
                            "baseline")
    if any(key.endswith(".frozen_stages") for key in candidate) or not Path(cache_path).exists():
        cache_path = None  # decode the images (the same tensors the cache would hold)
    cell = Cell(spec, data_root, split_path, cache_path, None, backbone_weights)
    splits = cell.splits(("train", "val"))
    val = []
    for seed in seeds:
        model, _, _ = cell.train(spec, seed, splits["train"], None, f"{candidate} seed{seed} ")
        val.append(validation_score(model, splits["val"], "accuracy", cell.device))
    return {"candidate": candidate, "val": val, "n_val": len(splits["val"])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml", help="workflow config")
    parser.add_argument("--results", default="results", help="results folder of a finished workflow")
    parser.add_argument("--dataset", default="objects", help="dataset key")
    parser.add_argument("--backbone", required=True, help="backbone key")
    parser.add_argument("--candidate", action="append", required=True, type=parse_candidate,
                        help="comma-separated dotted overrides of one candidate regime; repeatable")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds per candidate")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    res, d, b = Path(args.results), args.dataset, args.backbone
    paths = dict(data_root=res / "standin" / d, split_path=res / "data" / d / "split.json",
                 cache_path=res / "features" / d / f"{b}.safetensors",
                 backbone_weights=res / "backbones" / f"{b}.safetensors")
    rows = [pilot(config, d, b, c, args.seeds, **paths) for c in args.candidate]
    for row in rows:
        v = row["val"]
        print(f"{args.dataset} {args.backbone} {row['candidate']}: val {statistics.mean(v):.3f} "
              f"(sd {statistics.stdev(v) if len(v) > 1 else float('nan'):.3f}, "
              f"seeds {' '.join(f'{x:.3f}' for x in v)}, "
              f"n_val {row['n_val']})", flush=True)
    best = max(rows, key=lambda r: statistics.mean(r["val"]))
    print(f"chosen on validation: {best['candidate']}")


if __name__ == "__main__":
    main()
