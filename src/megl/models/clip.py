"""CLIP: the frozen vision encoder of SDTG (Z_A = CLIP(I ⊙ Â)) and the CLIPScore model.

Tiny default: a small `transformers.CLIPModel` pretrained contrastively by the workflow on the
training (image, rationale) pairs. Paper scale: a local CLIP ViT-L/14 folder (`load_clip`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, CLIPConfig, CLIPModel, PreTrainedTokenizerBase

from megl.errors import MEGLError

# OpenAI CLIP normalisation (transformers.utils.constants.OPENAI_CLIP_MEAN/STD); used for the tiny CLIP too.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TEXT_MAX_POSITIONS = 64  # tiny CLIP text length; rationales are truncated to this many tokens


def build_tiny_clip(cfg_tiny: dict, image_size: int, vocab_size: int, pad_token_id: int,
                    bos_token_id: int, eos_token_id: int) -> CLIPModel:
    """A randomly initialised small CLIPModel (standard architecture) for `image_size` inputs."""
    h = int(cfg_tiny["hidden_size"])
    if image_size % int(cfg_tiny["patch_size"]):
        raise MEGLError(f"vision_encoder.tiny.patch_size {cfg_tiny['patch_size']} does not divide "
                        f"image_size {image_size}")
    common = dict(hidden_size=h, intermediate_size=4 * h, num_hidden_layers=int(cfg_tiny["num_layers"]),
                  num_attention_heads=int(cfg_tiny["num_heads"]))
    config = CLIPConfig(
        text_config=dict(common, vocab_size=vocab_size, max_position_embeddings=TEXT_MAX_POSITIONS,
                         pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id),
        vision_config=dict(common, image_size=image_size, patch_size=int(cfg_tiny["patch_size"])),
        projection_dim=int(cfg_tiny["projection_dim"]),
    )
    return CLIPModel(config)


def pixel_values(images: torch.Tensor, image_size: int, mean=CLIP_MEAN, std=CLIP_STD,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """Images B×3×H×W in [0, 1] → CLIP input: resized (bilinear) to image_size², normalised. Differentiable."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise MEGLError(f"CLIP input must be B×3×H×W, got shape {tuple(images.shape)}")
    if images.shape[-2:] != (image_size, image_size):
        down = images.shape[-1] > image_size
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                               align_corners=False, antialias=down)
    m = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    out = (images - m) / s
    return out if dtype is None else out.to(dtype)


def _pooled(out) -> torch.Tensor:
    # transformers 5 returns BaseModelOutputWithPooling from get_*_features; 4.x returned the tensor.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _tokenize(tokenizer: PreTrainedTokenizerBase, model: CLIPModel, texts: list[str], device) -> dict:
    max_len = int(model.config.text_config.max_position_embeddings)
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def _clip_batch_loss(model: CLIPModel, tokenizer, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
    enc = _tokenize(tokenizer, model, texts, images.device)
    pv = pixel_values(images, model.config.vision_config.image_size)
    return model(pixel_values=pv, return_loss=True, **enc).loss


def pretrain_tiny_clip(model: CLIPModel, tokenizer: PreTrainedTokenizerBase, images: torch.Tensor,
                       texts: list[str] | list[list[str]], cfg_tiny: dict, seed: int,
                       losses: list[float] | None = None) -> CLIPModel:
    """Contrastive pretraining (CLIP loss) for cfg_tiny['epochs'] epochs; one rationale per image
    (a list per image: one drawn per epoch with a seeded generator). Deterministic on CPU.
    Mean loss per epoch is appended to `losses` when given."""
    n = images.shape[0]
    if len(texts) != n:
        raise MEGLError(f"pretrain_tiny_clip: {n} images but {len(texts)} rationale entries")
    per_image = [[t] if isinstance(t, str) else [s for s in t if s.strip()] for t in texts]
    for i, t in enumerate(per_image):
        if not t:
            raise MEGLError(f"pretrain_tiny_clip: image index {i} has no rationale (field 'exp')")
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg_tiny["lr"]), weight_decay=0.01)
    bs = int(cfg_tiny["batch_size"])
    model.train()
    for _ in range(int(cfg_tiny["epochs"])):
        order = torch.randperm(n, generator=gen)
        picks = [int(torch.randint(len(t), (1,), generator=gen)) for t in per_image]
        total, count = 0.0, 0
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            if len(idx) < 2:  # a contrastive batch of one has no negatives
                continue
            batch_texts = [per_image[i][picks[i]] for i in idx.tolist()]
            loss = _clip_batch_loss(model, tokenizer, images[idx], batch_texts)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
        if losses is not None:
            losses.append(total / max(count, 1))
    model.eval()
    return model


