"""Per-image, stratified, seeded split; its file; the authors' per-explanation split leaks."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from megl.data.annotations import MEData, Sample
from megl.data.split import leaked_images, make_split, per_explanation_split, read_split, split_for, write_split
from megl.errors import MEGLError

FR = {"train": 0.7, "val": 0.1, "test": 0.2}


def balanced(n_classes: int = 10, per_class: int = 50) -> tuple[list[str], list[int]]:
    ids = [f"x{i:04d}" for i in range(n_classes * per_class)]
    return ids, [i % n_classes for i in range(len(ids))]


def multi_record_data(n_images: int = 120, per_image: int = 3, n_classes: int = 6) -> MEData:
    """Several explanation records per image, as in the real data."""
    samples = []
    for img in range(n_images):
        for k in range(per_image):
            samples.append(Sample(sample_id=f"{img * per_image + k}", image_path=Path(f"/d/images/im{img}.jpg"),
                                  class_id=img % n_classes, class_name=f"c{img % n_classes}",
                                  visual_exp=None, rationales=("r",)))
    return MEData(root=Path("/d"), samples=tuple(samples),
                  class_to_id={f"c{c}": c for c in range(n_classes)})


def test_deterministic_and_seed_dependent() -> None:
    ids, labels = balanced()
    a, b = make_split(ids, labels, 0, FR), make_split(list(ids), list(labels), 0, FR)
    assert a == b
    assert make_split(ids, labels, 1, FR) != a
    assert all(v == sorted(v) for v in a.values())


def test_disjoint_and_covering() -> None:
    ids, labels = balanced()
    sp = make_split(ids, labels, 3, FR)
    sets = [set(sp[k]) for k in ("train", "val", "test")]
    assert sum(map(len, sets)) == len(ids) and set().union(*sets) == set(ids)
    assert len(sp["train"]) == 350 and len(sp["val"]) == 50 and len(sp["test"]) == 100


def test_stratified() -> None:
    ids, labels = balanced(n_classes=7, per_class=43)
    lab = dict(zip(ids, labels))
    sp = make_split(ids, labels, 0, FR)
    for k, f in FR.items():
        counts = Counter(lab[i] for i in sp[k])
        for c in range(7):
            assert abs(counts[c] - f * 43) <= 1, (k, c, counts[c])


def test_small_classes_keep_a_training_image() -> None:
    ids = ["a", "b", "c"] + [f"z{i}" for i in range(20)]
    labels = [0, 1, 1] + [2] * 20
    sp = make_split(ids, labels, 0, FR)
    assert "a" in sp["train"] and ({"b", "c"} & set(sp["train"]))


def test_records_of_one_image_share_a_split() -> None:
    data = multi_record_data()
    sp = split_for(data, 0, FR)
    where = {i: k for k, v in sp.items() for i in v}
    by_image: dict[str, set[str]] = {}
    for s in data.samples:
        by_image.setdefault(s.image_path.name, set()).add(where[s.sample_id])
    assert all(len(v) == 1 for v in by_image.values())
    image_of = {s.sample_id: s.image_path.name for s in data.samples}
    assert leaked_images(sp, image_of) == 0


def test_per_explanation_split_leaks_images() -> None:
    """The authors' prototype splits explanation records: test images also occur in training."""
    data = multi_record_data()
    image_of = {s.sample_id: s.image_path.name for s in data.samples}
    ids = [s.sample_id for s in data.samples]
    theirs = per_explanation_split(ids, 0.8, rng=np.random.default_rng(0))
    assert leaked_images(theirs, image_of) > 0
    n_test_images = len({image_of[i] for i in theirs["test"]})
    assert leaked_images(theirs, image_of) / n_test_images > 0.5  # most test images are leaked
    ours = split_for(data, 0, {"train": 0.8, "val": 0.0, "test": 0.2})
    assert leaked_images(ours, image_of) == 0


def test_write_and_read_split(tmp_path: Path) -> None:
    data = multi_record_data()
    out = tmp_path / "splits" / "split.json"
    rec = write_split(data, out, 5, FR)
    on_disk = json.loads(out.read_text())
    assert on_disk == rec and rec["seed"] == 5 and rec["fractions"] == FR
    assert rec["n"] == {k: len(rec[k]) for k in ("train", "val", "test")}
    assert sum(rec["n_images"].values()) == 120
    assert read_split(out, data)["train"] == rec["train"]
    assert write_split(data, tmp_path / "again.json", 5, FR) == rec


def test_read_split_rejects_overlap_and_bad_keys(tmp_path: Path) -> None:
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"train": ["1", "2"], "val": [], "test": ["2"]}))
    with pytest.raises(MEGLError, match="sample 2.*disjoint"):
        read_split(p)
    p.write_text(json.dumps({"train": ["1"], "test": []}))
    with pytest.raises(MEGLError, match="field val"):
        read_split(p)
    p.write_text(json.dumps({"train": ["nope"], "val": [], "test": []}))
    with pytest.raises(MEGLError, match="sample nope"):
        read_split(p, multi_record_data(2))


@pytest.mark.parametrize("fr", [{"train": 0.5, "val": 0.1, "test": 0.1},
                                {"train": 0.0, "val": 0.5, "test": 0.5},
                                {"train": 1.2, "val": -0.1, "test": -0.1}])
def test_bad_fractions(fr: dict) -> None:
    with pytest.raises(MEGLError, match="fractions"):
        make_split(["a", "b"], [0, 1], 0, fr)
