"""SDTG on a tiny random CLIP + tiny Llama: L_textual, the saliency gradient path, decoding, LoRA."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from tiny_sdtg import CLIP_CFG, FEAT_DIM, LM_CFG, LORA, P, S

from megl.errors import MEGLError
from megl.models.clip import FrozenVisionEncoder, build_tiny_clip, clip_text_image_similarity
from megl.models.lm import apply_lora, build_tiny_lm
from megl.models.sdtg import SDTG, mask_image, resample_tokens, tokenizer_fingerprint
from megl.models.tokenizer import load_tokenizer, train_tokenizer

torch.set_num_threads(1)

TEXTS = [
    "the cat sits on the mat because it has fur and whiskers",
    "a dog runs in the park chasing a red ball",
    "the bird flies over the tall green tree",
    "a man rides a bicycle down the busy street",
    "the car is parked next to the house",
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS * 3, 300, None)


def make_sdtg(tok, with_encoder=True, lora=None, seed=0):
    torch.manual_seed(seed)
    enc = None
    if with_encoder:
        clip = build_tiny_clip(CLIP_CFG, S, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
        enc = FrozenVisionEncoder(clip)
    lm = apply_lora(build_tiny_lm(LM_CFG, tok), lora)
    return SDTG(lm, tok, enc, FEAT_DIM, P, "explain the class of the image.", 24)


def batch(seed=0, b=4):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, S, S, generator=g)
    saliency = torch.rand(b, 4, 4, generator=g)
    tokens = torch.randn(b, 16, FEAT_DIM, generator=g)  # a 4×4 classifier grid
    return images, saliency, tokens, TEXTS[:b]


def test_tokenizer_roundtrip_and_save(tok, tmp_path):
    ids = tok(" the cat runs", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == " the cat runs"
    with_special = tok("the cat")["input_ids"]
    assert with_special[0] == tok.bos_token_id and with_special[-1] == tok.eos_token_id
    train_tokenizer(TEXTS, 300, tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded("the dog")["input_ids"] == tok("the dog")["input_ids"]
    assert not list(tmp_path.glob(".tok.*"))  # no temporary folder left behind
    with pytest.raises(MEGLError):
        train_tokenizer(["", "  "], 300, None)


def test_loss_finite_and_decreases(tok):
    model = make_sdtg(tok)
    images, saliency, tokens, texts = batch()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(20):
        loss = model.loss(images, saliency, tokens, texts)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_gradient_reaches_saliency_not_encoder(tok):
    model = make_sdtg(tok)
    model.train()
    assert not model.vision_encoder.training  # frozen encoder stays in eval mode
    before = {n: p.detach().clone() for n, p in model.vision_encoder.named_parameters()}
    assert all(not p.requires_grad for p in model.vision_encoder.parameters())
    images, saliency, tokens, texts = batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # deliberately handed every parameter
    for _ in range(2):
        sal = saliency.clone().requires_grad_(True)
        loss = model.loss(images, sal, tokens, texts)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert sal.grad is not None and sal.grad.abs().sum() > 0
    for n, p in model.vision_encoder.named_parameters():
        assert p.grad is None, n
        assert torch.equal(p, before[n]), n
    # detached saliency (megl_no_text_supervision): the loss still trains, nothing reaches Â
    sal = saliency.clone().requires_grad_(True)
    model.loss(images, sal.detach(), tokens, texts).backward()
    assert sal.grad is None


def test_saliency_changes_loss_only_with_encoder(tok):
    images, saliency, tokens, texts = batch()
    other = torch.zeros_like(saliency)
    with_enc = make_sdtg(tok)
    assert with_enc.loss(images, saliency, tokens, texts).item() != with_enc.loss(images, other, tokens, texts).item()
    no_enc = make_sdtg(tok, with_encoder=False)  # megl_no_sdtg: V = W_I·Z_I
    a = no_enc.loss(images, saliency, tokens, texts)
    b = no_enc.loss(images, other, tokens, texts)
    assert torch.equal(a, b)
    sal = saliency.clone().requires_grad_(True)
    no_enc.loss(images, sal, tokens, texts).backward()
    assert sal.grad is None


def test_prefix_shapes(tok):
    model = make_sdtg(tok)
    images, saliency, tokens, _ = batch()
    hidden = model.lm.get_input_embeddings().embedding_dim
    assert model.prefix(images, saliency, tokens).shape == (4, P, hidden)
    assert model.prefix(images, None, tokens.transpose(1, 2).reshape(4, FEAT_DIM, 4, 4)).shape == (4, P, hidden)
    assert model.prefix(images, saliency, torch.randn(4, 17, FEAT_DIM)).shape == (4, P, hidden)  # CLS + grid
    assert model.prefix(images, None, None).shape == (4, P, hidden)  # text-only: whole image through CLIP
    assert model.prefix(torch.rand(4, 3, 48, 48), torch.rand(4, 6, 6), tokens).shape == (4, P, hidden)  # resized


def test_resample_tokens_pools_grid():
    grid = torch.arange(64.0).reshape(1, 8, 8)  # one channel on an 8×8 grid
    z = grid.reshape(1, 64, 1)
    out = resample_tokens(z, 4).reshape(2, 2)
    assert torch.allclose(out, torch.tensor([[grid[0, :4, :4].mean(), grid[0, :4, 4:].mean()],
                                             [grid[0, 4:, :4].mean(), grid[0, 4:, 4:].mean()]]))
    assert resample_tokens(torch.randn(2, 10, 3), 5).shape == (2, 5, 3)
    assert resample_tokens(torch.randn(2, 3), 4).shape == (2, 4, 3)


def test_mask_image_upsamples():
    images = torch.ones(2, 3, 8, 8)
    sal = torch.zeros(2, 2, 2)
    sal[:, 0, 0] = 1.0
    out = mask_image(images, sal)
    assert out.shape == images.shape and out[:, :, 0, 0].eq(1).all() and out[:, :, 7, 7].eq(0).all()


def test_generate_returns_one_string_per_sample(tok):
    model = make_sdtg(tok)
    images, saliency, tokens, texts = batch()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(30):
        loss = model.loss(images[:1], saliency[:1], tokens[:1], texts[:1])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.train()
    out = model.generate(images, saliency, tokens, max_new_tokens=40)
    assert len(out) == 4 and all(isinstance(s, str) for s in out)
    assert model.training  # mode restored
    # greedy decoding reproduces the memorised target (truncated to max_rationale_tokens)
    target_ids = tok(" " + texts[0], add_special_tokens=False)["input_ids"][:model.max_rationale_tokens]
    assert out[0] == tok.decode(target_ids).strip()
    assert len(model.generate(images, saliency, tokens, max_new_tokens=5, num_beams=2)) == 4
    # text-only variant with an arbitrary target string
    loss = model.loss(images, None, None, ["answer: cat because it has fur"] * 4)
    assert torch.isfinite(loss)
    assert len(model.generate(images, None, None, max_new_tokens=5)) == 4


def test_lora_only_adapters_and_projections_trainable(tok):
    model = make_sdtg(tok, lora=LORA)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith(("proj_image.", "proj_saliency.")) for n in trainable)
    assert any("lora_" in n for n in trainable)
    assert {"proj_image.weight", "proj_saliency.weight"} <= set(trainable)
    assert set(model.trainable_state_dict()) == set(trainable)
    images, saliency, tokens, texts = batch()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first = None
    for _ in range(10):
        loss = model.loss(images, saliency, tokens, texts)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_full_finetune_without_lora(tok):
    model = make_sdtg(tok, lora=None)
    lm_params = list(model.lm.parameters())
    assert all(p.requires_grad for p in lm_params)


def test_clip_similarity(tok):
    torch.manual_seed(0)
    clip = build_tiny_clip(CLIP_CFG, S, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    images, _, _, texts = batch()
    sim = clip_text_image_similarity(clip, tok, images, texts[:3] + [""])
    assert sim.shape == (4,) and torch.all(sim.abs() <= 1.0 + 1e-5)


def test_errors(tok):
    with pytest.raises(MEGLError):
        SDTG(build_tiny_lm(LM_CFG, tok), tok, None, None, P, "x", 8)
    model = make_sdtg(tok, with_encoder=False)
    images, saliency, tokens, texts = batch()
    with pytest.raises(MEGLError):
        model.loss(images, saliency, tokens, texts[:2])
    with pytest.raises(MEGLError):
        model.prefix(images, None, None)


def test_target_ids_memo_equals_the_tokenizer_and_is_shared_by_equal_tokenizers(tok, tmp_path):
    """target_ids memoises token ids (megl.models.sdtg._TARGET_CACHE): the cached ids must be what
    the tokenizer gives, for new and repeated texts, truncated or not, with and without EOS."""
    def direct(model, texts, eos=True):
        ids = tok([" " + t.strip() for t in texts], add_special_tokens=False)["input_ids"]
        return [s[:model.max_rationale_tokens] + ([tok.eos_token_id] if eos else []) for s in ids]

    a = make_sdtg(tok)
    texts = [TEXTS[0], "  " + TEXTS[0] + " ", TEXTS[1], TEXTS[0], " ".join(TEXTS)]  # repeats; one > 24 tokens
    for round_ in range(2):  # first call fills the memo, the second reads it
        assert a.target_ids(texts) == direct(a, texts), round_
        assert a.target_ids(texts, eos=False) == direct(a, texts, eos=False), round_
    assert len(direct(a, [" ".join(TEXTS)], eos=False)[0]) == 24

    # a second SDTG on the same tokenizer, saved and loaded again, reads the same memo
    tok.save_pretrained(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    tok([TEXTS[0]], truncation=True, max_length=4)  # truncation state is not part of the fingerprint
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tok)
    b = SDTG(build_tiny_lm(LM_CFG, again), again, None, FEAT_DIM, P, "x", 24)
    assert b._target_cache_of() is a._target_cache_of()
    assert b.target_ids([TEXTS[2]]) == direct(b, [TEXTS[2]])

    # a different tokenizer has its own memo and its own ids
    other = train_tokenizer(["zebras and quokkas eat leaves"] * 5, 280, None)
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tok)
    c = SDTG(build_tiny_lm(LM_CFG, other), other, None, FEAT_DIM, P, "x", 24)
    assert c._target_cache_of() is not a._target_cache_of()
    want = other([" " + TEXTS[0]], add_special_tokens=False)["input_ids"][0][:24] + [other.eos_token_id]
    assert c.target_ids([TEXTS[0]]) == [want] != a.target_ids([TEXTS[0]])


def test_sequence_layout_pads_right_and_labels_only_targets(tok):
    model = make_sdtg(tok, with_encoder=False)
    context = torch.zeros(3, 5, model.lm.get_input_embeddings().embedding_dim)
    ids = [[7, 8, 9], [10], [11, 12]]
    embeds, attention, labels = model._sequence(context, ids)
    pad = tok.pad_token_id
    assert embeds.shape[:2] == (3, 8)
    assert attention.tolist() == [[1] * 5 + [1, 1, 1], [1] * 5 + [1, 0, 0], [1] * 5 + [1, 1, 0]]
    assert labels.tolist() == [[-100] * 5 + [7, 8, 9], [-100] * 5 + [10, -100, -100], [-100] * 5 + [11, 12, -100]]
    emb = model.lm.get_input_embeddings()
    assert torch.equal(embeds[1, 6], emb(torch.tensor(pad)))
