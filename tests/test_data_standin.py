"""Stand-in generator: official format, determinism, annotation share, the shortcut's structure."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from megl.data.annotations import load_map, read_dataset
from megl.data.dataset import MEDataset, load_full_maps, mean_annotation_map
from megl.data.split import make_split
from megl.data.standin import (DIGIT_CLASSES, DIGIT_MAP_THRESHOLD, DIGITS_AVAILABLE, _plan_digits, decoy_shade,
                                decoy_side, digit_ink, make_standin, read_decoy, read_mark)
from megl.data.validate import validate
from megl.errors import MEGLError

CONFIG = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())
SPLIT = {k: CONFIG["split"][k] for k in ("train", "val", "test")}
LOCATIONS = ("upper", "lower", "top", "bottom", "left", "right", "center")
KINDS = ["objects", "actions", "digits"]
PREFIX = {"objects": "obj", "actions": "act", "digits": "dig"}
# digits knobs until config.yaml has a `datasets.digits` entry (then the config's are used)
DIGITS_KNOBS = {"kind": "digits", "n_images": 1797, "image_size": 64, "seed": 0,
                "annotated_fraction": 1.0, "shortcut_strength": 1.0}


def knobs(kind: str) -> dict:
    entry = CONFIG["datasets"].get(kind)
    return dict(entry["standin"]) if entry else dict(DIGITS_KNOBS)


def gen(kind: str, out: Path, n: int = 60, **kw) -> dict:
    cfg = knobs(kind)
    args = dict(seed=cfg["seed"], n_images=n, image_size=cfg["image_size"],
                annotated_fraction=cfg["annotated_fraction"], shortcut_strength=cfg["shortcut_strength"],
                split_seed=CONFIG["split"]["seed"], split_fractions=SPLIT)
    args.update(kw)
    return make_standin(kind, out, **args)


def hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", params=KINDS)
def standin(request, tmp_path_factory) -> tuple[str, Path, dict]:
    out = tmp_path_factory.mktemp(request.param) / "ds"
    return request.param, out, gen(request.param, out)


def test_config_defaults() -> None:
    for kind in ("objects", "actions"):
        assert CONFIG["datasets"][kind]["standin"]["shortcut_strength"] == 0.9


def test_deterministic(standin, tmp_path: Path) -> None:
    kind, out, _ = standin
    again = tmp_path / "again"
    gen(kind, again)
    a, b = hashes(out), hashes(again)
    assert a == b and "full_maps.npz" in a and len(a) > 60
    gen(kind, tmp_path / "other_seed", seed=1)
    assert hashes(tmp_path / "other_seed") != a


def test_official_format_validates(standin) -> None:
    kind, out, manifest = standin
    problems, summary = validate(out)
    assert problems == []
    assert summary["n_samples"] == 60
    assert summary["n_with_visual_map"] == round(knobs(kind)["annotated_fraction"] * 60)
    assert summary["rationales_per_sample"]["min"] >= 3 and summary["rationales_per_sample"]["max"] <= 5
    data = read_dataset(out)
    assert data.num_classes == len(manifest["classes"]) and 8 <= data.num_classes <= 12
    assert {s.class_name for s in data.samples} == set(manifest["classes"])  # every class present
    ann = json.loads((out / "exp_annotation.json").read_text())
    assert all(r["image_path"].startswith("images/") for r in ann.values())
    assert sorted(ann) == [f"{PREFIX[kind]}_{i:05d}" for i in range(60)]


def test_maps_mix_kinds_and_match_full_maps(standin) -> None:
    _, out, _ = standin
    data = read_dataset(out)
    full = load_full_maps(out)
    assert set(full) == {s.sample_id for s in data.samples}
    assert all(m.shape == (64, 64) and m.dtype == np.uint8 and m.max() > 0 for m in full.values())
    shapes = set()
    for s in data.samples:
        if s.visual_exp is None:
            continue
        raw = np.load(s.visual_exp, allow_pickle=False)
        shapes.add((raw.ndim, raw.dtype.name))
        assert np.allclose(load_map(s.visual_exp), full[s.sample_id] / 255.0, atol=1e-6)
    assert shapes == {(2, "uint8"), (3, "float32")}


def test_rationales_are_spatially_grounded(standin) -> None:
    _, out, _ = standin
    data = read_dataset(out)
    grounded = [any(any(w in r.split() for w in LOCATIONS) for r in s.rationales) for s in data.samples]
    assert np.mean(grounded) > 0.8
    assert all(len(set(s.rationales)) == len(s.rationales) for s in data.samples)


def test_split_matches_make_split(standin) -> None:
    kind, out, manifest = standin
    data = read_dataset(out)
    sp = make_split([s.sample_id for s in data.samples], [s.class_id for s in data.samples],
                    CONFIG["split"]["seed"], SPLIT)
    assert sp == manifest["split"]
    on_disk = json.loads((out / "standin.json").read_text())
    assert on_disk["split"]["train"] == sp["train"]
    assert on_disk["shortcut_strength"] == knobs(kind)["shortcut_strength"]


def match_rates(out: Path, manifest: dict) -> dict[str, float]:
    data = read_dataset(out)
    rates = {}
    for part in ("train", "test"):
        ids = manifest["split"][part] + (manifest["split"]["val"] if part == "test" else [])
        hits = []
        for sid in ids:
            img = np.asarray(Image.open(data.by_id(sid).image_path).convert("RGB"))
            pattern = read_mark(img)
            assert pattern is not None and pattern == manifest["marks"][sid]  # mark really drawn
            hits.append(pattern == data.label_of(data.by_id(sid).class_id))
        rates[part] = float(np.mean(hits))
    return rates


@pytest.mark.parametrize("kind", ["objects", "actions"])
def test_shortcut_structure(kind: str, tmp_path: Path) -> None:
    manifest = gen(kind, tmp_path / "ds", n=200)
    rates = match_rates(tmp_path / "ds", manifest)
    chance = 1 / len(manifest["classes"])
    assert rates["train"] > 0.8      # ~0.9 + 0.1 * chance: the mark predicts the class in train
    assert rates["test"] < 0.3       # ~chance in val/test: the mark is uninformative there
    off = gen(kind, tmp_path / "off", n=200, shortcut_strength=0.0)
    assert match_rates(tmp_path / "off", off)["train"] < 0.3
    assert abs(match_rates(tmp_path / "off", off)["test"] - chance) < 0.15


def test_dataset_and_mean_map_on_standin(standin) -> None:
    _, out, manifest = standin
    data = read_dataset(out)
    ds = MEDataset(data, manifest["split"]["train"], 32, full_maps=load_full_maps(out))
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["full_map"].shape == (1, 32, 32)
    assert bool(item["has_full_map"])
    mean = mean_annotation_map(data, manifest["split"]["train"], 32)
    assert mean.shape == (32, 32) and abs(float(mean.sum()) - 1) < 1e-5


def test_overwrite_rules(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    gen("objects", out, n=12)
    with pytest.raises(MEGLError, match="not empty"):
        gen("objects", out, n=12, seed=3)
    gen("objects", out, n=12, seed=3, overwrite=True)
    assert json.loads((out / "standin.json").read_text())["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temp folders left
    (tmp_path / "empty").mkdir()
    gen("actions", tmp_path / "empty", n=12)
    assert (tmp_path / "empty" / "exp_annotation.json").is_file()


def test_digits_n_images_limit(tmp_path: Path) -> None:
    with pytest.raises(MEGLError, match=str(DIGITS_AVAILABLE)):
        gen("digits", tmp_path / "x", n=DIGITS_AVAILABLE + 1)
    assert not (tmp_path / "x").exists()


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(MEGLError, match="kind"):
        make_standin("scenes", tmp_path / "x", seed=0, n_images=10, image_size=64, annotated_fraction=0.1,
                     shortcut_strength=0.9, split_seed=0, split_fractions=SPLIT)
    with pytest.raises(MEGLError):
        gen("objects", tmp_path / "x", shortcut_strength=1.5)
    assert not (tmp_path / "x").exists()


# --- digits: the DecoyMNIST positive control -------------------------------------------------------

def read_decoys(out: Path, manifest: dict, ids: list[str]) -> dict[str, tuple[str, int]]:
    """Decode every image's decoy from its pixels; it must be what the manifest says was drawn."""
    data = read_dataset(out)
    found = {}
    for sid in ids:
        img = np.asarray(Image.open(data.by_id(sid).image_path).convert("RGB"))
        decoded = read_decoy(img)
        drawn = manifest["marks"][sid]
        assert decoded == (drawn["corner"], drawn["class"]) and drawn["shade"] == decoy_shade(drawn["class"])
        found[sid] = decoded
    return found


