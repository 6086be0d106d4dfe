"""Reader, loaders, torch dataset and official-zip unpacking on a fixture in the official format."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from megl.data.annotations import MEData, load_image, load_map, read_dataset
from megl.data.dataset import MEDataset, collate, load_full_maps, mean_annotation_map
from megl.data.fetch import GDRIVE_IDS, fetch_official, unpack_official
from megl.errors import DataError, MEGLError, RunFailure

H = W = 20


def write_fixture(root: Path) -> Path:
    """Official layout: 3 records, 2 images (records 1 and 3 share img1), maps of two kinds."""
    (root / "images").mkdir(parents=True)
    (root / "visual_exp").mkdir()
    rng = np.random.default_rng(0)
    for name in ("img1.png", "img2.png"):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / "images" / name)
    m1 = np.zeros((3, H, W), dtype=np.float64)
    m1[0, :5, :5], m1[1, :5, :5], m1[2, :5, :5] = 1.0, 0.5, 0.0   # channel mean 0.5 there
    np.save(root / "visual_exp" / "m1.npy", m1)
    m2 = np.zeros((H, W), dtype=np.uint8)
    m2[10:, 10:] = 255
    np.save(root / "visual_exp" / "m2.npy", m2)
    ann = {
        "1": {"image_path": "Datasets/Object_Classification/images/img1.png", "class_id": 0,
              "visual_exp": "visual_exp/m1.npy", "ans": "cat", "exp": ["it has whiskers", "pointed ears"]},
        "2": {"image_path": "images/img2.png", "class_id": 1, "visual_exp": "visual_exp/m2.npy",
              "ans": "dog", "exp": ["the dog has a long snout"]},
        "3": {"image_path": "images/img1.png", "class_id": 0, "visual_exp": "",
              "ans": "cat", "exp": ["small and furry", "a cat face", "whiskers"]},
    }
    (root / "exp_annotation.json").write_text(json.dumps(ann))
    (root / "label_class_id_mapping.json").write_text(json.dumps({"cat": 0, "dog": 1}))
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_fixture(tmp_path / "ds")


def test_read_dataset(root: Path) -> None:
    data = read_dataset(root)
    assert [s.sample_id for s in data.samples] == ["1", "2", "3"]
    s1, s2, s3 = data.samples
    assert s1.image_path == root.resolve() / "images" / "img1.png" and s1.image_path.is_absolute()
    assert s3.image_path == s1.image_path
    assert s1.class_id == 0 and s1.class_name == "cat" and s2.class_name == "dog"
    assert s1.visual_exp == root.resolve() / "visual_exp" / "m1.npy" and s3.visual_exp is None
    assert s3.rationales == ("small and furry", "a cat face", "whiskers")
    assert data.num_classes == 2 and data.id_to_class == {0: "cat", 1: "dog"}
    assert data.by_id("2") is s2 and data.label_of(1) == 1
    with pytest.raises(KeyError):
        data.by_id("nope")


def test_read_dataset_lists_every_problem(root: Path) -> None:
    ann = json.loads((root / "exp_annotation.json").read_text())
    del ann["1"]["ans"]
    ann["2"]["exp"] = []
    ann["3"]["class_id"] = 9
    (root / "exp_annotation.json").write_text(json.dumps(ann))
    with pytest.raises(DataError) as e:
        read_dataset(root)
    text = str(e.value)
    assert "sample 1: field ans" in text and "sample 2: field exp" in text and "sample 3: field class_id" in text
    assert all("exp_annotation.json: sample" in p for p in e.value.problems)


def test_noncontiguous_class_ids_get_contiguous_labels() -> None:
    data = MEData(root=Path("/x"), samples=(), class_to_id={"a": 3, "b": 10})
    assert data.class_ids == [3, 10] and data.label_of(10) == 1 and data.label_of(3) == 0


def test_load_map_kinds(root: Path, tmp_path: Path) -> None:
    m1 = load_map(root / "visual_exp" / "m1.npy")
    assert m1.dtype == np.float32 and m1.shape == (H, W)
    assert np.isclose(m1[0, 0], 0.5) and m1[10, 10] == 0
    m2 = load_map(root / "visual_exp" / "m2.npy")
    assert m2.max() == 1.0 and m2[0, 0] == 0.0
    np.save(tmp_path / "bin.npy", np.eye(4, dtype=np.int64))
    assert load_map(tmp_path / "bin.npy").sum() == 4


@pytest.mark.parametrize("arr, what", [
    (np.zeros((2, 3, 4, 5)), "shape"),
    (np.zeros((5, 4, 4)), "shape"),
    (np.array([[0.1, np.nan]]), "NaN"),
    (np.array([[0.1, np.inf]]), "NaN or Inf"),
    (np.array([[0.1, 1.5]]), "outside [0, 1]"),
    (np.array([[-0.2, 0.5]], dtype=np.float32), "outside [0, 1]"),
    (np.array([[0, 5]], dtype=np.int32), "integer map"),
])
def test_load_map_rejects(tmp_path: Path, arr: np.ndarray, what: str) -> None:
    p = tmp_path / "bad.npy"
    np.save(p, arr)
    with pytest.raises(DataError) as e:
        load_map(p)
    assert str(p) in str(e.value) and what in str(e.value)


def test_load_map_rejects_pickles(tmp_path: Path) -> None:
    p = tmp_path / "obj.npy"
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="unreadable"):
        load_map(p)


def test_load_image(root: Path) -> None:
    img = load_image(root / "images" / "img1.png", 16)
    assert img.shape == (3, 16, 16) and img.dtype == torch.float32
    assert 0 <= float(img.min()) and float(img.max()) <= 1 and float(img.max()) > 0.5
    with pytest.raises(DataError, match="missing"):
        load_image(root / "images" / "none.png", 16)


def test_dataset_items_and_collate(root: Path) -> None:
    data = read_dataset(root)
    full = {"1": np.full((8, 8), 255, np.uint8)}
    ds = MEDataset(data, ["1", "3", "2"], 10, full_maps=full)
    assert len(ds) == 3
    a, b = ds[0], ds[1]
    assert a["sample_id"] == "1" and a["image"].shape == (3, 10, 10) and a["label"] == 0
    assert a["visual_map"].shape == (1, 10, 10) and bool(a["has_map"]) and float(a["visual_map"].max()) > 0
    assert not bool(b["has_map"]) and float(b["visual_map"].abs().sum()) == 0
    assert bool(a["has_full_map"]) and torch.allclose(a["full_map"], torch.ones(1, 10, 10))
    assert not bool(b["has_full_map"])
    batch = collate([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, 10, 10) and batch["label"].tolist() == [0, 0, 1]
    assert batch["has_map"].tolist() == [True, False, True]
    assert batch["sample_id"] == ["1", "3", "2"] and batch["rationales"][2] == ("the dog has a long snout",)


def test_mean_annotation_map(root: Path) -> None:
    data = read_dataset(root)
    mean = mean_annotation_map(data, ["1", "2", "3"], 20)
    assert mean.shape == (20, 20) and torch.isclose(mean.sum(), torch.tensor(1.0), atol=1e-5)
    # equal weight per map: top-left block (map 1) and bottom-right block (map 2) each hold ~1/2
    assert abs(float(mean[:5, :5].sum()) - 0.5) < 0.02 and abs(float(mean[10:, 10:].sum()) - 0.5) < 0.02
    with pytest.raises(MEGLError, match="no training sample"):
        mean_annotation_map(data, ["3"], 20)


def test_load_full_maps(root: Path) -> None:
    assert load_full_maps(root) is None
    np.savez(root / "full_maps.npz", **{"1": np.ones((4, 4), np.uint8)})
    fm = load_full_maps(root)
    assert set(fm) == {"1"} and fm["1"].shape == (4, 4)


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_unpack_official(root: Path, tmp_path: Path) -> None:
    members = {f"Object_Classification/{p.relative_to(root).as_posix()}": p.read_bytes()
               for p in root.rglob("*") if p.is_file()}
    z = _zip(tmp_path / "Object_Classification.zip", members)
    found = unpack_official(z, tmp_path / "unpacked")
    assert found == tmp_path / "unpacked"  # the dataset folder itself, not the archive's wrapper
    assert (found / "exp_annotation.json").is_file() and read_dataset(found).num_classes == 2
    assert unpack_official(z, found) == found  # already unpacked: returned as it is
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".unpacked")]  # no temp left


@pytest.mark.parametrize("bad", ["../x", "/abs/x", "a/../../x"])
def test_unpack_rejects_escaping_members(tmp_path: Path, bad: str) -> None:
    z = _zip(tmp_path / "evil.zip", {"ds/exp_annotation.json": b"{}", bad: b"pwned"})
    with pytest.raises(MEGLError, match="rejected"):
        unpack_official(z, tmp_path / "out" / "unpacked")
    assert not (tmp_path / "out" / "x").exists() and not (tmp_path / "x").exists()
    assert not (tmp_path / "out" / "unpacked").exists()


def test_fetch_uses_the_authors_ids_and_keeps_a_present_zip(tmp_path: Path) -> None:
    # the ids of the authors' README (github.com/TnTerry/MEGL, branch llava), both datasets
    assert GDRIVE_IDS == {"objects": "1SybY478ZMaTUhOWCGQIYPSKbSx-dUJfE",
                          "actions": "1V_kah3MZuHG7UUyPAlg27M1kjnil-uPI"}
    for dataset, name in (("objects", "Object_Classification.zip"), ("actions", "Action_Classification.zip")):
        (tmp_path / name).write_bytes(b"x")
        assert fetch_official(dataset, tmp_path) == tmp_path / name  # no download when present


def test_fetch_offline_explains_manual_route(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gdown

    calls = []

    def no_network(**kwargs):
        calls.append(kwargs["id"])
        raise ConnectionError("no route to host")

    monkeypatch.setattr(gdown, "download", no_network)
    for dataset, name in (("objects", "Object_Classification.zip"), ("actions", "Action_Classification.zip")):
        with pytest.raises(RunFailure) as e:  # a runtime failure: exit 1
            fetch_official(dataset, tmp_path / "data" / "raw")
        assert calls[-1] == GDRIVE_IDS[dataset]
        msg = str(e.value)
        assert "ConnectionError" in msg and f"data/raw/{name}" in msg and "dvc add" in msg
        assert "TnTerry/MEGL" in msg and GDRIVE_IDS[dataset] in msg  # where the id comes from
        assert not any((tmp_path / "data" / "raw").glob("*"))  # nothing half-written
    assert calls == [GDRIVE_IDS["objects"], GDRIVE_IDS["actions"]]
