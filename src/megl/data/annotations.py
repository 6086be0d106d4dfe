"""Reader for the official ME data format (the authors' Object/Action_Classification folders).

Layout of a dataset folder `<root>`:
  exp_annotation.json          {sample_id: {image_path, class_id, visual_exp, ans, exp}}
  label_class_id_mapping.json  {class_name: class_id}
  images/<basename>            the image named by the basename of `image_path`
  <visual_exp>                 a .npy map, path relative to <root> ("" when absent)

`read_dataset` checks structure only (no image or map is opened); `megl.data.validate`
also opens every file.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from megl.errors import DataError

if TYPE_CHECKING:
    import torch

ANNOTATION_FILE = "exp_annotation.json"
MAPPING_FILE = "label_class_id_mapping.json"
IMAGE_DIR = "images"
FIELDS = ("image_path", "class_id", "visual_exp", "ans", "exp")


@dataclass(frozen=True)
class Sample:
    """One annotated record: an image, its class, an optional map and its rationales."""

    sample_id: str
    image_path: Path           # absolute: <root>/images/<basename of image_path>
    class_id: int
    class_name: str
    visual_exp: Path | None    # absolute path of the .npy map, None when `visual_exp` is ""
    rationales: tuple[str, ...]


@dataclass(frozen=True)
class MEData:
    """A parsed dataset folder."""

    root: Path
    samples: tuple[Sample, ...]
    class_to_id: dict[str, int]
    _index: dict[str, Sample] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {s.sample_id: s for s in self.samples})

    @property
    def id_to_class(self) -> dict[int, str]:
        return {i: name for name, i in self.class_to_id.items()}

    @property
    def num_classes(self) -> int:
        return len(self.class_to_id)

    @property
    def class_ids(self) -> list[int]:
        """Class ids of the mapping, sorted; position in this list = training label."""
        return sorted(self.class_to_id.values())

    def label_of(self, class_id: int) -> int:
        """Contiguous training label 0..K-1 of a class id (equal to it when ids are 0..K-1)."""
        ids = self.class_ids
        if ids == list(range(len(ids))):
            return int(class_id)
        return ids.index(class_id)

    def by_id(self, sample_id: str) -> Sample:
        try:
            return self._index[sample_id]
        except KeyError:
            raise KeyError(f"{self.root / ANNOTATION_FILE}: no sample {sample_id!r}") from None


# ---------------------------------------------------------------------------------------------
# structural checks (shared with validate.py)

def _load_json(path: Path, problems: list[str]) -> Any:
    """Parse a JSON file, rejecting duplicate keys; on failure append a problem and return None."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for k, v in pairs:
            if k in out:
                problems.append(f"{path.name}: sample {k}: field <key>: duplicate key")
            out[k] = v
        return out

    if not path.is_file():
        problems.append(f"{path.name}: sample -: field -: file missing ({path})")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=no_duplicates)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        problems.append(f"{path.name}: sample -: field -: malformed JSON ({e})")
        return None


def unsafe_relpath(p: str) -> str | None:
    """Why a path from the annotation file is unsafe (absolute or escaping), else None."""
    if PurePosixPath(p).is_absolute() or PureWindowsPath(p).is_absolute() or PureWindowsPath(p).drive \
            or p.startswith(("/", "\\")):
        return f"absolute path {p!r} (must be relative to the dataset folder)"
    if ".." in PurePosixPath(p.replace("\\", "/")).parts:
        return f"path {p!r} escapes the dataset folder ('..')"
    return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_mapping(mapping: Any, problems: list[str]) -> dict[str, int]:
    """Check label_class_id_mapping.json; return the usable part."""
    f = MAPPING_FILE
    if mapping is None:
        return {}
    if not isinstance(mapping, dict) or not mapping:
        problems.append(f"{f}: sample -: field -: must be a non-empty JSON object class name -> class id")
        return {}
    good: dict[str, int] = {}
    seen: dict[int, str] = {}
    for name, cid in mapping.items():
        if not name.strip():
            problems.append(f"{f}: sample -: field {name!r}: empty class name")
        elif not _is_int(cid) or cid < 0:
            problems.append(f"{f}: sample -: field {name}: class id must be a non-negative int, got {cid!r}")
        elif cid in seen:
            problems.append(f"{f}: sample -: field {name}: class id {cid} also used by {seen[cid]!r} "
                            "(mapping must be one-to-one)")
        else:
            seen[cid] = name
            good[name] = cid
    return good