def load_clip(path: str | os.PathLike, dtype: torch.dtype | None = None) -> tuple[CLIPModel, PreTrainedTokenizerBase]:
    """Load a CLIPModel and its tokenizer from a local folder (e.g. CLIP ViT-L/14); never downloads."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise MEGLError(f"CLIP folder {path} has no config.json (vision_encoder.path)")
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = CLIPModel.from_pretrained(str(path), local_files_only=True, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model.eval()
    return model, tokenizer


def image_norm_stats(path: str | os.PathLike | None) -> tuple[tuple, tuple]:
    """(mean, std) from a CLIP folder's preprocessor_config.json, else the OpenAI CLIP constants."""
    if path is not None:
        pre = Path(path) / "preprocessor_config.json"
        if pre.is_file():
            d = json.loads(pre.read_text(encoding="utf-8"))
            if "image_mean" in d and "image_std" in d:
                return tuple(d["image_mean"]), tuple(d["image_std"])
    return CLIP_MEAN, CLIP_STD


class FrozenVisionEncoder(nn.Module):
    """CLIP's vision tower, frozen and always in eval mode: images B×3×H×W in [0, 1] → patch tokens
    B×N×D (last_hidden_state without the CLS token). Gradients flow to the *input* when it requires
    grad (the saliency path of SDTG); the weights never receive gradients."""

    def __init__(self, clip: CLIPModel, mean=CLIP_MEAN, std=CLIP_STD):
        super().__init__()
        self.vision_model = clip.vision_model
        self.image_size = int(clip.config.vision_config.image_size)
        self.hidden_size = int(clip.config.vision_config.hidden_size)
        self.mean, self.std = tuple(mean), tuple(std)
        for p in self.vision_model.parameters():
            p.requires_grad_(False)
        self.vision_model.eval()

    def train(self, mode: bool = True):  # stays in eval mode whatever the parent does
        return super().train(False)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vision_model.parameters()).dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        dev = next(self.vision_model.parameters()).device
        pv = pixel_values(images.to(dev), self.image_size, self.mean, self.std, dtype=self.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and pv.requires_grad):
            out = self.vision_model(pixel_values=pv)
        return out.last_hidden_state[:, 1:, :]


@torch.no_grad()
def clip_image_embeddings(model: CLIPModel, images: torch.Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """CLIP's projected image embeddings, float32 B×projection_dim, exactly as `clip_text_image_similarity`
    computes them: a cell's seeds score the same test images, so a caller may compute these once per
    evaluation batch and pass them to `clip_text_image_similarity_from_embeddings` for every seed
    (bitwise the same similarities when computed on the same batch of images; tests/test_clipscore_embeddings.py)."""
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    pv = pixel_values(images.to(dev), model.config.vision_config.image_size, mean, std, dtype=dtype)
    return _pooled(model.get_image_features(pixel_values=pv)).float()


@torch.no_grad()
def clip_text_image_similarity_from_embeddings(model: CLIPModel, tokenizer: PreTrainedTokenizerBase,
                                               image_embeddings: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """`clip_text_image_similarity` with the images' `clip_image_embeddings` given: Tensor[B]."""
    if image_embeddings.shape[0] != len(texts):
        raise MEGLError(f"clip_text_image_similarity: {image_embeddings.shape[0]} images but {len(texts)} texts")
    dev = next(model.parameters()).device
    texts = [t if t.strip() else "." for t in texts]  # an empty generation still gets a score
    txt = _pooled(model.get_text_features(**_tokenize(tokenizer, model, texts, dev))).float()
    return F.cosine_similarity(image_embeddings.to(dev), txt, dim=-1)


@torch.no_grad()
def clip_text_image_similarity(model: CLIPModel, tokenizer: PreTrainedTokenizerBase, images: torch.Tensor,
                               texts: list[str], mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """Cosine similarity of CLIP's projected image and text embeddings, one per (image, text) pair: Tensor[B]."""
    if images.shape[0] != len(texts):
        raise MEGLError(f"clip_text_image_similarity: {images.shape[0]} images but {len(texts)} texts")
    return clip_text_image_similarity_from_embeddings(model, tokenizer, clip_image_embeddings(model, images, mean, std),
                                                      texts)
