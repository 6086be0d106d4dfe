"""The encoder-pretraining step: tokenizer + tiny CLIP + tiny LM, saved, reloadable, deterministic."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import CLIPModel, LlamaForCausalLM

from megl.errors import MEGLError
from megl.models.clip import FrozenVisionEncoder, clip_text_image_similarity
from megl.pretrain import load_text_models, load_vision, pretrain_text_models

torch.set_num_threads(1)

S = 32
COLOURS = {"red": (1.0, 0.1, 0.1), "green": (0.1, 1.0, 0.1), "blue": (0.1, 0.1, 1.0), "yellow": (1.0, 1.0, 0.1)}
VISION = {"kind": "tiny_clip", "path": None,
          "tiny": dict(hidden_size=32, num_layers=1, num_heads=2, patch_size=8, projection_dim=32,
                       epochs=6, batch_size=16, lr=3e-3)}
LM = {"kind": "tiny", "path": None,
      "tiny": dict(hidden_size=32, num_layers=1, num_heads=2, vocab_size=300, epochs=4, lr=3e-3)}


def synthetic(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    names = list(COLOURS)
    images, rationales = [], []
    for i in range(n):
        name = names[i % len(names)]
        base = torch.tensor(COLOURS[name]).view(3, 1, 1).expand(3, S, S)
        images.append((0.8 * base + 0.2 * torch.rand(3, S, S, generator=g)).clamp(0, 1))
        rationales.append([f"the image is {name} because every pixel looks {name}",
                           f"a {name} picture with {name} colour"])
    return torch.stack(images), rationales


def run(out_dir, seed=0):
    images, rationales = synthetic()
    pretrain_text_models(images, rationales, VISION, LM, S, seed, out_dir)
    return images, rationales


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    a = tmp_path_factory.mktemp("a") / "pretrained"
    b = tmp_path_factory.mktemp("b") / "pretrained"
    run(a)
    run(b)
    return a, b


def test_writes_loadable_folders(two_runs):
    out, _ = two_runs
    for sub in ("tokenizer", "clip", "lm"):
        assert (out / sub).is_dir()
    assert (out / "clip" / "model.safetensors").is_file() and (out / "lm" / "model.safetensors").is_file()
    assert not list(out.parent.glob(".pretrained.*"))  # temporary folder renamed away
    encoder, clip, lm, tokenizer = load_text_models(VISION, LM, out)
    assert isinstance(encoder, FrozenVisionEncoder) and isinstance(clip, CLIPModel)
    assert isinstance(lm, LlamaForCausalLM) and len(tokenizer) == lm.config.vocab_size
    assert encoder(torch.rand(2, 3, S, S)).shape == (2, (S // 8) ** 2, 32)
    # the same folders load through the "pretrained" (local path) route used at paper scale
    enc2, _, lm2, tok2 = load_text_models({"kind": "pretrained", "path": str(out / "clip")},
                                          {"kind": "pretrained", "path": str(out / "lm")}, None)
    assert torch.equal(enc2(torch.ones(1, 3, S, S)), encoder(torch.ones(1, 3, S, S)))
    assert tok2("the red image")["input_ids"] == tokenizer("the red image")["input_ids"]


def test_losses_decrease_and_clip_aligns(two_runs):
    out, _ = two_runs
    report = json.loads((out / "pretrain.json").read_text())
    assert len(report["clip_losses"]) == VISION["tiny"]["epochs"]
    assert len(report["lm_losses"]) == LM["tiny"]["epochs"]
    assert report["clip_losses"][-1] < report["clip_losses"][0]
    assert report["lm_losses"][-1] < 0.8 * report["lm_losses"][0]
    _, clip, clip_tok = load_vision(VISION, out)
    images, rationales = synthetic(8, seed=1)
    matched = clip_text_image_similarity(clip, clip_tok, images, [r[0] for r in rationales])
    shifted = clip_text_image_similarity(clip, clip_tok, images, [r[0] for r in rationales[1:] + rationales[:1]])
    assert matched.mean() > shifted.mean()


def test_deterministic(two_runs):
    a, b = two_runs
    for rel in ("clip/model.safetensors", "lm/model.safetensors", "tokenizer/tokenizer.json", "pretrain.json"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_bad_input(tmp_path):
    images, rationales = synthetic(8)
    with pytest.raises(MEGLError):
        pretrain_text_models(images, rationales[:5], VISION, LM, S, 0, tmp_path / "x")
    with pytest.raises(MEGLError):
        load_text_models(VISION, LM, None)
    assert not (tmp_path / "x").exists()