@pytest.mark.parametrize("strength", [1.0, 0.7, 0.0])
def test_digits_decoy_encodes_the_class_in_train_only(strength: float, tmp_path: Path) -> None:
    manifest = gen("digits", tmp_path / "ds", n=400, shortcut_strength=strength)
    sp = manifest["split"]
    data = read_dataset(tmp_path / "ds")
    found = read_decoys(tmp_path / "ds", manifest, sp["train"] + sp["val"] + sp["test"])

    def rate(ids: list[str]) -> float:
        return float(np.mean([found[s][1] == data.label_of(data.by_id(s).class_id) for s in ids]))

    k = len(DIGIT_CLASSES)
    expect = strength + (1 - strength) / k  # own shade w.p. strength, else a random class's (incl. own)
    tol = 4 * np.sqrt(expect * (1 - expect) / len(sp["train"]))
    assert abs(rate(sp["train"]) - expect) <= tol
    held = sp["val"] + sp["test"]  # always a random class's shade there
    assert abs(rate(held) - 1 / k) <= 4 * np.sqrt((1 / k) * (1 - 1 / k) / len(held))
    assert {c for c, _ in found.values()} == {"upper left", "upper right", "lower left", "lower right"}


def test_digits_images_maps_and_decoy_geometry(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    manifest = gen("digits", tmp_path / "ds", n=80)
    data, full = read_dataset(tmp_path / "ds"), load_full_maps(tmp_path / "ds")
    size, a = 64, decoy_side(64)
    assert a == 8  # 1/8 of the side: one cell of an 8x8 Grad-CAM grid
    frame = np.ones((size, size), bool)
    frame[a:size - a, a:size - a] = False
    for i, s in enumerate(data.samples):
        img = np.asarray(Image.open(s.image_path).convert("RGB")).astype(int)
        src = manifest["source"]["indices"][i]
        assert s.sample_id == f"dig_{i:05d}" and int(bunch.target[src]) == s.class_id
        corner = manifest["marks"][s.sample_id]["corner"]
        patch = np.zeros((size, size), bool)
        ys = slice(0, a) if "upper" in corner else slice(size - a, size)
        xs = slice(0, a) if "left" in corner else slice(size - a, size)
        patch[ys, xs] = True
        # the image is the UCI scan, upsampled, light on dark, grey; only the patch is added
        want = np.round(digit_ink(bunch.images[src], size) * 255).astype(int)
        assert (img[..., 0] == img[..., 1]).all() and (img[..., 0] == img[..., 2]).all()
        assert (img[..., 0][~patch] == want[~patch]).all() and (want[frame] == 0).all()
        m = full[s.sample_id] > 0
        assert m.any() and not m[patch].any() and not m[frame].any()  # the decoy is never evidence
        grey = img[..., 0]
        assert m[(grey > 255 * DIGIT_MAP_THRESHOLD + 1) & ~patch].all()  # every inked pixel is evidence
        assert (grey[m] >= 255 * DIGIT_MAP_THRESHOLD - 1).all()          # and nothing else is


def test_digits_subset_is_stratified_and_seeded() -> None:
    from sklearn.datasets import load_digits

    targets = load_digits().target
    share = np.bincount(targets, minlength=10) / len(targets)
    labels, _, extra = _plan_digits(np.random.default_rng(0), 100, 10)
    idx = extra["source"]["indices"]
    assert len(set(idx)) == 100 and [int(targets[i]) for i in idx] == labels
    assert np.abs(np.bincount(labels, minlength=10) - 100 * share).max() < 1  # largest remainder
    assert _plan_digits(np.random.default_rng(0), 100, 10)[2] == extra
    assert _plan_digits(np.random.default_rng(1), 100, 10)[2] != extra
    _, _, every = _plan_digits(np.random.default_rng(0), DIGITS_AVAILABLE, 10)
    assert sorted(every["source"]["indices"]) == list(range(DIGITS_AVAILABLE))


def test_digits_rationales(tmp_path: Path) -> None:
    gen("digits", tmp_path / "ds", n=60)
    data = read_dataset(tmp_path / "ds")
    assert sorted(data.class_to_id, key=data.class_to_id.get) == DIGIT_CLASSES
    slants = set()
    for s in data.samples:
        assert 3 <= len(s.rationales) <= 5 and len(set(s.rationales)) == len(s.rationales)
        assert all(s.class_name in r.split() for r in s.rationales)  # every sentence names the digit
        slants |= {w for r in s.rationales for w in ("right", "left", "upright") if f"leans to the {w}" in r
                   or (w == "upright" and "written upright" in r)}
    assert len(slants) >= 2  # grounded in the image: the slant differs between images


def test_digits_cli(tmp_path: Path) -> None:
    from megl.cli import main

    assert main(["make-standin", "digits", str(tmp_path / "ds"), "--n-images", "30", "--shortcut-strength", "1"]) == 0
    problems, summary = validate(tmp_path / "ds")
    assert problems == [] and summary["n_samples"] == 30 and summary["n_classes"] == 10
