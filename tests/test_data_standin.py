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
from megl.data.standin import make_standin, read_mark
from megl.data.validate import validate
from megl.errors import MEGLError

CONFIG = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())
SPLIT = {k: CONFIG["split"][k] for k in ("train", "val", "test")}
LOCATIONS = ("upper", "lower", "top", "bottom", "left", "right", "center")


def gen(kind: str, out: Path, n: int = 60, **kw) -> dict:
    cfg = dict(CONFIG["datasets"][kind]["standin"])
    args = dict(seed=cfg["seed"], n_images=n, image_size=cfg["image_size"],
                annotated_fraction=cfg["annotated_fraction"], shortcut_strength=cfg["shortcut_strength"],
                split_seed=CONFIG["split"]["seed"], split_fractions=SPLIT)
    args.update(kw)
    return make_standin(kind, out, **args)


def hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", params=["objects", "actions"])
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
    assert summary["n_samples"] == 60 and summary["n_with_visual_map"] == 6  # 10% annotated
    assert summary["rationales_per_sample"]["min"] >= 3 and summary["rationales_per_sample"]["max"] <= 5
    data = read_dataset(out)
    assert data.num_classes == len(manifest["classes"]) and 8 <= data.num_classes <= 12
    assert {s.class_name for s in data.samples} == set(manifest["classes"])  # every class present
    ann = json.loads((out / "exp_annotation.json").read_text())
    assert all(r["image_path"].startswith("images/") for r in ann.values())
    assert sorted(ann) == [f"{'obj' if kind == 'objects' else 'act'}_{i:05d}" for i in range(60)]


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
    _, out, manifest = standin
    data = read_dataset(out)
    sp = make_split([s.sample_id for s in data.samples], [s.class_id for s in data.samples],
                    CONFIG["split"]["seed"], SPLIT)
    assert sp == manifest["split"]
    on_disk = json.loads((out / "standin.json").read_text())
    assert on_disk["split"]["train"] == sp["train"] and on_disk["shortcut_strength"] == 0.9


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


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(MEGLError, match="kind"):
        make_standin("scenes", tmp_path / "x", seed=0, n_images=10, image_size=64, annotated_fraction=0.1,
                     shortcut_strength=0.9, split_seed=0, split_fractions=SPLIT)
    with pytest.raises(MEGLError):
        gen("objects", tmp_path / "x", shortcut_strength=1.5)
    assert not (tmp_path / "x").exists()
