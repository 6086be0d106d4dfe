"""torch Dataset over an MEData split, batching, the mean annotation map, and full maps."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from megl.data.annotations import MEData, load_image, load_map
from megl.errors import DataError, MEGLError

FULL_MAPS_FILE = "full_maps.npz"


def resize_map(m: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """(H, W) map -> float (size, size) in [0, 1] (bilinear, antialiased when shrinking)."""
    t = torch.as_tensor(np.asarray(m, dtype=np.float32))[None, None]
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return t[0, 0].clamp_(0.0, 1.0)


def _full_map_to_float(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)


class MEDataset(Dataset):
    """Items: sample_id, image (3,S,S), label, visual_map (1,S,S; zeros when absent), has_map,
    rationales; with `full_maps` also full_map (1,S,S) and has_full_map.

    `label` is the contiguous class index `data.label_of(class_id)` (= class_id for ids 0..K-1).
    """

    def __init__(self, data: MEData, ids: list[str], image_size: int,
                 full_maps: dict[str, np.ndarray] | None = None):
        self.data = data
        self.ids = list(ids)
        self.samples = [data.by_id(i) for i in self.ids]
        self.image_size = int(image_size)
        self.full_maps = full_maps

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        try:
            return self._item(idx)
        except DataError as exc:  # the loaders name the file; add which sample wants it
            raise DataError([f"{line} (sample {self.samples[idx].sample_id})" for line in exc.problems]) from None

    def _item(self, idx: int) -> dict[str, Any]:
        s = self.samples[idx]
        size = self.image_size
        if s.visual_exp is not None:
            vmap, has = resize_map(load_map(s.visual_exp), size)[None], True
        else:
            vmap, has = torch.zeros(1, size, size), False
        item = {
            "sample_id": s.sample_id,
            "image": load_image(s.image_path, size),
            "label": self.data.label_of(s.class_id),
            "visual_map": vmap,
            "has_map": torch.tensor(has),
            "rationales": s.rationales,
        }
        if self.full_maps is not None:
            fm = self.full_maps.get(s.sample_id)
            if fm is None:
                item["full_map"], item["has_full_map"] = torch.zeros(1, size, size), torch.tensor(False)
            else:
                item["full_map"] = resize_map(_full_map_to_float(fm), size)[None]
                item["has_full_map"] = torch.tensor(True)
        return item


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors; labels -> long tensor; ids and rationales stay lists."""
    out: dict[str, Any] = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        if key == "label":
            out[key] = torch.tensor(vals, dtype=torch.long)
        elif isinstance(vals[0], torch.Tensor):
            out[key] = torch.stack(vals)
        else:
            out[key] = list(vals)
    return out


def mean_annotation_map(data: MEData, train_ids: list[str], size: int) -> torch.Tensor:
    """Ā: mean over training samples with a map of each map normalised to sum 1; sums to 1."""
    acc = torch.zeros(size, size, dtype=torch.float64)
    n = 0
    for sid in train_ids:
        s = data.by_id(sid)
        if s.visual_exp is None:
            continue
        m = resize_map(load_map(s.visual_exp), size).double()
        total = float(m.sum())
        if total <= 0:  # an all-zero map carries no location; leave it out of the mean
            continue
        acc += m / total
        n += 1
    if n == 0:
        raise MEGLError(f"{data.root}: no training sample has a non-empty visual explanation map; "
                        "the mean annotation map (consistency loss) needs at least one")
    acc /= acc.sum()
    return acc.float()


def load_full_maps(root: str | Path) -> dict[str, np.ndarray] | None:
    """`<root>/full_maps.npz` (stand-ins only: every image's true evidence map) or None."""
    path = Path(root) / FULL_MAPS_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except Exception as e:  # numpy/zipfile raise several types for damaged archives
        raise DataError([f"{path}: unreadable ({type(e).__name__}: {e})"]) from None
    for k, a in out.items():
        if a.ndim != 2:
            raise DataError([f"{path}: sample {k}: field full_map: must be (H, W), got {a.shape}"])
    return out