def check_record(sid: str, rec: Any, mapping: dict[str, int], problems: list[str]) -> bool:
    """Check one record of exp_annotation.json; append problems; True when usable."""
    f = ANNOTATION_FILE
    n0 = len(problems)

    def bad(fld: str, what: str) -> None:
        problems.append(f"{f}: sample {sid}: field {fld}: {what}")

    if not sid.strip():
        bad("<key>", "empty sample id")
    if not isinstance(rec, dict):
        bad("<record>", f"must be a JSON object, got {type(rec).__name__}")
        return False
    for fld in FIELDS:
        if fld not in rec:
            bad(fld, "missing")
    ip = rec.get("image_path")
    if "image_path" in rec:
        if not isinstance(ip, str) or not ip.strip():
            bad("image_path", f"must be a non-empty string, got {ip!r}")
        else:
            why = unsafe_relpath(ip)
            if why:
                bad("image_path", why)
            elif PurePosixPath(ip.replace("\\", "/")).name in ("", ".", ".."):
                bad("image_path", f"no file name in {ip!r}")
    cid = rec.get("class_id")
    if "class_id" in rec:
        if not _is_int(cid):
            bad("class_id", f"must be an int, got {cid!r}")
        elif mapping and cid not in mapping.values():
            bad("class_id", f"class id {cid} is not in {MAPPING_FILE}")
    ve = rec.get("visual_exp")
    if "visual_exp" in rec:
        if not isinstance(ve, str):
            bad("visual_exp", f"must be a string (\"\" when absent), got {ve!r}")
        elif ve.strip():
            why = unsafe_relpath(ve)
            if why:
                bad("visual_exp", why)
            elif not ve.lower().endswith(".npy"):
                bad("visual_exp", f"{ve!r} is not a .npy file")
    ans = rec.get("ans")
    if "ans" in rec:
        if not isinstance(ans, str) or not ans.strip():
            bad("ans", f"must be a non-empty string, got {ans!r}")
        elif mapping:
            if ans not in mapping:
                bad("ans", f"class name {ans!r} is not in {MAPPING_FILE}")
            elif _is_int(cid) and mapping[ans] != cid:
                bad("ans", f"class name {ans!r} maps to id {mapping[ans]} but class_id is {cid}")
    exp = rec.get("exp")
    if "exp" in rec:
        if not isinstance(exp, list):
            bad("exp", f"must be a list of strings, got {type(exp).__name__}")
        elif not exp:
            bad("exp", "empty list of rationales")
        else:
            for i, r in enumerate(exp):
                if not isinstance(r, str):
                    bad("exp", f"rationale {i} must be a string, got {r!r}")
                elif not r.strip():
                    bad("exp", f"rationale {i} is empty or whitespace")
    return len(problems) == n0


def check_structure(root: Path) -> tuple[list[str], dict[str, Any], dict[str, int]]:
    """Parse and check both JSON files. Returns (problems, good records by id, mapping)."""
    root = Path(root)
    problems: list[str] = []
    ann = _load_json(root / ANNOTATION_FILE, problems)
    mapping = check_mapping(_load_json(root / MAPPING_FILE, problems), problems)
    records: dict[str, Any] = {}
    if ann is not None:
        if not isinstance(ann, dict):
            problems.append(f"{ANNOTATION_FILE}: sample -: field -: must be a JSON object keyed by sample id")
        elif not ann:
            problems.append(f"{ANNOTATION_FILE}: sample -: field -: no samples")
        else:
            for sid, rec in ann.items():
                if check_record(sid, rec, mapping, problems):
                    records[sid] = rec
    return problems, records, mapping


