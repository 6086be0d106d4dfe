"""The workflow's "encoder pretraining" step (embedded default) and the loader of the text models.

Tiny default: a BPE tokenizer trained on the training rationales, a tiny CLIP pretrained
contrastively on the training (image, rationale) pairs, and a tiny Llama pretrained on the
training rationales. Paper scale: local CLIP / LLM folders named in the config (nothing trained here).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from megl.config import image_size_for
from megl.data.annotations import MEData, load_image, read_dataset
from megl.data.split import read_split
from megl.errors import MEGLError
from megl.io import atomic_dir, write_json
from megl.models.clip import FrozenVisionEncoder, build_tiny_clip, image_norm_stats, load_clip, pretrain_tiny_clip
from megl.models.lm import build_tiny_lm, load_pretrained_lm, pretrain_tiny_lm
from megl.models.tokenizer import load_tokenizer, train_tokenizer
from megl.runtime import set_determinism

TINY_VISION_KINDS = ("tiny", "tiny_clip")


def _is_tiny(cfg: dict) -> bool:
    kind = cfg.get("kind")
    if kind in TINY_VISION_KINDS:
        return True
    if kind == "pretrained":
        return False
    raise MEGLError(f"unknown model kind {kind!r} (expected tiny/tiny_clip or pretrained)")


def pretrain_text_models(train_images: torch.Tensor, train_rationales: list[list[str]], vision_cfg: dict,
                         lm_cfg: dict, image_size: int, seed: int, out_dir: Path) -> None:
    """Train the tokenizer, pretrain the tiny CLIP and tiny LM (those whose kind is tiny) and save
    them to out_dir/{tokenizer,clip,lm}/ plus out_dir/pretrain.json (losses per epoch). The whole
    folder appears at once (built in a temporary sibling, then renamed)."""
    out_dir = Path(out_dir)
    if train_images.ndim != 4 or train_images.shape[1] != 3:
        raise MEGLError(f"pretrain: training images must be N×3×H×W, got {tuple(train_images.shape)}")
    if len(train_rationales) != train_images.shape[0]:
        raise MEGLError(f"pretrain: {train_images.shape[0]} images but {len(train_rationales)} rationale lists")
    per_image = [[t for t in (r if isinstance(r, (list, tuple)) else [r]) if t and t.strip()]
                 for r in train_rationales]
    flat = [t for r in per_image for t in r]
    tiny_clip, tiny_lm = _is_tiny(vision_cfg), _is_tiny(lm_cfg)
    report: dict = {"seed": int(seed), "n_images": int(train_images.shape[0]), "n_rationales": len(flat)}

    with atomic_dir(out_dir) as tmp:
        if tiny_clip or tiny_lm:
            tokenizer = train_tokenizer(flat, int(lm_cfg["tiny"]["vocab_size"]), None)
            tokenizer.save_pretrained(tmp / "tokenizer")
            report["vocab_size"] = len(tokenizer)
        if tiny_clip:
            torch.manual_seed(int(seed))
            clip = build_tiny_clip(vision_cfg["tiny"], int(image_size), len(tokenizer), tokenizer.pad_token_id,
                                   tokenizer.bos_token_id, tokenizer.eos_token_id)
            losses: list[float] = []
            pretrain_tiny_clip(clip, tokenizer, train_images.float(), per_image, vision_cfg["tiny"], seed, losses)
            clip.save_pretrained(tmp / "clip")
            shutil.copytree(tmp / "tokenizer", tmp / "clip", dirs_exist_ok=True)
            report["clip_losses"] = losses
        if tiny_lm:
            torch.manual_seed(int(seed))
            lm = build_tiny_lm(lm_cfg["tiny"], tokenizer)
            losses = []
            pretrain_tiny_lm(lm, tokenizer, flat, lm_cfg["tiny"], seed, losses)
            lm.save_pretrained(tmp / "lm")
            shutil.copytree(tmp / "tokenizer", tmp / "lm", dirs_exist_ok=True)
            report["lm_losses"] = losses
        write_json(tmp / "pretrain.json", report)


def _folder(cfg: dict, pretrained_dir: Path | None, sub: str, what: str) -> Path:
    if _is_tiny(cfg):
        if pretrained_dir is None:
            raise MEGLError(f"{what}.kind is tiny but no pretrained folder was given (run the pretraining step)")
        path = Path(pretrained_dir) / sub
    else:
        if not cfg.get("path"):
            raise MEGLError(f"{what}.kind is pretrained but {what}.path is empty")
        path = Path(cfg["path"])
    if not path.is_dir():
        raise MEGLError(f"{what} folder not found: {path}")
    return path


# What this process loaded last, per kind: (key, loaded objects). Every caller gets a deep copy, so
# a run may train or move its copy; a cell's ~7 trainings and its evaluations read the files once.
_LOADED: dict[str, tuple[tuple, tuple]] = {}


def _folder_stamp(path: Path) -> tuple:
    """The folder's files with size and mtime: a rewritten folder is loaded again."""
    return tuple(sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                        for p in path.rglob("*") if p.is_file()))


