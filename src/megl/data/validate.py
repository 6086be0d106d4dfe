"""Full validation of a dataset folder: structure plus every image and map. Read-only."""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from megl.data.annotations import ANNOTATION_FILE, IMAGE_DIR, check_structure, load_map, stats, words
from megl.errors import DataError


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def _check_image(path: Path, root: Path) -> str | None:
    if not path.is_file():
        return f"image file {path.relative_to(root)} does not exist"
    if not _inside(path, root):
        return f"image file {path.relative_to(root)} resolves outside the dataset folder (symlink)"
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:  # verify() leaves the file unusable; load() catches truncation
            im.load()
    except Exception as e:  # PIL raises many types for corrupt files
        return f"image file {path.relative_to(root)} unreadable ({type(e).__name__}: {e})"
    return None


def _check_map(rel: str, root: Path, image: Path | None = None) -> str | None:
    """Problem of one map, or None. With `image` (a readable image), its shape must match the image's
    aspect ratio too (map_matches_image)."""
    path = root / rel
    if not path.is_file():
        return f"map file {rel} does not exist"
    if not _inside(path, root):
        return f"map file {rel} resolves outside the dataset folder (symlink)"
    try:
        arr = load_map(path)
    except DataError as e:
        return "; ".join(p.replace(f"{path}: ", f"map file {rel}: ") for p in e.problems)
    if image is not None:
        with Image.open(image) as im:
            width, height = im.size
        if not map_matches_image(arr.shape[-2:], (height, width)):
            return (f"map file {rel}: shape {arr.shape[-2]}x{arr.shape[-1]} (HxW) does not match the aspect ratio "
                    f"of its image {image.relative_to(root)} ({height}x{width}); maps are the image's size")
    return None


def map_matches_image(map_hw: tuple[int, int], image_hw: tuple[int, int]) -> bool:
    """Whether a map of `map_hw` can be its image (`image_hw`) resized by one factor, each side rounded
    to the nearest pixel (the official maps are the image's own size; any honest rescaling keeps the
    aspect up to that rounding): some factor s puts both sides within half a pixel. A different aspect
    ratio (a map of another image, transposed, cropped) is refused; the same aspect at another size passes."""
    (h, w), (ih, iw) = map_hw, image_hw
    low = max((h - 0.5) / ih, (w - 0.5) / iw)
    high = min((h + 0.5) / ih, (w + 0.5) / iw)
    return low <= high + 1e-9


def validate(root: str | Path) -> tuple[list[str], dict[str, Any]]:
    """Check a dataset folder; return (problems, summary). Never modifies the input.

    Each problem line reads "FILE: sample SAMPLE_ID: field FIELD: what is wrong".
    """
    root = Path(root).resolve()
    problems, records, mapping = check_structure(root)
    for sid, rec in records.items():
        base = PurePosixPath(rec["image_path"].replace("\\", "/")).name
        image = root / IMAGE_DIR / base
        why = _check_image(image, root)
        if why:
            problems.append(f"{ANNOTATION_FILE}: sample {sid}: field image_path: {why}")
        ve = rec["visual_exp"].strip()
        if ve:
            why = _check_map(ve, root, None if why else image)
            if why:
                problems.append(f"{ANNOTATION_FILE}: sample {sid}: field visual_exp: {why}")
    per_sample = [len(r["exp"]) for r in records.values()]
    rwords = [words(t) for r in records.values() for t in r["exp"]]
    summary = {
        "n_samples": len(records),
        "n_images": len({PurePosixPath(r["image_path"].replace("\\", "/")).name for r in records.values()}),
        "n_classes": len(mapping),
        "n_with_visual_map": sum(1 for r in records.values() if r["visual_exp"].strip()),
        "n_rationales": sum(per_sample),
        "rationales_per_sample": stats(per_sample),
        "rationale_words": stats(rwords),
    }
    return problems, summary


def format_summary(summary: dict[str, Any]) -> str:
    """A few human-readable lines."""
    n = summary["n_samples"]
    frac = summary["n_with_visual_map"] / n if n else 0.0
    rps, rw = summary["rationales_per_sample"], summary["rationale_words"]
    return "\n".join([
        f"samples: {n} ({summary.get('n_images', n)} images), classes: {summary['n_classes']}",
        f"with visual map: {summary['n_with_visual_map']} ({100 * frac:.1f}%)",
        f"rationales: {summary['n_rationales']} "
        f"(per sample min {rps['min']} / mean {rps['mean']:.2f} / max {rps['max']})",
        f"rationale words: min {rw['min']} / mean {rw['mean']:.2f} / max {rw['max']}",
    ])
