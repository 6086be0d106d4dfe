"""SDTG — Saliency-Driven Textual Grounding (MEGL paper §3.3).

V = W_I·Z_I + W_A·Z_A with Z_I the classifier's feature tokens and Z_A = CLIP(I ⊙ Â) (frozen
encoder); V is the LM's visual prefix, followed by a text prompt and the target text.
L_textual = autoregressive NLL of the target tokens only. Choices where the paper is silent
(token matching, normalisation, sequence layout) are in docs/sdtg.md.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, PreTrainedTokenizerBase

from megl.errors import MEGLError
from megl.models.clip import FrozenVisionEncoder

IGNORE = -100
# MLLM training reuses each training image's Z_A = CLIP(I) (`start_image_token_cache`); False: the
# reference path, the frozen encoder on every step (tests compare the two bitwise).
IMAGE_TOKEN_CACHE = True
log = logging.getLogger(__name__)
# Token ids of target texts, per tokenizer (content fingerprint) and text: a cell's runs tokenise the
# same training rationales every step; a fresh tokenizer call per step costs more than the LM's
# embedding lookup. Bounded: cleared when it grows past _TARGET_CACHE_MAX texts.
_TARGET_CACHE: dict[tuple, dict[str, list[int]]] = {}
_TARGET_CACHE_MAX = 200_000


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> tuple | None:
    """What decides `tokenizer(texts, add_special_tokens=False)`'s ids: the class and the fast
    tokenizer's pipeline (normaliser, pre-tokenizer, model, added tokens; not its truncation or
    padding, which that call switches off). None for a tokenizer without a Rust backend."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    spec.pop("truncation", None)
    spec.pop("padding", None)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()
    return (type(tokenizer).__module__, type(tokenizer).__qualname__,
            bool(getattr(tokenizer, "split_special_tokens", False)), digest)


def resample_tokens(z: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Adaptive average pooling of a token set to `n_tokens` tokens: B×N×D → B×n_tokens×D.

    B×C×h×w feature maps and square token counts (N = s², patch grids without CLS) are pooled
    on the 2-D grid when n_tokens is a square too; other sequences are pooled in 1-D order.
    A B×D vector counts as one token (pooling then repeats it).
    """
    if z.ndim == 2:
        z = z[:, None, :]
    if z.ndim == 4:
        z = z.flatten(2).transpose(1, 2)
    if z.ndim != 3:
        raise MEGLError(f"SDTG tokens must be B×N×D, B×C×h×w or B×D; got shape {tuple(z.shape)}")
    b, n, d = z.shape
    side, out_side = math.isqrt(n), math.isqrt(n_tokens)
    if side * side == n and out_side * out_side == n_tokens and n > 1:
        grid = z.transpose(1, 2).reshape(b, d, side, side)
        return F.adaptive_avg_pool2d(grid, out_side).flatten(2).transpose(1, 2)
    return F.adaptive_avg_pool1d(z.transpose(1, 2), n_tokens).transpose(1, 2)


def mask_image(images: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
    """I ⊙ Â: saliency B×h×w (or B×1×h×w) in [0, 1], bilinearly upsampled to the image size."""
    if saliency.ndim == 3:
        saliency = saliency[:, None]
    if saliency.ndim != 4 or saliency.shape[1] != 1 or saliency.shape[0] != images.shape[0]:
        raise MEGLError(f"saliency must be B×h×w matching images {tuple(images.shape)}; got {tuple(saliency.shape)}")
    sal = F.interpolate(saliency.to(images.dtype), size=images.shape[-2:], mode="bilinear", align_corners=False)
    return images * sal


class SDTG(nn.Module):
    """Visual prefix (W_I·Z_I + W_A·Z_A) + prompt → causal LM; `loss` is L_textual, `generate` decodes.

    vision_encoder None: the `megl_no_sdtg` ablation (V = W_I·Z_I). saliency None: no Z_A term,
    except when tokens is None too (text-only / multimodal-LLM baselines): then the encoder sees
    the whole image, V = W_A·CLIP(I). feature_dim None: no W_I projection (encoder-only use).
    """

    def __init__(self, lm: nn.Module, tokenizer: PreTrainedTokenizerBase,
                 vision_encoder: FrozenVisionEncoder | None, feature_dim: int | None,
                 prefix_tokens: int, prompt: str, max_rationale_tokens: int):
        super().__init__()
        if prefix_tokens < 1 or max_rationale_tokens < 1:
            raise MEGLError("sdtg.prefix_tokens and sdtg.max_rationale_tokens must be >= 1")
        if vision_encoder is None and not feature_dim:
            raise MEGLError("SDTG needs a vision encoder or classifier features (feature_dim)")
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise MEGLError("SDTG: the tokenizer needs EOS and pad tokens")
        self.lm = lm
        self.tokenizer = tokenizer
        self.vision_encoder = vision_encoder
        self.prefix_tokens = int(prefix_tokens)
        self.prompt = prompt
        self.max_rationale_tokens = int(max_rationale_tokens)
        hidden = self.lm.get_input_embeddings().embedding_dim
        self.proj_image = nn.Linear(int(feature_dim), hidden) if feature_dim else None  # W_I
        self.proj_saliency = (nn.Linear(vision_encoder.hidden_size, hidden)  # W_A
                              if vision_encoder is not None else None)
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        self.register_buffer("bos_ids", torch.tensor(bos, dtype=torch.long), persistent=False)
        self.register_buffer("prompt_ids", torch.tensor(prompt_ids, dtype=torch.long), persistent=False)
        self._target_cache: dict[str, list[int]] | None = None  # text -> untruncated ids; see _target_cache_of
        self._image_tokens: dict | None = None  # see start_image_token_cache

    # ------------------------------------------------------------------ prefix
    def prefix(self, images: torch.Tensor | None, saliency: torch.Tensor | None,
               tokens: torch.Tensor | None, image_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The visual prefix V: Tensor[B, prefix_tokens, LM hidden size] in the LM's embedding dtype.
        `image_ids`: the images' indices in the training split, for the image-token cache (MLLM path only)."""
        parts = []
        if tokens is not None:
            if self.proj_image is None:
                raise MEGLError("SDTG built without feature_dim got classifier tokens")
            z_i = resample_tokens(tokens.float(), self.prefix_tokens)
            parts.append(self.proj_image(F.layer_norm(z_i, z_i.shape[-1:])))
        use_encoder = self.vision_encoder is not None and (saliency is not None or tokens is None)
        if use_encoder:
            if images is None:
                raise MEGLError("SDTG: images are required for the vision-encoder term")
            if saliency is None and tokens is None:  # V = W_A·CLIP(I): frozen per image, cacheable
                z_a = self._whole_image_tokens(images, image_ids)
            else:  # MEGL's CLIP(I ⊙ Â): the saliency changes every step, never cached
                x = images.float() if saliency is None else mask_image(images.float(), saliency.float())
                z_a = resample_tokens(self.vision_encoder(x).float(), self.prefix_tokens)
            parts.append(self.proj_saliency(F.layer_norm(z_a, z_a.shape[-1:])))
        if not parts:
            raise MEGLError("SDTG: nothing to condition on (no classifier tokens and no vision encoder)")
        v = parts[0] if len(parts) == 1 else parts[0] + parts[1]
        return v.to(self.lm.get_input_embeddings().weight.dtype)

    # ------------------------------------------------------------------ image-token cache (MLLM training)
    def start_image_token_cache(self, n_images: int) -> None:
        """From now on, `loss(images, None, None, texts, image_ids)` keeps each training image's
        Z_A = resample(CLIP(I)) the first time a step computes it and reuses it in later steps instead
        of running the frozen encoder again (the MLLM baselines: whole image, encoder in eval mode
        without dropout, no augmentation in training, so Z_A is a function of the image alone).

        Exactness: rows are reused only in batches of the size they were computed in (same shapes,
        same kernels), under the step's own autocast; and the first fully cached batch of each size
        is computed anyway and compared: unequal (a device whose kernels make a row depend on the
        rest of its batch), the cache switches itself off for the run, with a warning.
        `image_ids`: indices in [0, n_images) of the training split."""
        self._image_tokens = {"n": int(n_images), "rows": {}, "probed": set(), "on": IMAGE_TOKEN_CACHE,
                              "computed": 0, "reused": 0}

    def stop_image_token_cache(self) -> dict | None:
        """Drop the cache (end of training); returns its counts (images computed, reused) or None."""
        cache, self._image_tokens = self._image_tokens, None
        return None if cache is None else {k: cache[k] for k in ("computed", "reused", "on")}

    def _whole_image_tokens(self, images: torch.Tensor, image_ids: torch.Tensor | None) -> torch.Tensor:
        def compute() -> torch.Tensor:
            return resample_tokens(self.vision_encoder(images.float()).float(), self.prefix_tokens)

        cache = self._image_tokens
        if cache is None or image_ids is None or not cache["on"] or torch.is_grad_enabled() and images.requires_grad:
            return compute()
        b = images.shape[0]
        entry = cache["rows"].get(b)
        if entry is not None:
            rows, filled = entry
            ids = image_ids.to(rows.device)
            if bool(filled[ids].all()):
                hit = rows[ids]
                if b in cache["probed"]:
                    cache["reused"] += b
                    return hit
                z = compute()
                cache["probed"].add(b)
                if torch.equal(z, hit):
                    cache["reused"] += b
                    return hit
                cache["on"] = False
                log.warning("SDTG image-token cache off for this run: the encoder's output for an image depends on "
                            "its batch on this device (max |diff| %.3g)", (z - hit).abs().max().item())
                return z
        z = compute()
        cache["computed"] += b
        if entry is None:
            entry = cache["rows"][b] = (torch.empty((cache["n"], *z.shape[1:]), dtype=z.dtype, device=z.device),
                                        torch.zeros(cache["n"], dtype=torch.bool, device=z.device))
        ids = image_ids.to(z.device)
        entry[0][ids] = z.detach()
        entry[1][ids] = True
        return z

    def _context(self, v: torch.Tensor) -> torch.Tensor:
        """[BOS] V [prompt] as embeddings: B×L0×H."""
        emb = self.lm.get_input_embeddings()
        b = v.shape[0]
        pieces = []
        if self.bos_ids.numel():
            pieces.append(emb(self.bos_ids.to(v.device)).expand(b, -1, -1))
        pieces.append(v)
        if self.prompt_ids.numel():
            pieces.append(emb(self.prompt_ids.to(v.device)).expand(b, -1, -1))
        return torch.cat(pieces, dim=1)

    # ------------------------------------------------------------------ sequence layout
    def target_ids(self, texts: list[str], eos: bool = True) -> list[list[int]]:
        """Token ids of each target text as the LM reads it after the prompt: ' ' + text (stripped),
        truncated to max_rationale_tokens, then EOS (unless eos=False)."""
        cache = self._target_cache_of()
        keys = [" " + t.strip() for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in cache))
        if missing:
            if len(cache) + len(missing) > _TARGET_CACHE_MAX:
                cache.clear()
            cache.update(zip(missing, self.tokenizer(missing, add_special_tokens=False)["input_ids"]))
        tail = [self.tokenizer.eos_token_id] if eos else []
        return [cache[k][:self.max_rationale_tokens] + tail for k in keys]

    def _target_cache_of(self) -> dict[str, list[int]]:
        """The memo of `target_ids`: shared by every SDTG whose tokenizer has the same fingerprint
        (a cell's runs load the same tokenizer folder), private to this SDTG otherwise."""
        if self._target_cache is None:
            key = tokenizer_fingerprint(self.tokenizer)
            self._target_cache = {} if key is None else _TARGET_CACHE.setdefault(key, {})
        return self._target_cache

    def _sequence(self, context: torch.Tensor, ids: list[list[int]]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The one layout of training and scoring: row r = context[r] then ids[r], right-padded.

        Returns (inputs_embeds B×(L0+W)×H, attention_mask B×(L0+W), labels B×(L0+W)); labels are the
        target ids and -100 on the context and on padding (HF causal-LM convention: position t's
        logits predict labels[t + 1])."""
        b, l0, _ = context.shape
        if b != len(ids):
            raise MEGLError(f"SDTG: batch of {b} but {len(ids)} target texts")
        width = max(len(s) for s in ids)
        pad = self.tokenizer.pad_token_id
        target = torch.tensor([s + [pad] * (width - len(s)) for s in ids], dtype=torch.long, device=context.device)
        tmask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids], dtype=torch.long,
                             device=context.device)
        embeds = torch.cat([context, self.lm.get_input_embeddings()(target)], dim=1)
        attention = torch.cat([torch.ones((b, l0), dtype=torch.long, device=context.device), tmask], dim=1)
        labels = torch.cat([torch.full((b, l0), IGNORE, dtype=torch.long, device=context.device),
                            target.masked_fill(tmask == 0, IGNORE)], dim=1)
        return embeds, attention, labels

    # ------------------------------------------------------------------ training
    def loss(self, images: torch.Tensor | None, saliency: torch.Tensor | None, tokens: torch.Tensor | None,
             rationales: list[str], image_ids: torch.Tensor | None = None) -> torch.Tensor:
        """L_textual: mean NLL over the target tokens (' ' + text, truncated, + EOS) of the batch.
        `image_ids`: the images' indices in the training split (read by the image-token cache)."""
        v = self.prefix(images, saliency, tokens, image_ids)
        if v.shape[0] != len(rationales):
            raise MEGLError(f"SDTG.loss: batch of {v.shape[0]} but {len(rationales)} target texts")
        embeds, attention, labels = self._sequence(self._context(v), self.target_ids(rationales))
        # use_cache=False: a training forward has no later step to read a KV cache (same logits)
        return self.lm(inputs_embeds=embeds, attention_mask=attention, labels=labels, use_cache=False).loss

    # ------------------------------------------------------------------ closed-set scoring
    @torch.no_grad()
    def score_candidates(self, images: torch.Tensor | None, saliency: torch.Tensor | None,
                         tokens: torch.Tensor | None, candidates: list[str], eos: bool = True,
                         max_sequences: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-likelihood of each candidate text given each sample's context (docs/sdtg.md).

        Same layout as `loss` ([BOS] V prompt ' '+candidate [EOS]); returns (sum, mean), both
        B×K float32 on the prefix's device: the sum of the candidate's token log-probs (EOS
        included when eos=True) and that sum divided by its token count (length-normalised).
        V is computed once per sample; the LM runs on at most `max_sequences` (sample, candidate)
        rows at a time, and only the target positions' logits are kept.
        """
        if not candidates:
            raise MEGLError("SDTG.score_candidates: no candidates")
        was_training = self.training
        self.eval()
        try:
            context = self._context(self.prefix(images, saliency, tokens))
            b, l0, _ = context.shape
            ids = self.target_ids(candidates, eos=eos)
            if any(not s for s in ids):
                raise MEGLError("SDTG.score_candidates: a candidate has no tokens (empty text and eos=False)")
            k = len(ids)
            chunk = max(1, int(max_sequences) // b)
            total = torch.empty((b, k), dtype=torch.float32, device=context.device)
            for start in range(0, k, chunk):
                sub = ids[start:start + chunk]
                kk = len(sub)
                # row r: sample r // kk, candidate start + r % kk
                embeds, attention, labels = self._sequence(context.repeat_interleave(kk, dim=0), sub * b)
                width = labels.shape[1] - l0
                logits = self._logits(embeds, attention, keep=width + 1)[:, :-1].float()  # predict targets
                target = labels[:, l0:]
                logp = logits.log_softmax(-1).gather(-1, target.clamp_min(0)[..., None])[..., 0]
                total[:, start:start + kk] = logp.masked_fill(target == IGNORE, 0.0).sum(1).view(b, kk)
        finally:
            self.train(was_training)
        lengths = torch.tensor([len(s) for s in ids], dtype=torch.float32, device=total.device)
        return total, total / lengths

    def _logits(self, embeds: torch.Tensor, attention: torch.Tensor, keep: int) -> torch.Tensor:
        """The LM's logits at the last `keep` positions (HF `logits_to_keep` where the LM accepts it)."""
        try:
            logits = self.lm(inputs_embeds=embeds, attention_mask=attention, logits_to_keep=keep,
                             use_cache=False).logits
        except TypeError:  # an LM whose forward has no logits_to_keep: compute all, keep the tail
            logits = self.lm(inputs_embeds=embeds, attention_mask=attention, use_cache=False).logits
        return logits[:, -keep:]

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def generate(self, images: torch.Tensor | None, saliency: torch.Tensor | None, tokens: torch.Tensor | None,
                 max_new_tokens: int, num_beams: int = 1, min_new_tokens: int = 0) -> list[str]:
        """Decode one text per sample (greedy, or beam search with num_beams > 1; no sampling).
        min_new_tokens = max_new_tokens forces a fixed decode length (EOS suppressed until then)."""
        was_training = self.training
        self.eval()
        try:
            context = self._context(self.prefix(images, saliency, tokens))
            b, l0, _ = context.shape
            config = GenerationConfig(
                max_new_tokens=int(max_new_tokens), min_new_tokens=int(min_new_tokens) or None,
                num_beams=int(num_beams), do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
                bos_token_id=self.tokenizer.bos_token_id,
            )
            attention = torch.ones((b, l0), dtype=torch.long, device=context.device)
            # decoder-only generate() with inputs_embeds only returns just the new tokens
            out = self.lm.generate(inputs_embeds=context, attention_mask=attention, generation_config=config)
        finally:
            self.train(was_training)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trainable tensors (projections, LoRA or LM weights): what a checkpoint must keep."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