def _load_once(kind: str, path: Path, options: tuple, load):
    """A deep copy of `load()`'s result, loading only when (folder, its files, options) changed.
    Bitwise the same as loading: from_pretrained draws no random numbers (tests/test_speed.py)."""
    import copy

    key = (str(path.resolve()), _folder_stamp(path), options)
    cached = _LOADED.get(kind)
    if cached is None or cached[0] != key:
        _LOADED.pop(kind, None)  # free the old one first: a paper-scale LM is large
        _LOADED[kind] = (key, load())
    return copy.deepcopy(_LOADED[kind][1])


def load_vision(vision_cfg: dict, pretrained_dir: Path | None):
    """(FrozenVisionEncoder, CLIPModel, CLIP tokenizer) from the tiny folder or vision_encoder.path."""
    path = _folder(vision_cfg, pretrained_dir, "clip", "vision_encoder")

    def load():
        clip, clip_tokenizer = load_clip(path, dtype=vision_cfg.get("dtype"))
        mean, std = image_norm_stats(path)
        return FrozenVisionEncoder(clip, mean, std), clip, clip_tokenizer

    return _load_once("vision", path, (str(vision_cfg.get("dtype")),), load)


def load_lm(lm_cfg: dict, pretrained_dir: Path | None):
    """(causal LM, its tokenizer) from the tiny folder or lm.path (optionally lm.gguf_file, lm.dtype)."""
    path = _folder(lm_cfg, pretrained_dir, "lm", "lm")
    if _is_tiny(lm_cfg):
        return _load_once("lm", path, ("tiny",), lambda: (load_pretrained_lm(path)[0], load_tokenizer(path)))
    return _load_once("lm", path, (lm_cfg.get("gguf_file"), str(lm_cfg.get("dtype"))),
                      lambda: load_pretrained_lm(path, gguf_file=lm_cfg.get("gguf_file"), dtype=lm_cfg.get("dtype")))


def load_text_models(vision_cfg: dict, lm_cfg: dict, pretrained_dir: Path | None):
    """(FrozenVisionEncoder, CLIPModel, LM, LM tokenizer). CLIPScore needs CLIP's own tokenizer:
    use `load_vision` for it (it is the same tokenizer in the tiny setting)."""
    encoder, clip, _ = load_vision(vision_cfg, pretrained_dir)
    lm, tokenizer = load_lm(lm_cfg, pretrained_dir)
    return encoder, clip, lm, tokenizer


def pretrain_for_dataset(config: dict, data_root: Path, split_path: Path, out: Path) -> None:
    """Tokenizer, tiny CLIP and tiny LM on the TRAINING split only (embedded default)."""
    data: MEData = read_dataset(data_root)
    split = read_split(split_path, data)
    set_determinism(config["split"]["seed"], config["train"]["num_threads"])
    size = image_size_for(config, None)
    samples = [data.by_id(i) for i in split["train"]]
    images = torch.stack([load_image(s.image_path, size) for s in samples])
    pretrain_text_models(images, [list(s.rationales) for s in samples], config["vision_encoder"], config["lm"],
                         image_size=size, seed=config["split"]["seed"], out_dir=out)
