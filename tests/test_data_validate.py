"""validate(): one problem line per defect naming file, sample id and field; input untouched."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from megl.data.validate import format_summary, map_matches_image, validate


def write_fixture(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "visual_exp").mkdir()
    rng = np.random.default_rng(0)
    for name in ("img1.jpg", "img2.png"):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "images" / name)
    np.save(root / "visual_exp" / "m1.npy", rng.random((3, 8, 8)))           # (3,H,W) float64
    np.save(root / "visual_exp" / "m2.npy", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    ann = {
        "s1": {"image_path": "images/img1.jpg", "class_id": 0, "visual_exp": "visual_exp/m1.npy",
               "ans": "cat", "exp": ["the ears are pointed", "it has whiskers"]},
        "s2": {"image_path": "images/img2.png", "class_id": 1, "visual_exp": "visual_exp/m2.npy",
               "ans": "dog", "exp": ["a long snout"]},
        "s3": {"image_path": "images/img1.jpg", "class_id": 0, "visual_exp": "",
               "ans": "cat", "exp": ["small furry animal", "a cat", "fur"]},
    }
    (root / "exp_annotation.json").write_text(json.dumps(ann))
    (root / "label_class_id_mapping.json").write_text(json.dumps({"cat": 0, "dog": 1}))
    return root


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def edit_record(sid: str, fn: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        ann = json.loads((root / "exp_annotation.json").read_text())
        fn(ann[sid])
        (root / "exp_annotation.json").write_text(json.dumps(ann))
    return apply


def setf(field: str, value) -> Callable[[dict], None]:
    return lambda rec: rec.__setitem__(field, value)


def save_map(arr: np.ndarray, **kw) -> Callable[[Path], None]:
    return lambda root: np.save(root / "visual_exp" / "m2.npy", arr, **kw)


def write(rel: str, data: bytes) -> Callable[[Path], None]:
    return lambda root: (root / rel).write_bytes(data)


def truncate(rel: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        b = (root / rel).read_bytes()
        (root / rel).write_bytes(b[: len(b) // 2])
    return apply


CASES = {
    # name: (mutation, sample id, field, substring of the message)
    "missing_field": (edit_record("s2", lambda r: r.pop("ans")), "s2", "ans", "missing"),
    "mistyped_class_id": (edit_record("s2", setf("class_id", "1")), "s2", "class_id", "must be an int"),
    "bool_class_id": (edit_record("s2", setf("class_id", True)), "s2", "class_id", "must be an int"),
    "mistyped_visual_exp": (edit_record("s2", setf("visual_exp", None)), "s2", "visual_exp", "must be a string"),
    "exp_not_list": (edit_record("s2", setf("exp", "a snout")), "s2", "exp", "list"),
    "class_id_not_in_mapping": (edit_record("s2", setf("class_id", 7)), "s2", "class_id", "not in"),
    "ans_disagrees": (edit_record("s2", setf("ans", "cat")), "s2", "ans", "maps to id 0"),
    "ans_unknown": (edit_record("s2", setf("ans", "cow")), "s2", "ans", "not in"),
    "image_missing": (lambda root: (root / "images" / "img2.png").unlink(), "s2", "image_path", "does not exist"),
    "image_garbage": (write("images/img2.png", b"not an image"), "s2", "image_path", "unreadable"),
    "image_truncated": (truncate("images/img2.png"), "s2", "image_path", "unreadable"),
    "map_missing": (lambda root: (root / "visual_exp" / "m2.npy").unlink(), "s2", "visual_exp", "does not exist"),
    "map_garbage": (write("visual_exp/m2.npy", b"\x93NUMPY garbage"), "s2", "visual_exp", "unreadable"),
    "map_pickle": (save_map(np.array([{"x": 1}], dtype=object), allow_pickle=True), "s2", "visual_exp", "unreadable"),
    "map_rank": (save_map(np.zeros((2, 2, 2, 2))), "s2", "visual_exp", "shape"),
    "map_aspect": (save_map(np.zeros((10, 7), np.uint8)), "s2", "visual_exp", "aspect ratio"),  # image 16x16
    "map_transposed_aspect": (save_map(np.zeros((3, 8, 4))), "s2", "visual_exp", "aspect ratio"),
    "map_nan": (save_map(np.full((4, 4), np.nan)), "s2", "visual_exp", "NaN"),
    "map_inf": (save_map(np.full((4, 4), np.inf, np.float32)), "s2", "visual_exp", "Inf"),
    "map_range": (save_map(np.full((4, 4), 3.0)), "s2", "visual_exp", "outside [0, 1]"),
    "image_path_absolute": (edit_record("s2", setf("image_path", "/etc/img2.png")), "s2", "image_path", "absolute"),
    "image_path_windows_abs": (edit_record("s2", setf("image_path", "C:\\data\\img2.png")), "s2", "image_path",
                               "absolute"),
    "image_path_escapes": (edit_record("s2", setf("image_path", "../other/img2.png")), "s2", "image_path", "escapes"),
    "visual_exp_absolute": (edit_record("s2", setf("visual_exp", "/tmp/m2.npy")), "s2", "visual_exp", "absolute"),
    "visual_exp_escapes": (edit_record("s2", setf("visual_exp", "visual_exp/../../m2.npy")), "s2", "visual_exp",
                           "escapes"),
    "visual_exp_not_npy": (edit_record("s2", setf("visual_exp", "visual_exp/m2.png")), "s2", "visual_exp", ".npy"),
    "exp_empty": (edit_record("s2", setf("exp", [])), "s2", "exp", "empty list"),
    "exp_blank_rationale": (edit_record("s2", setf("exp", ["ok", "   "])), "s2", "exp", "rationale 1"),
    "exp_nonstring": (edit_record("s2", setf("exp", ["ok", 3])), "s2", "exp", "rationale 1"),
}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_fixture(tmp_path / "ds")


def test_valid_fixture(root: Path) -> None:
    problems, summary = validate(root)
    assert problems == []
    assert summary["n_samples"] == 3 and summary["n_classes"] == 2 and summary["n_images"] == 2
    assert summary["n_with_visual_map"] == 2 and summary["n_rationales"] == 6
    assert summary["rationales_per_sample"] == {"min": 1, "mean": 2.0, "max": 3}
    assert summary["rationale_words"]["min"] == 1 and summary["rationale_words"]["max"] == 4
    text = format_summary(summary)
    assert "samples: 3" in text and "classes: 2" in text and "66.7%" in text


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_reported(root: Path, case: str) -> None:
    mutate, sid, field, what = CASES[case]
    mutate(root)
    before = tree_hashes(root)
    problems, _ = validate(root)
    assert tree_hashes(root) == before, "validate modified its input"
    hits = [p for p in problems if f"sample {sid}:" in p and f"field {field}:" in p]
    assert hits, problems
    assert any(what in p for p in hits), hits
    assert all(p.startswith("exp_annotation.json: ") for p in hits)
    # the untouched records stay clean
    assert not [p for p in problems if "sample s1:" in p or "sample s3:" in p]


def test_malformed_json(root: Path) -> None:
    (root / "exp_annotation.json").write_text('{"s1": {"image_path": ')
    before = tree_hashes(root)
    problems, summary = validate(root)
    assert tree_hashes(root) == before
    assert any(p.startswith("exp_annotation.json:") and "malformed JSON" in p for p in problems)
    assert summary["n_samples"] == 0


def test_mapping_not_one_to_one(root: Path) -> None:
    (root / "label_class_id_mapping.json").write_text(json.dumps({"cat": 0, "dog": 0}))
    problems, _ = validate(root)
    assert any(p.startswith("label_class_id_mapping.json:") and "one-to-one" in p and "dog" in p
               for p in problems), problems


def test_missing_mapping_file(root: Path) -> None:
    (root / "label_class_id_mapping.json").unlink()
    problems, _ = validate(root)
    assert any("label_class_id_mapping.json" in p and "missing" in p for p in problems)


def test_duplicate_sample_id(root: Path) -> None:
    text = (root / "exp_annotation.json").read_text()
    (root / "exp_annotation.json").write_text(text[:-1] + ', "s1": ' + json.dumps(json.loads(text)["s1"]) + "}")
    problems, _ = validate(root)
    assert any("sample s1:" in p and "duplicate" in p for p in problems)


def test_symlinked_map_outside_root(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.npy"
    np.save(outside, np.zeros((4, 4), np.uint8))
    (root / "visual_exp" / "m2.npy").unlink()
    (root / "visual_exp" / "m2.npy").symlink_to(outside)
    problems, _ = validate(root)
    assert any("sample s2:" in p and "field visual_exp:" in p and "outside" in p for p in problems)


def test_every_problem_listed(root: Path) -> None:
    for sid, fld, val in (("s1", "exp", []), ("s2", "class_id", "x"), ("s3", "image_path", "/abs.png")):
        edit_record(sid, setf(fld, val))(root)
    problems, _ = validate(root)
    for sid, fld in (("s1", "exp"), ("s2", "class_id"), ("s3", "image_path")):
        assert any(f"sample {sid}: field {fld}:" in p for p in problems), (sid, problems)


def test_map_of_the_same_aspect_at_another_size_is_accepted(root: Path) -> None:
    """Maps are the image's size in the official format; a map at another size with the image's aspect
    (resized by one factor, sides rounded) is accepted: the loader resizes it."""
    for shape in ((16, 16), (5, 5), (32, 32), (3, 16, 16)):
        np.save(root / "visual_exp" / "m2.npy", np.zeros(shape, np.uint8))
        assert validate(root)[0] == [], shape


@pytest.mark.parametrize("map_hw, image_hw, ok", [
    ((10, 7), (64, 53), False), ((10, 7), (53, 64), False),  # the case, either reading of "53x64"
    ((7, 10), (53, 64), False), ((64, 53), (64, 53), True), ((32, 27), (64, 53), True),  # 26.5 rounds to 27
    ((32, 26), (64, 53), True), ((32, 25), (64, 53), False), ((1, 1), (3, 2), True), ((224, 224), (480, 640), False),
])
def test_map_matches_image_up_to_rounding(map_hw, image_hw, ok) -> None:
    assert map_matches_image(map_hw, image_hw) is ok
