"""The causal LM that writes rationales: a tiny Llama pretrained on the training rationales
(embedded default) or a local pretrained checkpoint (paper scale: Vicuna v1.5 from LLaVA-1.5-7B),
optionally wrapped with peft LoRA."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GgufConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from megl.errors import MEGLError

TINY_MAX_POSITIONS = 256


def build_tiny_lm(cfg_tiny: dict, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """A randomly initialised small Llama whose vocabulary is `tokenizer`'s."""
    h = int(cfg_tiny["hidden_size"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=h,
        intermediate_size=4 * h,
        num_hidden_layers=int(cfg_tiny["num_layers"]),
        num_attention_heads=int(cfg_tiny["num_heads"]),
        num_key_value_heads=int(cfg_tiny["num_heads"]),
        max_position_embeddings=TINY_MAX_POSITIONS,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_tokens: int) -> list[list[int]]:
    """BOS? + text tokens (truncated to max_tokens) + EOS, as id lists."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [bos + seq[:max_tokens] + [tokenizer.eos_token_id] for seq in ids]


def pretrain_tiny_lm(lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str],
                     cfg_tiny: dict, seed: int, losses: list[float] | None = None,
                     max_tokens: int = 64) -> PreTrainedModel:
    """Plain next-token training on `texts` for cfg_tiny['epochs'] epochs (AdamW, cfg_tiny['lr'],
    batch cfg_tiny.get('batch_size', 32)). Deterministic on CPU. Mean loss per epoch → `losses`."""
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise MEGLError("pretrain_tiny_lm: no non-empty training rationales (field 'exp')")
    seqs = encode_texts(tokenizer, texts, max_tokens)
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    opt = torch.optim.AdamW(lm.parameters(), lr=float(cfg_tiny["lr"]), weight_decay=0.01)
    bs = int(cfg_tiny.get("batch_size", 32))
    pad = tokenizer.pad_token_id
    lm.train()
    for _ in range(int(cfg_tiny["epochs"])):
        order = torch.randperm(len(seqs), generator=gen).tolist()
        total, count = 0.0, 0
        for start in range(0, len(seqs), bs):
            batch = [seqs[i] for i in order[start:start + bs]]
            width = max(len(s) for s in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, s in enumerate(batch):
                ids[r, :len(s)] = torch.tensor(s)
                mask[r, :len(s)] = 1
            labels = ids.masked_fill(mask == 0, -100)
            loss = lm(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
            count += len(batch)
        if losses is not None:
            losses.append(total / count)
    lm.eval()
    return lm


def load_pretrained_lm(path: str | os.PathLike, gguf_file: str | None = None,
                       dtype: torch.dtype | str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from a local folder (optionally a .gguf file in it, dequantised
    by transformers). Never downloads; never runs remote code. A missing pad token becomes EOS."""
    path = Path(path)
    if not path.is_dir():
        raise MEGLError(f"LM folder not found: {path} (lm.path)")
    if gguf_file is not None and not (path / gguf_file).is_file():
        raise MEGLError(f"GGUF file not found: {path / gguf_file} (lm.gguf_file)")
    kwargs: dict = {"local_files_only": True, "trust_remote_code": False}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if gguf_file is not None:
        # unpack GGUF blocks into plain dense weights: trainable (LoRA) and save_pretrained-able
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if tokenizer.eos_token_id is None:
        raise MEGLError(f"tokenizer in {path} has no EOS token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def apply_lora(lm: PreTrainedModel, lora_cfg: dict | None):
    """Wrap `lm` with peft LoRA (only adapter weights trainable); None → every LM weight trainable."""
    if lora_cfg is None:
        for p in lm.parameters():
            p.requires_grad_(True)
        return lm
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=int(lora_cfg["r"]),
        lora_alpha=int(lora_cfg["alpha"]),
        lora_dropout=float(lora_cfg.get("dropout", 0.0)),
        target_modules=list(lora_cfg["target_modules"]),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(lm, config)


def prepare_lm(lm: PreTrainedModel, lm_cfg: dict):
    """The LM as a run trains it: activation checkpointing when `lm.gradient_checkpointing` is on (each decoder
    layer keeps only its input and recomputes the rest in the backward; same loss and gradients), then LoRA
    (`lm.lora`). Checkpointing acts in training mode only; non-reentrant, so the LM's inputs need no grad."""
    if lm_cfg.get("gradient_checkpointing", False):
        kwargs = {"use_reentrant": False}
        if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5 (the old name is deprecated there)
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return apply_lora(lm, lm_cfg.get("lora"))
