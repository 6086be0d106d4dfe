"""Closed-set scoring of the LM (SDTG.score_candidates): agreement with L_textual, a constructed LM
whose answer is known, sum vs length-normalised scores, chunking; fixed-length decoding."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math

import pytest
import torch
from tiny_sdtg import CLIP_CFG, FEAT_DIM, LM_CFG, LORA, P, S

from megl.errors import MEGLError
from megl.mllm_protocol import mllm_answer
from megl.models.clip import FrozenVisionEncoder, build_tiny_clip
from megl.models.lm import apply_lora, build_tiny_lm
from megl.models.sdtg import SDTG
from megl.models.tokenizer import train_tokenizer

torch.set_num_threads(1)

TEXTS = [
    "the red circle is round with no corners",
    "the blue square has four equal sides and four corners",
    "the green triangle has three corners",
    "the yellow star has five points",
    "the answer is in the picture because the object decides the class",
]
CLASSES = ["red_circle", "blue_square", "green_triangle", "yellow_star", "red_cross_with_a_long_name"]
CANDIDATES = [mllm_answer(c) for c in CLASSES]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS * 3, 300, None)


def make_mllm(tok, lora=None, seed=0, max_tokens=24, feature_dim=None):
    """SDTG as the MLLM baselines build it: frozen encoder on the whole image, V = W_A·CLIP(I)."""
    torch.manual_seed(seed)
    clip = build_tiny_clip(CLIP_CFG, S, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    lm = apply_lora(build_tiny_lm(LM_CFG, tok), lora)
    return SDTG(lm, tok, FrozenVisionEncoder(clip), feature_dim, P, "explain the class of the image.", max_tokens)


def images(n=4, seed=0):
    return torch.rand(n, 3, S, S, generator=torch.Generator().manual_seed(seed))


def loss_as_sum(model, image, saliency, tokens, text) -> float:
    """-L_textual × n_tokens for one sample and one target: the summed log-likelihood SDTG.loss implies."""
    n = len(model.target_ids([text])[0])
    with torch.no_grad():
        return -float(model.loss(image, saliency, tokens, [text])) * n


@pytest.mark.parametrize("lora", [None, LORA])
def test_score_equals_loss_nll(tok, lora):
    """sum log p(candidate) from score_candidates == -loss × n_tokens, for every sample and candidate,
    also for a target truncated at max_rationale_tokens (both go through the same layout helper)."""
    model = make_mllm(tok, lora=lora, max_tokens=8)
    long_text = "the answer is red cross with a long name because it has four arms and no corners at all"
    cands = CANDIDATES[:3] + [long_text]
    assert len(tok(" " + long_text, add_special_tokens=False)["input_ids"]) > 8  # really truncated
    x = images(3)
    total, mean = model.score_candidates(x, None, None, cands)
    assert total.shape == mean.shape == (3, len(cands)) and total.dtype == torch.float32
    for b in range(3):
        for k, text in enumerate(cands):
            assert float(total[b, k]) == pytest.approx(loss_as_sum(model, x[b:b + 1], None, None, text),
                                                       rel=1e-4, abs=1e-4)


def test_score_equals_loss_with_classifier_tokens_and_saliency(tok):
    """The MEGL path too (V = W_I·Z_I + W_A·CLIP(I ⊙ Â)): the scorer is not specific to the baselines."""
    model = make_mllm(tok, feature_dim=FEAT_DIM)
    g = torch.Generator().manual_seed(1)
    x, sal, z = images(2), torch.rand(2, 4, 4, generator=g), torch.randn(2, 16, FEAT_DIM, generator=g)
    total, _ = model.score_candidates(x, sal, z, CANDIDATES)
    for b in range(2):
        for k, text in enumerate(CANDIDATES):
            assert float(total[b, k]) == pytest.approx(
                loss_as_sum(model, x[b:b + 1], sal[b:b + 1], z[b:b + 1], text), rel=1e-4, abs=1e-4)


def test_eos_flag_and_mean_is_sum_over_tokens(tok):
    model = make_mllm(tok)
    x = images(2)
    with_eos, mean_eos = model.score_candidates(x, None, None, CANDIDATES, eos=True)
    without, mean_without = model.score_candidates(x, None, None, CANDIDATES, eos=False)
    lengths = torch.tensor([len(s) for s in model.target_ids(CANDIDATES, eos=False)], dtype=torch.float32)
    assert torch.allclose(mean_without, without / lengths)
    assert torch.allclose(mean_eos, with_eos / (lengths + 1))
    assert (with_eos < without).all()  # EOS adds one more (negative) log-probability


def test_chunking_does_not_change_scores_and_mode_is_restored(tok):
    model = make_mllm(tok, lora=LORA)
    model.train()
    x = images(3)
    one = model.score_candidates(x, None, None, CANDIDATES, max_sequences=1)
    two = model.score_candidates(x, None, None, CANDIDATES, max_sequences=7)  # chunks of 2 candidates
    all_ = model.score_candidates(x, None, None, CANDIDATES, max_sequences=1000)
    for a, b in ((one, all_), (two, all_)):
        assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)
    assert model.training and not all_[0].requires_grad
    with pytest.raises(MEGLError):
        model.score_candidates(x, None, None, [])


def test_uniform_lm_sum_prefers_short_answers_mean_does_not(tok):
    """An LM whose every next-token distribution is uniform (final norm zeroed → logits 0):
    log p = -log V per token, so the sum is -n_k·log V (the shortest candidate wins) while the
    length-normalised score is -log V for every candidate (no length preference)."""
    model = make_mllm(tok)
    with torch.no_grad():
        model.lm.model.norm.weight.zero_()
    total, mean = model.score_candidates(images(2), None, None, CANDIDATES)
    lengths = torch.tensor([len(s) for s in model.target_ids(CANDIDATES)], dtype=torch.float32)
    assert len(set(lengths.tolist())) > 1  # candidates of different token lengths
    log_v = math.log(len(tok))
    assert torch.allclose(total, -lengths * log_v, atol=1e-4)
    assert torch.allclose(mean, torch.full_like(mean, -log_v), atol=1e-4)
    assert (total.argmax(1) == int(lengths.argmin())).all()
    assert (total.argmin(1) == int(lengths.argmax())).all()


def test_lm_trained_on_one_answer_scores_it_first(tok):
    """Positive control: an LM fine-tuned (through SDTG.loss) to always write the long class's answer
    ranks that class first for every image, trained or unseen, by both the sum and the mean."""
    model = make_mllm(tok, lora=None)
    target = CANDIDATES.index(mllm_answer("red_cross_with_a_long_name"))
    lengths = [len(s) for s in model.target_ids(CANDIDATES)]
    assert lengths[target] == max(lengths)  # the longest candidate: a sum bias toward short ones cannot help it
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(40):
        loss = model.loss(images(4, seed=step), None, None, [CANDIDATES[target]] * 4)
        opt.zero_grad()
        loss.backward()
        opt.step()
    total, mean = model.score_candidates(images(6, seed=999), None, None, CANDIDATES)
    assert (total.argmax(1) == target).all(), total
    assert (mean.argmax(1) == target).all(), mean
    # the untrained model does not happen to prefer it
    fresh_total, _ = make_mllm(tok).score_candidates(images(6, seed=999), None, None, CANDIDATES)
    assert not (fresh_total.argmax(1) == target).all()


def test_answer_tokens_are_a_prefix_of_the_cot_target(tok):
    """Fine-Tune-CoT is scored on the answer without EOS: its tokens must open the training target."""
    model = make_mllm(tok)
    for name in CLASSES:
        answer = model.target_ids([mllm_answer(name)], eos=False)[0]
        cot = model.target_ids([f"{mllm_answer(name)} because it has corners"], eos=True)[0]
        assert cot[:len(answer)] == answer


def test_generate_fixed_length_runs_the_lm_once_per_new_token(tok):
    """min_new_tokens = max_new_tokens decodes exactly that many tokens; the LM runs once for the
    prefill and once per further token (what the MLLM latency times)."""
    from megl.predict import mllm_latency_fn

    model = make_mllm(tok, lora=LORA)
    base = next(m for m in model.lm.modules() if type(m).__name__ == "LlamaModel")
    calls = []
    handle = base.register_forward_hook(lambda mod, args, out: calls.append(1))
    try:
        mllm_latency_fn(model, images(1), 7)()
        assert len(calls) == 7
        calls.clear()
        out = model.generate(images(1), None, None, max_new_tokens=5, min_new_tokens=5)
        assert len(calls) == 5 and len(out) == 1
    finally:
        handle.remove()
