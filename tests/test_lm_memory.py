"""Memory options of the LM's training path (`lm.gradient_checkpointing`): same loss and gradients, fewer
saved activations."""
from __future__ import annotations

import copy

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from megl.models.lm import prepare_lm
from megl.plan import saved_bytes

LORA = {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                 "gate_proj", "up_proj", "down_proj"]}


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64))


def loss_and_grads(lm, embeds, labels):
    lm.train()
    torch.manual_seed(1)  # LoRA dropout masks
    out = {}

    def run():
        out["loss"] = lm(inputs_embeds=embeds, labels=labels, use_cache=False).loss

    out["saved"] = saved_bytes(run)
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in lm.named_parameters() if p.requires_grad}
    return out["loss"].item(), grads, out["saved"]


def test_gradient_checkpointing_gives_the_same_loss_and_gradients_with_fewer_saved_tensors():
    base = tiny_llama()
    plain = prepare_lm(copy.deepcopy(base), {"lora": LORA})
    ckpt = prepare_lm(copy.deepcopy(base), {"lora": LORA, "gradient_checkpointing": True})
    assert ckpt.get_base_model().model.gradient_checkpointing
    assert not plain.get_base_model().model.gradient_checkpointing
    for a, b in zip(plain.parameters(), ckpt.parameters()):  # the same LoRA initialisation in both
        with torch.no_grad():
            b.copy_(a)
    g = torch.Generator().manual_seed(2)
    embeds = torch.randn(3, 10, 32, generator=g)
    labels = torch.randint(0, 64, (3, 10), generator=g)
    loss_p, grads_p, saved_p = loss_and_grads(plain, embeds, labels)
    loss_c, grads_c, saved_c = loss_and_grads(ckpt, embeds, labels)
    assert loss_c == loss_p
    assert grads_p.keys() == grads_c.keys() and len(grads_p) == 3 * 7 * 2  # lora_A and lora_B per adapted module
    for name in grads_p:
        torch.testing.assert_close(grads_c[name], grads_p[name], rtol=1e-5, atol=1e-7)
    assert saved_c < saved_p / 2
