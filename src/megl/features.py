"""The cache_features step: decode a dataset's splits once and run the frozen trunk over them once.

Every method cell of a (dataset, backbone) reads this one file (megl.data.tensors.load_cache)
instead of decoding PNGs and recomputing features that no run can change.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from megl.config import for_cell
from megl.data.annotations import read_dataset
from megl.data.split import read_split
from megl.data.tensors import SPLITS, decode_split, save_cache, trunk_features
from megl.errors import MEGLError
from megl.runtime import resolve_device, set_determinism

log = logging.getLogger(__name__)


def _sha256(path: Path | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_features(config: dict, *, dataset_root: Path, split_path: Path, backbone: str,
                   backbone_weights: Path | None, out: Path, dataset: str | None = None) -> None:
    """`dataset` (its config key) applies that dataset's trunk depth (datasets.<d>.frozen_stages)."""
    from megl.models.backbones import build_classifier

    if backbone not in config["backbones"]:
        raise MEGLError(f"unknown backbone {backbone!r}; valid backbones: {', '.join(config['backbones'])}")
    if dataset is not None:
        if dataset not in config["datasets"]:
            raise MEGLError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(config['datasets'])}")
        config = for_cell(config, dataset, backbone)
    set_determinism(0, config["train"]["num_threads"])
    device = resolve_device(config["device"])
    bb_cfg = config["backbones"][backbone]
    data = read_dataset(dataset_root)
    split = read_split(split_path, data)
    # num_classes does not matter: the head is not part of the trunk whose output is cached
    classifier = build_classifier(bb_cfg, data.num_classes, backbone_weights).to(device).train(False)
    splits = {}
    for name in SPLITS:
        st = decode_split(data, split[name], int(bb_cfg["image_size"]))
        with torch.no_grad():
            st.features = trunk_features(classifier, st.images, device)
        splits[name] = st
        log.info("%s/%s: %d images, features %s", backbone, name, len(st),
                 None if st.features is None else tuple(st.features.shape[1:]))
    meta = {"dataset_root": str(dataset_root), "split": str(split_path), "backbone": backbone,
            "frozen_stages": classifier.frozen_stages, "backbone_weights_sha256": _sha256(backbone_weights)}
    save_cache(Path(out), splits, meta)