def _sample(root: Path, sid: str, rec: dict, id_to_class: dict[int, str]) -> Sample:
    base = PurePosixPath(rec["image_path"].replace("\\", "/")).name
    ve = rec["visual_exp"].strip()
    return Sample(
        sample_id=sid,
        image_path=root / IMAGE_DIR / base,
        class_id=rec["class_id"],
        class_name=id_to_class[rec["class_id"]],
        visual_exp=(root / ve) if ve else None,
        rationales=tuple(rec["exp"]),
    )


def read_dataset(root: str | Path) -> MEData:
    """Parse a dataset folder; raise DataError listing every structural problem.

    Samples are ordered by sample id. Images and maps are not opened (see validate).
    """
    root = Path(root).resolve()
    problems, records, mapping = check_structure(root)
    if problems:
        raise DataError([f"{root}/{p}" for p in problems])
    id_to_class = {i: n for n, i in mapping.items()}
    samples = tuple(_sample(root, sid, records[sid], id_to_class) for sid in sorted(records))
    return MEData(root=root, samples=samples, class_to_id=dict(sorted(mapping.items())))


# ---------------------------------------------------------------------------------------------
# file loaders

def load_map(path: str | Path) -> np.ndarray:
    """Load a visual-explanation map as float32 (H, W) in [0, 1].

    Accepts (H, W), or (C, H, W) with C in {1, 3} (channel mean). dtype: float in [0, 1]
    (1e-4 tolerance, then clipped); uint8 in [0, 255] (divided by 255); bool; other integer
    dtypes only when every value is 0 or 1 (binary masks; any other scale is ambiguous).
    """
    path = Path(path)

    def fail(what: str) -> DataError:
        return DataError([f"{path}: {what}"])

    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise fail("map file missing") from None
    except Exception as e:  # numpy raises ValueError/OSError/EOFError/pickle errors for bad files
        raise fail(f"unreadable .npy ({type(e).__name__}: {e})") from None
    if not isinstance(arr, np.ndarray):
        raise fail("not a single .npy array")
    if arr.ndim == 3 and arr.shape[0] in (1, 3):
        pass
    elif arr.ndim != 2:
        raise fail(f"map must be (H, W) or (3, H, W), got shape {arr.shape}")
    if arr.shape[-1] == 0 or arr.shape[-2] == 0:
        raise fail(f"empty map, shape {arr.shape}")
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.bool_:
        out = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() > 1:
            raise fail(f"integer map of dtype {arr.dtype} with values outside {{0, 1}} "
                       f"(range [{arr.min()}, {arr.max()}]); use uint8 0..255 or float 0..1")
        out = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise fail("map contains NaN or Inf")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -1e-4 or hi > 1 + 1e-4:
            raise fail(f"float map values outside [0, 1] (range [{lo:.4g}, {hi:.4g}])")
        out = np.clip(arr.astype(np.float32), 0.0, 1.0)
    else:
        raise fail(f"unsupported dtype {arr.dtype}")
    if out.ndim == 3:
        out = out.mean(axis=0)
    return np.ascontiguousarray(out, dtype=np.float32)


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """Load an image as float (3, size, size) in [0, 1] (RGB, bilinear resize)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError([f"{path}: image file missing"]) from None
    except Exception as e:  # PIL raises many types for corrupt files
        raise DataError([f"{path}: unreadable image ({type(e).__name__}: {e})"]) from None
    import torch  # here, not at import: the data steps (stand-in, validation, split) never start torch

    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def words(text: str) -> int:
    return len(text.split())


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"min": 0, "mean": 0.0, "max": 0}
    return {"min": min(values), "mean": round(math.fsum(values) / len(values), 4), "max": max(values)}
