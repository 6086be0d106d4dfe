"""A split decoded once into tensors, and the per-(dataset, backbone) cache of it.

Training and evaluation index these tensors instead of decoding PNGs every epoch. The cache file
also holds the frozen trunk's output for every image (`Classifier.trunk_features`), so runs that
fine-tune only the last stage never recompute what cannot change. The single-run commands build
the same tensors in memory with the same function, so a cached and an uncached run agree exactly.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from megl.data.annotations import MEData
from megl.data.dataset import MEDataset, load_full_maps
from megl.errors import MEGLError
from megl.io import atomic_path

SPLITS = ("train", "val", "test")
FEATURE_CHUNK = 128  # images per trunk forward when caching features (fixed: results must not depend on it)


@dataclass
class SplitTensors:
    """One split: images uint8 (N,3,S,S), labels (N,), has_map (N,), maps float (N,1,S,S; zeros
    where absent), full_maps float (N,1,S,S) or None, rationales, ids, and optionally the frozen
    trunk's features (N, ...). `extras`: per-sample tensors a method's loss reads beside the batch,
    computed in memory for this split (never cached to disk), tagged by `extras_key`."""

    ids: list[str]
    images: Tensor
    labels: Tensor
    has_map: Tensor
    maps: Tensor
    full_maps: Tensor | None
    rationales: list[tuple[str, ...]]
    features: Tensor | None = field(default=None)
    extras: dict[str, Tensor] = field(default_factory=dict)
    extras_key: str | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, index: Tensor, device: torch.device) -> dict:
        """The items at `index` as a training/evaluation batch on `device` (images as float in [0, 1])."""
        idx = index.tolist()
        out = {"sample_id": [self.ids[i] for i in idx],
               "image": self.images[index].to(device).float().div_(255.0),
               "label": self.labels[index].to(device), "has_map": self.has_map[index].to(device),
               "visual_map": self.maps[index].to(device), "rationales": [self.rationales[i] for i in idx]}
        if self.full_maps is not None:
            out["full_map"] = self.full_maps[index].to(device)
        if self.features is not None:
            out["features"] = self.features[index].to(device)
        for key, value in self.extras.items():
            out[key] = value[index].to(device)
        return out


def decode_split(data: MEData, ids: list[str], image_size: int, with_full_maps: bool = True) -> SplitTensors:
    """Decode the images and maps of `ids` once (same resizing as MEDataset)."""
    full = load_full_maps(data.root) if with_full_maps else None
    ds = MEDataset(data, ids, image_size, full_maps=full)
    items = [ds[i] for i in range(len(ds))]
    if not items:
        raise MEGLError(f"{data.root}: split with no samples")
    images = torch.stack([(it["image"] * 255.0).round().to(torch.uint8) for it in items])
    has_full = full is not None and all(bool(it["has_full_map"]) for it in items)
    return SplitTensors(
        ids=list(ids), images=images,
        labels=torch.tensor([it["label"] for it in items], dtype=torch.long),
        has_map=torch.stack([it["has_map"] for it in items]).bool(),
        maps=torch.stack([it["visual_map"] for it in items]).float(),
        full_maps=torch.stack([it["full_map"] for it in items]).float() if has_full else None,
        rationales=[tuple(it["rationales"]) for it in items])


def trunk_features(classifier, images_uint8: Tensor, device: torch.device) -> Tensor | None:
    """The frozen trunk's output for every image, in fixed chunks; None when nothing is frozen."""
    if getattr(classifier, "frozen_stages", 0) == 0:
        return None
    classifier.to(device)
    chunks = []
    for start in range(0, len(images_uint8), FEATURE_CHUNK):
        x = images_uint8[start:start + FEATURE_CHUNK].to(device).float().div_(255.0)
        chunks.append(classifier.trunk_features(x).float().cpu())
    return torch.cat(chunks)


def save_cache(path: Path, splits: dict[str, SplitTensors], meta: dict) -> None:
    """Every split's tensors (and features) in one safetensors file; ids and rationales in its metadata."""
    from safetensors.torch import save_file

    tensors, info = {}, {"meta": meta, "splits": {}}
    for name, st in splits.items():
        for key in ("images", "labels", "has_map", "maps", "full_maps", "features"):
            value = getattr(st, key)
            if value is not None:
                tensors[f"{name}.{key}"] = value.contiguous()
        info["splits"][name] = {"ids": st.ids, "rationales": [list(r) for r in st.rationales]}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"megl": json.dumps(info)})


def load_cache(path: Path, splits: tuple[str, ...] = SPLITS) -> tuple[dict[str, SplitTensors], dict]:
    """The splits named (only those: selection never loads the test split) and the cache's meta."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise MEGLError(f"{path}: no feature cache; run the workflow's cache_features step")
    try:
        with safe_open(str(path), framework="pt") as fh:
            info = json.loads(fh.metadata()["megl"])
            keys = set(fh.keys())
            out = {}
            for name in splits:
                if name not in info["splits"]:
                    raise MEGLError(f"{path}: split {name!r} missing from the feature cache")
                get = lambda key, name=name: (  # noqa: E731
                    fh.get_tensor(f"{name}.{key}") if f"{name}.{key}" in keys else None)
                out[name] = SplitTensors(
                    ids=info["splits"][name]["ids"], images=get("images"), labels=get("labels"),
                    has_map=get("has_map"), maps=get("maps"), full_maps=get("full_maps"),
                    rationales=[tuple(r) for r in info["splits"][name]["rationales"]], features=get("features"))
    except MEGLError:
        raise
    except Exception as exc:  # truncated or foreign file: safetensors raises its own error types
        raise MEGLError(f"{path}: unreadable feature cache ({type(exc).__name__}: {exc}); "
                        "delete it and re-run the cache_features step") from None
    return out, info["meta"]


def mean_map_of(split: SplitTensors) -> Tensor:
    """Ā from decoded training maps: mean of each non-empty annotated map normalised to sum 1."""
    maps = split.maps[split.has_map][:, 0].double()
    totals = maps.flatten(1).sum(1)
    maps = maps[totals > 0] / totals[totals > 0, None, None]
    if len(maps) == 0:
        raise MEGLError("no training sample has a non-empty visual explanation map; "
                        "the mean annotation map (consistency loss) needs at least one")
    acc = maps.sum(0)
    return (acc / acc.sum()).float()


__all__ = ["SplitTensors", "decode_split", "trunk_features", "save_cache", "load_cache", "mean_map_of", "SPLITS"]

