"""Empty binary targets of the grid baselines on the stand-ins: how many annotated maps have NO
positive cell on the Grad-CAM grid, under the old rule (area-average the map to the grid, then
>= saliency_target.threshold) and the current one (`megl.losses.saliency_target`: binarise at the
map's resolution, then max-pool, so a cell is positive when any of its pixels is annotated).

    PYTHONPATH=src python -m megl.bench.empty_targets --config config/config.yaml \\
        [--kinds objects actions digits] [--out results/bench/empty_targets.json]

Each kind is generated in a temporary folder with its `datasets.<kind>.standin` knobs (for a kind
the config lacks, `DEFAULT_KNOBS[kind]`); maps are read as the trainer reads them (`MEDataset`: the
`.npy` map resized to the backbone's image size) and the grid is each backbone's Grad-CAM grid
(`cam_grid_size`). Counted over the maps listed in exp_annotation.json ("annotated") and, for a
larger sample, over every image's `full_maps.npz` map ("all"); "cdep_all" counts maps with no
pixel >= threshold at the image size (CDEP's "inside" region; the trainer's maps already have the
image's size, so there old and new coincide).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from megl.config import load_config
from megl.data.annotations import read_dataset
from megl.data.dataset import MEDataset, load_full_maps, resize_map
from megl.data.standin import make_standin
from megl.dataset_kinds import STANDIN_KINDS
from megl.io import write_json
from megl.losses import binary_grid_target, downsample_map, target_threshold
from megl.matrix import matrix_backbones
from megl.models.backbones import cam_grid_size

# knobs for a kind without a `datasets.<kind>.standin` entry (digits: the recommended DecoyMNIST setting)
DEFAULT_KNOBS = {
    "objects": {"seed": 0, "n_images": 1200, "image_size": 64, "annotated_fraction": 0.1, "shortcut_strength": 0.9},
    "actions": {"seed": 0, "n_images": 1200, "image_size": 64, "annotated_fraction": 0.1, "shortcut_strength": 0.9},
    "digits": {"seed": 0, "n_images": 1797, "image_size": 64, "annotated_fraction": 1.0, "shortcut_strength": 1.0},
}


def count_empty(maps: torch.Tensor, grid: tuple[int, int], threshold: float) -> dict[str, int]:
    """maps (N, S, S) in [0, 1] -> {"n", "old", "new"}: maps whose grid target has no positive cell,
    "old_share" / "new_share": the mean share of positive cells per map, and "area_peak_median" /
    "area_peak_below": the median peak of the area-averaged map on the grid (the L1 target before
    `saliency_target`; Â peaks at 1) and how many maps peak below `threshold` there."""
    area = downsample_map(maps, grid)
    old = area >= threshold
    new = binary_grid_target(maps, grid, threshold) > 0
    peak = area.flatten(1).amax(1)
    return {"n": int(maps.shape[0]), "old": int((~old.flatten(1).any(1)).sum()),
            "new": int((~new.flatten(1).any(1)).sum()),
            "old_share": round(float(old.float().mean()), 4), "new_share": round(float(new.float().mean()), 4),
            "area_peak_median": round(float(peak.median()), 3), "area_peak_below": int((peak < threshold).sum())}


def measure(config: dict[str, Any], kinds: list[str], workdir: Path) -> dict[str, Any]:
    thr = cdep_thr = target_threshold(config.get("saliency_target"))  # one threshold for every method
    split = {k: config["split"][k] for k in ("train", "val", "test")}
    out: dict[str, Any] = {"threshold": thr, "kinds": {}}
    for kind in kinds:
        knobs = dict(DEFAULT_KNOBS[kind])
        entry = (config.get("datasets") or {}).get(kind)
        if entry and entry.get("standin"):
            knobs.update({k: v for k, v in entry["standin"].items() if k != "kind"})
        root = workdir / kind
        make_standin(kind, root, split_seed=config["split"]["seed"], split_fractions=split, **knobs)
        data = read_dataset(root)
        ids = [s.sample_id for s in data.samples]
        full = load_full_maps(root)
        res: dict[str, Any] = {"knobs": knobs}
        for name in matrix_backbones(config["matrix"]):
            bcfg = config["backbones"][name]
            size, grid = int(bcfg["image_size"]), cam_grid_size(bcfg)
            ds = MEDataset(data, ids, size)
            ann = [ds[i]["visual_map"][0] for i, s in enumerate(data.samples) if s.visual_exp is not None]
            every = [resize_map(full[i].astype("float32") / 255.0, size) for i in ids]
            res[name] = {"grid": list(grid), "image_size": size,
                         "annotated": count_empty(torch.stack(ann), grid, thr) if ann else None,
                         "all": count_empty(torch.stack(every), grid, thr),
                         # CDEP's "inside" region: the map binarised at the image size
                         "cdep_all": count_empty(torch.stack(every), (size, size), cdep_thr)}
        out["kinds"][kind] = res
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--kinds", nargs="+", default=list(STANDIN_KINDS), choices=STANDIN_KINDS)
    ap.add_argument("--out", help="also write the counts here (JSON)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    config = load_config(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(config, args.kinds, Path(tmp))
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
