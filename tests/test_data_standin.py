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
from megl.data.rationales import class_name_report
from megl.data.split import make_split
from megl.data.standin import (
    CLASS_NAME_FRACTION,
    DIGIT_CLASSES,
    DIGIT_MAP_THRESHOLD,
    DIGITS_AVAILABLE,
    _plan_digits,
    decoy_shade,
    decoy_side,
    digit_ink,
    make_standin,
    names_class,
    read_decoy,
    read_mark,
)
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
                class_name_fraction=cfg.get("class_name_fraction", CLASS_NAME_FRACTION),
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
    gen("digits", tmp_path / "ds", n=60, class_name_fraction=1.0)
    data = read_dataset(tmp_path / "ds")
    assert sorted(data.class_to_id, key=data.class_to_id.get) == DIGIT_CLASSES
    slants = set()
    for s in data.samples:
        assert 3 <= len(s.rationales) <= 5 and len(set(s.rationales)) == len(s.rationales)
        assert all(s.class_name in r.split() for r in s.rationales)  # 1.0: every sentence names the digit
        slants |= {w for r in s.rationales for w in ("right", "left", "upright") if f"leans to the {w}" in r
                   or (w == "upright" and "written upright" in r)}
    assert len(slants) >= 2  # grounded in the image: the slant differs between images
    gen("digits", tmp_path / "none", n=60, class_name_fraction=0.0)
    for s in read_dataset(tmp_path / "none").samples:  # 0.0: the strokes are described, never named
        assert not any(w in r.split() for r in s.rationales for w in DIGIT_CLASSES)


def test_digits_cli(tmp_path: Path) -> None:
    from megl.cli import main

    assert main(["make-standin", "digits", str(tmp_path / "ds"), "--n-images", "30", "--shortcut-strength", "1"]) == 0
    problems, summary = validate(tmp_path / "ds")
    assert problems == [] and summary["n_samples"] == 30 and summary["n_classes"] == 10


# --- rationales that describe evidence (class_name_fraction) ------------------------------------------

@pytest.mark.parametrize("sentence, class_name, kind, expected", [
    ("the red star in the upper left has five points", "red_star", "objects", True),
    ("there are two red stars", "red_star", "objects", True),                        # plural
    ("the red object in the upper left has five points", "red_star", "objects", False),  # colour + a fact
    ("there is a large star in the top center", "red_star", "objects", False),        # shape alone
    ("it is the only round object with no corners", "red_circle", "objects", False),  # relational fact
    ("the green star is a distractor; the red one is in the center", "red_star", "objects", True),
    ("the figure's right hand touches the ball", "touches_ball", "actions", True),
    ("touching the ball, the arm is stretched out", "touches_ball", "actions", True),
    ("one arm reaches the ball in the middle right", "touches_ball", "actions", False),  # ball alone
    ("the ball is held up high", "holds_ball_above_head", "actions", True),            # irregular form
    ("the ball rests on the head of the figure", "heads_ball", "actions", True),
    ("the ball bounces off the very top of the figure", "heads_ball", "actions", False),
    ("the figure stood next to the box", "stands_beside_box", "actions", True),
    ("the feet are on the ground next to the box, not on it", "stands_beside_box", "actions", False),
    ("this handwritten seven leans to the right", "seven", "digits", True),
    ("the digit 7 leans to the right", "seven", "digits", True),                      # numeral
    ("a horizontal bar at the top and a long stroke down", "seven", "digits", False),
    ("almost all of the ink lies on one line", "one", "digits", True),                # "one" is the digit's word
])
def test_names_class_rule(sentence, class_name, kind, expected) -> None:
    assert names_class(sentence, class_name, kind) is expected


def test_names_class_unknown_kind() -> None:
    with pytest.raises(MEGLError, match="kind"):
        names_class("a sentence", "red_star", "scenes")


def test_class_name_fraction_default_is_one_value() -> None:
    from megl.cli import STANDIN_DEFAULTS
    from megl.config import load_schema

    schema = load_schema()["properties"]["datasets"]["additionalProperties"]["properties"]["standin"]["properties"]
    assert schema["class_name_fraction"]["default"] == CLASS_NAME_FRACTION == STANDIN_DEFAULTS["class_name_fraction"]
    for kind in KINDS:  # set explicitly in the default config
        assert knobs(kind)["class_name_fraction"] == CLASS_NAME_FRACTION


@pytest.mark.parametrize("kind", KINDS)
def test_class_name_fraction_changes_only_the_texts(kind: str, tmp_path: Path) -> None:
    """Images, maps and every other file are byte-identical between 0.2 and 1.0; only the texts
    (exp_annotation.json) and the manifest's rationale fields differ."""
    low = gen(kind, tmp_path / "low", n=40, class_name_fraction=0.2)
    high = gen(kind, tmp_path / "high", n=40, class_name_fraction=1.0)
    a, b = hashes(tmp_path / "low"), hashes(tmp_path / "high")
    pixels = [k for k in a if k.startswith(("images/", "visual_exp/")) or k == "full_maps.npz"]
    assert len(pixels) > 40 and all(a[k] == b[k] for k in pixels)
    assert a["label_class_id_mapping.json"] == b["label_class_id_mapping.json"]
    assert a["exp_annotation.json"] != b["exp_annotation.json"]
    drop = ("class_name_fraction", "rationales_naming_class")
    assert {k: v for k, v in low.items() if k not in drop} == {k: v for k, v in high.items() if k not in drop}
    ra = json.loads((tmp_path / "low" / "exp_annotation.json").read_text())
    rb = json.loads((tmp_path / "high" / "exp_annotation.json").read_text())
    assert all({k: v for k, v in ra[i].items() if k != "exp"} == {k: v for k, v in rb[i].items() if k != "exp"}
               for i in ra)


@pytest.mark.parametrize("kind", KINDS)
def test_realised_share_of_class_naming_sentences(kind: str, tmp_path: Path) -> None:
    """The share of sentences naming their class is Binomial(sentences, class_name_fraction): within
    4 standard deviations of the setting; 0.0 and 1.0 are exact (each group has enough sentences);
    standin.json records it per split, recounted from the files by the report."""
    for p in (0.0, 0.2, 1.0):
        out = tmp_path / f"p{p}"
        manifest = gen(kind, out, n=200, class_name_fraction=p)
        shares = manifest["rationales_naming_class"]
        assert manifest["class_name_fraction"] == p
        recorded = json.loads((out / "standin.json").read_text())["rationales_naming_class"]
        assert class_name_report(out) == shares == recorded
        n = shares["all"]["sentences"]
        assert n >= 3 * 200 and sum(shares[s]["sentences"] for s in ("train", "val", "test")) == n
        if p in (0.0, 1.0):
            assert all(v["share"] == p for v in shares.values())
        else:
            assert abs(shares["all"]["naming"] / n - p) <= 4 * np.sqrt(p * (1 - p) / n)
        # every sentence is distinct within its sample, and the counts are the rule's
        data = read_dataset(out)
        assert all(len(set(s.rationales)) == len(s.rationales) for s in data.samples)
        assert shares["all"]["naming"] == sum(names_class(r, s.class_name, kind)
                                              for s in data.samples for r in s.rationales)
