"""Getting the authors' ME datasets: download with gdown (the ids the authors publish) and safe unpacking."""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from megl.data.annotations import ANNOTATION_FILE, unsafe_relpath
from megl.dataset_kinds import OFFICIAL_ZIPS
from megl.errors import MEGLError, RunFailure
from megl.io import atomic_dir, atomic_path, remove_stale_temps, temp_prefix

ZIP_NAMES = OFFICIAL_ZIPS

# Google Drive file ids of the two zips, as the authors' README gives them in its dataset section
# ("gdown 1V_kah3MZuHG7UUyPAlg27M1kjnil-uPI" for Action_Classification.zip, "gdown
# 1SybY478ZMaTUhOWCGQIYPSKbSx-dUJfE" for Object_Classification.zip): README.md on the `llava`
# branch of github.com/TnTerry/MEGL. Checked against that README's text; not guessed.
GDRIVE_IDS: dict[str, str] = {"objects": "1SybY478ZMaTUhOWCGQIYPSKbSx-dUJfE",
                              "actions": "1V_kah3MZuHG7UUyPAlg27M1kjnil-uPI"}
GDRIVE_SOURCE = "README.md of github.com/TnTerry/MEGL, branch llava"


def manual_instructions(dataset: str, dest_dir: Path) -> str:
    name = ZIP_NAMES[dataset]
    return (f"download {name} (Google Drive id {GDRIVE_IDS[dataset]}, {GDRIVE_SOURCE}) and place it at "
            f"{dest_dir / name} (e.g. data/raw/{name}); then run: dvc add data/raw/{name} && "
            f"git add data/raw/{name}.dvc data/raw/.gitignore, and set datasets.{dataset}.source: official "
            f"in the config")


def fetch_official(dataset: str, dest_dir: str | Path) -> Path:
    """Return the path of the dataset zip in `dest_dir`, downloading it with gdown if needed."""
    if dataset not in ZIP_NAMES:
        raise MEGLError(f"unknown dataset {dataset!r}; expected one of {sorted(ZIP_NAMES)}")
    dest_dir = Path(dest_dir)
    dest = dest_dir / ZIP_NAMES[dataset]
    if dest.is_file():
        return dest
    file_id = GDRIVE_IDS[dataset]
    try:
        import gdown  # lazy: optional dependency, only for this download
    except ImportError:
        raise RunFailure("gdown is not installed (pip install gdown); "
                         + manual_instructions(dataset, dest_dir)) from None
    try:
        with atomic_path(dest, suffix=".zip") as tmp:
            got = gdown.download(id=file_id, output=str(tmp), quiet=True)
            if not got or not zipfile.is_zipfile(tmp):
                raise RuntimeError("download failed or did not return a zip file")
    except Exception as e:  # network, quota, HTML-instead-of-zip: all end in the same advice
        raise RunFailure(f"download of {ZIP_NAMES[dataset]} (Google Drive id {file_id}, from the "
                         f"{GDRIVE_SOURCE}) failed ({type(e).__name__}: {e}); "
                        + manual_instructions(dataset, dest_dir)) from None
    return dest


def _locate(folder: Path) -> Path:
    hits = sorted(p.parent for p in folder.rglob(ANNOTATION_FILE) if "__MACOSX" not in p.parts)
    if len(hits) != 1:
        raise MEGLError(f"{folder}: expected exactly one {ANNOTATION_FILE} in the archive, found {len(hits)}")
    return hits[0]


def unpack_official(zip_path: str | Path, out_dir: str | Path) -> Path:
    """Extract a dataset zip safely and atomically so that `out_dir` is the dataset folder (the one
    holding exp_annotation.json, wherever the archive nests it); return it. Rejects absolute, escaping
    ('..') and symlink members. If `out_dir` already holds an unpacked dataset, returns the folder
    holding its exp_annotation.json without extracting again.
    """
    zip_path, out_dir = Path(zip_path), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        return _locate(out_dir)
    try:
        zf = zipfile.ZipFile(zip_path)
    except FileNotFoundError:
        raise MEGLError(f"{zip_path}: no such file") from None
    except (OSError, zipfile.BadZipFile) as e:  # truncated or corrupt: a fault of the file, not of the request
        raise RunFailure(f"{zip_path}: not a readable zip ({e}); fetch the zip again") from None
    with zf:
        for info in zf.infolist():
            why = unsafe_relpath(info.filename)
            if why:
                raise MEGLError(f"{zip_path}: member {info.filename!r} rejected: {why}")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise MEGLError(f"{zip_path}: member {info.filename!r} rejected: symbolic link")
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out_dir)  # a staging folder left by a killed unpack
        staging = Path(tempfile.mkdtemp(prefix=temp_prefix(out_dir), suffix=".unzip", dir=out_dir.parent))
        try:
            for info in zf.infolist():
                target = staging.joinpath(*PurePosixPath(info.filename.replace("\\", "/")).parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with zf.open(info) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:  # corrupt member
                    raise RunFailure(f"{zip_path}: member {info.filename!r} is corrupt ({type(e).__name__}: {e}); "
                                     "fetch the zip again") from None
            found = _locate(staging)
            with atomic_dir(out_dir) as tmp:  # out_dir is absent or empty (checked above)
                tmp.rmdir()
                os.replace(found, tmp)  # the dataset folder itself becomes out_dir
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir
