"""Offline byte-level BPE tokenizer trained on the training rationales (for the tiny CLIP and LM)."""
from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from megl.errors import MEGLError
from megl.io import atomic_dir

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS]  # ids 0..3; EOS is 3, not 2 (CLIP's text pooling treats id 2 as legacy)


def _build_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # add_special_tokens=True gives "<s> text </s>" (what CLIP's text tower expects); the LM code
    # tokenizes with add_special_tokens=False and places BOS/EOS itself.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        special_tokens=[(BOS, tok.token_to_id(BOS)), (EOS, tok.token_to_id(EOS))],
    )
    return tok


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: str | os.PathLike | None) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts`; save it to `out_dir` (atomically) unless None."""
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise MEGLError("train_tokenizer: no non-empty training texts (field 'exp')")
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise MEGLError(f"train_tokenizer: vocab_size {vocab_size} < 260 (byte alphabet + special tokens)")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=_build_tokenizer(texts, vocab_size),
        pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    if out_dir is not None:
        save_atomic(fast, out_dir)
    return fast


def save_atomic(obj, out_dir: str | os.PathLike) -> None:
    """`obj.save_pretrained` into a temporary sibling folder, then rename it onto `out_dir`."""
    with atomic_dir(out_dir) as tmp:
        obj.save_pretrained(tmp)


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local folder (never from a hub)."""
    path = Path(path)
    if not path.is_dir():
        raise MEGLError(f"tokenizer folder not found: {path}")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
