"""Seeded train/val/test split per image, stratified by class, recorded in a JSON file."""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from megl.data.annotations import MEData
from megl.errors import MEGLError
from megl.io import write_json

SPLITS = ("train", "val", "test")


def check_fractions(fractions: dict[str, float]) -> dict[str, float]:
    fr = {k: float(fractions.get(k, -1)) for k in SPLITS}
    if set(fractions) - set(SPLITS) - {"seed"}:
        raise MEGLError(f"split fractions: unknown keys {sorted(set(fractions) - set(SPLITS) - {'seed'})}")
    if any(v < 0 for v in fr.values()) or abs(sum(fr.values()) - 1.0) > 1e-6 or fr["train"] <= 0:
        raise MEGLError(f"split fractions must be train > 0, val >= 0, test >= 0 summing to 1; got {fractions}")
    return fr


def _class_counts(n: int, fr: dict[str, float]) -> dict[str, int]:
    """How many images of one class go to each split (largest remainder, >= 1 train)."""
    exact = {k: n * fr[k] for k in SPLITS}
    counts = {k: math.floor(v) for k, v in exact.items()}
    order = sorted(SPLITS, key=lambda k: (-(exact[k] - counts[k]), SPLITS.index(k)))
    for k in order[: n - sum(counts.values())]:
        counts[k] += 1
    if n >= 1 and counts["train"] == 0:  # a class with 1-2 images: keep one for training
        donor = max(("val", "test"), key=lambda k: (counts[k], k == "test"))
        counts[donor] -= 1
        counts["train"] += 1
    return counts


def make_split(sample_ids: list[str], labels: list[int], seed: int, fractions: dict[str, float],
               groups: list[str] | None = None) -> dict[str, list[str]]:
    """Split sample ids into train/val/test: per group (image), stratified by class, seeded.

    `groups[i]` names the image of sample i (default: every sample its own image); all samples of
    one image land in one split. A group's class is its most common label (ties: smallest).
    Per class, images are sorted, shuffled with the seed, and cut by largest-remainder counts
    (ties favour train, then val); every class keeps >= 1 training image, so a class with only
    1-2 images may have none in val/test.
    Returns sorted id lists.
    """
    # Hand-written: sklearn's train_test_split(stratify=...) rejects classes with < 2 members
    # and knows no groups; StratifiedGroupKFold gives folds, not fractions.
    if len(sample_ids) != len(labels) or (groups is not None and len(groups) != len(sample_ids)):
        raise MEGLError("make_split: sample_ids, labels (and groups) must have equal length")
    if len(set(sample_ids)) != len(sample_ids):
        raise MEGLError("make_split: duplicate sample ids")
    fr = check_fractions(fractions)
    groups = list(sample_ids) if groups is None else list(groups)
    members: dict[str, list[str]] = defaultdict(list)
    glabels: dict[str, Counter] = defaultdict(Counter)
    for sid, lab, g in zip(sample_ids, labels, groups):
        members[g].append(sid)
        glabels[g][int(lab)] += 1
    by_class: dict[int, list[str]] = defaultdict(list)
    for g, cnt in glabels.items():
        top = max(cnt.values())
        by_class[min(label for label, c in cnt.items() if c == top)].append(g)
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {k: [] for k in SPLITS}
    for lab in sorted(by_class):
        gs = sorted(by_class[lab])
        gs = [gs[i] for i in rng.permutation(len(gs))]
        counts = _class_counts(len(gs), fr)
        start = 0
        for k in SPLITS:
            for g in gs[start:start + counts[k]]:
                out[k].extend(members[g])
            start += counts[k]
    return {k: sorted(v) for k, v in out.items()}


def split_for(data: MEData, seed: int, fractions: dict[str, float]) -> dict[str, list[str]]:
    """make_split on a dataset, grouping samples by image file name."""
    ss = data.samples
    return make_split([s.sample_id for s in ss], [s.class_id for s in ss], seed, fractions,
                      groups=[s.image_path.name for s in ss])


def write_split(data: MEData, out_path: str | Path, seed: int, fractions: dict[str, float]) -> dict[str, Any]:
    """Compute the split of `data` and write it atomically as JSON; return what was written."""
    fr = check_fractions(fractions)
    sp = split_for(data, seed, fr)
    img = {s.sample_id: s.image_path.name for s in data.samples}
    rec = {"seed": int(seed), "fractions": fr, **sp,
           "n": {k: len(sp[k]) for k in SPLITS},
           "n_images": {k: len({img[i] for i in sp[k]}) for k in SPLITS}}
    write_json(out_path, rec)
    return rec


def read_split(path: str | Path, data: MEData | None = None) -> dict[str, Any]:
    """Read a split file; check keys, disjointness (and, given `data`, that every id exists)."""
    import json

    path = Path(path)
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise MEGLError(f"{path}: cannot read split file ({e})") from None
    if not isinstance(rec, dict):
        raise MEGLError(f"{path}: split file must be a JSON object")
    for k in SPLITS:
        if not isinstance(rec.get(k), list) or not all(isinstance(i, str) for i in rec[k]):
            raise MEGLError(f"{path}: field {k}: must be a list of sample ids")
    seen: dict[str, str] = {}
    for k in SPLITS:
        for i in rec[k]:
            if i in seen:
                raise MEGLError(f"{path}: sample {i}: field {k}: also in {seen[i]} (splits must be disjoint)")
            seen[i] = k
    if data is not None:
        known = {s.sample_id for s in data.samples}
        missing = sorted(set(seen) - known)
        if missing:
            raise MEGLError(f"{path}: sample {missing[0]}: not in {data.root} ({len(missing)} unknown ids)")
    return rec


def per_explanation_split(sample_ids: list[str], train_fraction: float = 0.8,
                          rng: np.random.Generator | None = None) -> dict[str, list[str]]:
    """What the authors' prototype does: `random_split` over explanation records, 80/20.

    No grouping by image and no seed (rng=None draws fresh entropy). Used only to measure the
    image leak between train and test that our per-image split avoids.
    """
    rng = np.random.default_rng() if rng is None else rng
    perm = rng.permutation(len(sample_ids))
    n_train = int(train_fraction * len(sample_ids))
    return {"train": sorted(sample_ids[i] for i in perm[:n_train]),
            "test": sorted(sample_ids[i] for i in perm[n_train:])}


def leaked_images(split: dict[str, list[str]], image_of: dict[str, str]) -> int:
    """Number of test images that also appear in train."""
    train = {image_of[i] for i in split["train"]}
    return len({image_of[i] for i in split["test"]} & train)
