"""CLIPScore with the test images' CLIP embeddings computed once per cell (megl.models.clip
`clip_image_embeddings` + `clip_text_image_similarity_from_embeddings`): bitwise the similarities of
`clip_text_image_similarity` for every seed's texts, and of the formula as it stood before the split."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from tiny_sdtg import CLIP_CFG, S

from megl.models.clip import (
    _pooled,
    _tokenize,
    build_tiny_clip,
    clip_image_embeddings,
    clip_text_image_similarity,
    clip_text_image_similarity_from_embeddings,
    pixel_values,
)
from megl.models.tokenizer import train_tokenizer

torch.set_num_threads(1)
SEED_TEXTS = [["the red circle is round", "", "a blue square with four corners", "green"],
              ["a red circle", "the triangle has three corners", "  ", "a yellow star with five points"],
              ["round red", "square blue", "triangle", "star yellow and a very long tail " * 8]]


def reference_similarity(model, tokenizer, images, texts):
    """clip_text_image_similarity as written before the split (images and texts in one function)."""
    pv = pixel_values(images, model.config.vision_config.image_size, dtype=next(model.parameters()).dtype)
    texts = [t if t.strip() else "." for t in texts]
    img = _pooled(model.get_image_features(pixel_values=pv)).float()
    txt = _pooled(model.get_text_features(**_tokenize(tokenizer, model, texts, images.device))).float()
    return F.cosine_similarity(img, txt, dim=-1)


def test_image_embeddings_once_give_every_seeds_similarities_bitwise():
    tok = train_tokenizer([t for texts in SEED_TEXTS for t in texts if t.strip()] * 3, 300, None)
    torch.manual_seed(0)
    model = build_tiny_clip(CLIP_CFG, S, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id).eval()
    batches = [torch.rand(4, 3, 48, 48, generator=torch.Generator().manual_seed(b)) for b in range(2)]  # resized to S
    once = [clip_image_embeddings(model, images) for images in batches]  # per evaluation batch, once per cell
    assert once[0].dtype == torch.float32 and once[0].shape == (4, CLIP_CFG["projection_dim"])
    seen = set()
    for texts in SEED_TEXTS:  # each seed's generated rationales
        for images, emb in zip(batches, once):
            with torch.no_grad():
                expected = reference_similarity(model, tok, images, texts)
            direct = clip_text_image_similarity(model, tok, images, texts)
            reused = clip_text_image_similarity_from_embeddings(model, tok, emb, texts)
            assert torch.equal(direct, expected)
            assert torch.equal(reused, expected)
            seen.add(tuple(reused.tolist()))
    assert len(seen) == len(SEED_TEXTS) * len(batches)  # the texts do change the scores
