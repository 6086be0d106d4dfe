"""CDEP baseline (Rieger et al., ICML 2020, "Interpretations are useful: penalizing explanations
to align neural networks with prior knowledge"; code github.com/laura-rieger/deep-explanation-penalization).

Contextual decomposition (CD) splits every activation h of the classifier into h = rel + irr,
where rel is the part due to the input pixels inside `relevant_mask` and irr the rest, so that
the logits split as z = rel_logits + irr_logits. CDEP penalises the importance of the region
OUTSIDE the human annotation: with that region as the relevant one,

    L = mean over annotated samples b and classes c of softmax([rel_bc, irr_bc])[0]

(the original averages over every class; `classes: target` keeps only the label's logit).

Rules per layer (docs/baselines.md has the full list):
- input normalisation (x - m)/s: rel = mask·(x - m)/s, irr = (1 - mask)·(x - m)/s, i.e. the
  shift is a bias split in proportion to the mask, as the original decomposes the normalised image;
- conv / linear / patch embedding / BN (eval: running stats; train: batch stats of rel+irr) /
  LayerNorm (statistics of rel+irr, each part centred by its own mean): the linear map applies
  to each part, the bias is split in proportion to |rel| and |irr| per element (the original's
  rule); where both are 0 it is split by the sample's share of |rel| (so an all-zeros or all-ones
  mask keeps rel ≡ 0 or irr ≡ 0 exactly);
- ReLU / GELU / Tanh: `cdep` rule rel' = f(rel), irr' = f(rel+irr) - f(rel) (the original's), or
  `shapley` rel' = ½[f(rel) - f(0) + f(rel+irr) - f(irr)], irr' = f(rel+irr) - rel';
- max pooling: both parts are read at the argmax of rel+irr; average pooling: linear;
- residual addition: parts add; attention: probabilities from rel+irr, values linear per part;
- class token and position embedding: biases; dropout: one mask shared by both parts.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from megl.baselines.common import check_inputs, param
from megl.errors import MEGLError
from megl.losses import saliency_target

NAME = "cdep"
NONLINEARITIES = ("cdep", "shapley")
CLASS_MODES = ("all", "target")
Pair = tuple[Tensor, Tensor]

# Written by hand: no maintained library implements contextual decomposition for torchvision
# ResNets and ViTs in batch (the authors' `cd.py` covers VGG-style nets, one image at a time).


# --------------------------------------------------------------------------------------------
# Propagation rules
# --------------------------------------------------------------------------------------------
def split_bias(rel: Tensor, irr: Tensor, bias: Tensor) -> Pair:
    """Add `bias` (broadcastable to rel) to the parts in proportion to |rel| and |irr|."""
    bias = bias.expand_as(rel)
    ar, ai = rel.abs(), irr.abs()
    tot = ar + ai
    dims = tuple(range(1, rel.dim()))
    sr, st = ar.sum(dims, keepdim=True), tot.sum(dims, keepdim=True)
    fallback = torch.where(st > 0, sr / torch.where(st > 0, st, torch.ones_like(st)), torch.full_like(st, 0.5))
    share = torch.where(tot > 0, ar / torch.where(tot > 0, tot, torch.ones_like(tot)), fallback)
    share = share.detach()  # see docs/baselines.md: bias shares are constants in the backward pass
    return rel + share * bias, irr + (1.0 - share) * bias


def _nonlinear(rel: Tensor, irr: Tensor, f: Callable[[Tensor], Tensor], rule: str) -> Pair:
    total = f(rel + irr)
    if rule == "cdep":
        r = f(rel)
    else:
        zero = f(torch.zeros_like(rel[..., :1]))
        r = 0.5 * ((f(rel) - zero) + (total - f(irr)))
        total = total - zero  # f(0) is 0 for ReLU/GELU/Tanh; keeps the parts exact otherwise
    return r, total - r


def _conv(p: Pair, conv: nn.Conv2d) -> Pair:
    if conv.padding_mode != "zeros":
        raise MEGLError(f"cd_forward: conv padding_mode {conv.padding_mode!r} unsupported (zeros only)")
    kw = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
    rel, irr = F.conv2d(p[0], conv.weight, None, **kw), F.conv2d(p[1], conv.weight, None, **kw)
    if conv.bias is None:
        return rel, irr
    return split_bias(rel, irr, conv.bias.view(1, -1, 1, 1))


def _linear(p: Pair, lin: nn.Linear) -> Pair:
    rel, irr = F.linear(p[0], lin.weight), F.linear(p[1], lin.weight)
    if lin.bias is None:
        return rel, irr
    return split_bias(rel, irr, lin.bias)


def _batchnorm(p: Pair, bn: nn.BatchNorm2d) -> Pair:
    """BN as an affine map: scale·x + shift, with the forward pass's statistics."""
    use_batch = bn.training or not bn.track_running_stats or bn.running_mean is None
    if use_batch:
        total = p[0] + p[1]
        mean = total.mean(dim=(0, 2, 3))
        var = total.var(dim=(0, 2, 3), unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    rel, irr = p[0] * scale.view(1, -1, 1, 1), p[1] * scale.view(1, -1, 1, 1)
    return split_bias(rel, irr, shift.view(1, -1, 1, 1))


def _layernorm(p: Pair, ln: nn.LayerNorm) -> Pair:
    """LayerNorm with the statistics of rel+irr; each part centred by its own mean (linear, exact)."""
    dims = tuple(range(-len(ln.normalized_shape), 0))
    total = p[0] + p[1]
    inv = torch.rsqrt(total.var(dim=dims, unbiased=False, keepdim=True) + ln.eps)
    rel = (p[0] - p[0].mean(dim=dims, keepdim=True)) * inv
    irr = (p[1] - p[1].mean(dim=dims, keepdim=True)) * inv
    if ln.weight is not None:
        rel, irr = rel * ln.weight, irr * ln.weight
    if ln.bias is None:
        return rel, irr
    return split_bias(rel, irr, ln.bias)


def _maxpool(p: Pair, pool: nn.MaxPool2d) -> Pair:
    """Read both parts at the positions max pooling picks from rel+irr."""
    _, idx = F.max_pool2d(
        p[0] + p[1], pool.kernel_size, pool.stride, pool.padding, pool.dilation,
        ceil_mode=pool.ceil_mode, return_indices=True,
    )
    flat_idx = idx.flatten(2)

    def take(t: Tensor) -> Tensor:
        return t.flatten(2).gather(2, flat_idx).view_as(idx).to(t.dtype)

    return take(p[0]), take(p[1])


def _dropout(p: Pair, prob: float, training: bool) -> Pair:
    if not training or prob <= 0.0:
        return p
    keep = (torch.rand_like(p[0]) >= prob).to(p[0].dtype) / (1.0 - prob)
    return p[0] * keep, p[1] * keep


def _pool_avg(p: Pair, module: nn.Module) -> Pair:
    return module(p[0]), module(p[1])


# --------------------------------------------------------------------------------------------
# ResNet (torchvision BasicBlock ResNet, as megl.models.backbones builds it)
# --------------------------------------------------------------------------------------------
def _stem_pool(p: Pair, module: nn.Module) -> Pair:
    if isinstance(module, nn.Identity):
        return p
    if isinstance(module, nn.MaxPool2d):
        return _maxpool(p, module)
    if isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return _pool_avg(p, module)
    raise MEGLError(f"cd_forward: unsupported pooling module {type(module).__name__}")


def _downsample(p: Pair, seq: nn.Module) -> Pair:
    for m in seq.children() if isinstance(seq, nn.Sequential) else [seq]:
        if isinstance(m, nn.Conv2d):
            p = _conv(p, m)
        elif isinstance(m, nn.BatchNorm2d):
            p = _batchnorm(p, m)
        else:
            raise MEGLError(f"cd_forward: unsupported downsample module {type(m).__name__}")
    return p


def _basic_block(p: Pair, blk: BasicBlock, rule: str) -> Pair:
    skip = p if blk.downsample is None else _downsample(p, blk.downsample)
    q = _nonlinear(*_batchnorm(_conv(p, blk.conv1), blk.bn1), F.relu, rule)
    q = _batchnorm(_conv(q, blk.conv2), blk.bn2)
    return _nonlinear(q[0] + skip[0], q[1] + skip[1], F.relu, rule)


def _cd_resnet_stage(net: nn.Module, p: Pair, k: int, rule: str) -> Pair:
    """Stage k of `Classifier._run_stages`: 0 the stem, 1-4 layer1-layer4."""
    if k == 0:
        p = _nonlinear(*_batchnorm(_conv(p, net.conv1), net.bn1), F.relu, rule)
        return _stem_pool(p, net.maxpool)
    for blk in getattr(net, f"layer{k}"):
        if not isinstance(blk, BasicBlock):
            raise MEGLError(f"cd_forward: only BasicBlock ResNets are supported, got {type(blk).__name__}")
        p = _basic_block(p, blk, rule)
    return p


def _cd_resnet_head(net: nn.Module, p: Pair, rule: str) -> Pair:
    p = _stem_pool(p, net.avgpool)
    return _linear((p[0].flatten(1), p[1].flatten(1)), net.fc)


# --------------------------------------------------------------------------------------------
# ViT (torchvision VisionTransformer)
# --------------------------------------------------------------------------------------------
def _attention(p: Pair, mha: nn.MultiheadAttention) -> Pair:
    """Self-attention: probabilities from rel+irr, values and output projection linear per part."""
    if not mha._qkv_same_embed_dim or not mha.batch_first:
        raise MEGLError("cd_forward: attention must have one in_proj and batch_first=True (torchvision ViT)")
    b, n, d = p[0].shape
    heads = mha.num_heads
    dh = d // heads
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3, dim=0)
    b_q, b_k, b_v = (mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None))
    total = p[0] + p[1]
    q = F.linear(total, w_q, b_q).view(b, n, heads, dh).transpose(1, 2)
    k = F.linear(total, w_k, b_k).view(b, n, heads, dh).transpose(1, 2)
    probs = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dh), dim=-1)  # (b, heads, n, n)
    if mha.training and mha.dropout > 0:
        probs = F.dropout(probs, mha.dropout, training=True)
    v_rel, v_irr = F.linear(p[0], w_v), F.linear(p[1], w_v)
    if b_v is not None:
        v_rel, v_irr = split_bias(v_rel, v_irr, b_v)

    def mix(v: Tensor) -> Tensor:
        return (probs @ v.view(b, n, heads, dh).transpose(1, 2)).transpose(1, 2).reshape(b, n, d)

    return _linear((mix(v_rel), mix(v_irr)), mha.out_proj)


def _mlp(p: Pair, mlp: nn.Module, rule: str) -> Pair:
    for m in mlp.children():
        if isinstance(m, nn.Linear):
            p = _linear(p, m)
        elif isinstance(m, (nn.GELU, nn.ReLU, nn.Tanh)):
            p = _nonlinear(p[0], p[1], m, rule)
        elif isinstance(m, nn.Dropout):
            p = _dropout(p, m.p, m.training)
        else:
            raise MEGLError(f"cd_forward: unsupported MLP module {type(m).__name__}")
    return p


def _cd_vit_stage(net: nn.Module, p: Pair, k: int, rule: str) -> Pair:
    """Stage k of `Classifier._run_stages`: 0 the embedding, k >= 1 encoder block k."""
    enc = net.encoder
    if k == 0:
        b = p[0].shape[0]
        p = _conv(p, net.conv_proj)  # patch embedding
        rel, irr = (t.flatten(2).transpose(1, 2) for t in p)  # (b, N, D), same as _process_input
        zeros = rel.new_zeros(b, 1, rel.shape[-1])
        rel, irr = torch.cat([zeros, rel], dim=1), torch.cat([zeros, irr], dim=1)
        const = enc.pos_embedding + torch.cat(
            [net.class_token, net.class_token.new_zeros(1, rel.shape[1] - 1, rel.shape[-1])], dim=1
        )
        p = split_bias(rel, irr, const)  # class token and position embedding are biases
        return _dropout(p, enc.dropout.p, enc.dropout.training)
    blk = enc.layers[k - 1]
    att = _attention(_layernorm(p, blk.ln_1), blk.self_attention)
    att = _dropout(att, blk.dropout.p, blk.dropout.training)
    p = (att[0] + p[0], att[1] + p[1])
    mlp = _mlp(_layernorm(p, blk.ln_2), blk.mlp, rule)
    return (mlp[0] + p[0], mlp[1] + p[1])


def _cd_vit_head(net: nn.Module, p: Pair, rule: str) -> Pair:
    p = _layernorm(p, net.encoder.ln)
    p = (p[0][:, 0], p[1][:, 0])
    for m in net.heads.children():
        if isinstance(m, nn.Linear):
            p = _linear(p, m)
        elif isinstance(m, nn.Tanh):
            p = _nonlinear(p[0], p[1], m, rule)
        else:
            raise MEGLError(f"cd_forward: unsupported head module {type(m).__name__}")
    return p


FAMILIES = {"resnet18": (_cd_resnet_stage, _cd_resnet_head), "vit_b_16": (_cd_vit_stage, _cd_vit_head)}


def _cd_stages(classifier: nn.Module, p: Pair, start: int, stop: int | None, rule: str) -> Pair:
    """CD through stages start..stop-1 (stop None: every stage, then the head) of a Classifier."""
    family = getattr(classifier, "family", None)
    if family not in FAMILIES:
        raise MEGLError(f"cd_forward: unsupported classifier family {family!r}")
    stage, head = FAMILIES[family]
    for k in range(start, classifier.max_frozen_stages() + 1 if stop is None else stop):
        p = stage(classifier.net, p, k, rule)
    return head(classifier.net, p, rule) if stop is None else p


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def cd_forward(classifier: nn.Module, images: Tensor, relevant_mask: Tensor, nonlinearity: str = "cdep",
               stop: int | None = None) -> Pair:
    """Contextual decomposition of the logits of a `megl.models.backbones.Classifier`.

    images (B, 3, H, W) in [0, 1]; relevant_mask (B, 1, S, S) in [0, 1] (resized to H×W by
    nearest neighbour when S ≠ H). Returns (rel_logits, irr_logits), each (B, K), whose sum is
    the classifier's logits; differentiable, batched; BN uses batch statistics in train mode.
    With `stop`, the decomposition of the output of the first `stop` stages instead.
    """
    if nonlinearity not in NONLINEARITIES:
        raise MEGLError(f"baselines.cdep.nonlinearity: {nonlinearity!r} not one of {', '.join(NONLINEARITIES)}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise MEGLError(f"cd_forward: images must be (B, 3, H, W), got {tuple(images.shape)}")
    if relevant_mask.dim() != 4 or relevant_mask.shape[1] != 1 or relevant_mask.shape[0] != images.shape[0]:
        raise MEGLError(f"cd_forward: relevant_mask must be (B, 1, S, S) for B={images.shape[0]}, "
                        f"got {tuple(relevant_mask.shape)}")
    mask = relevant_mask.to(images)
    if mask.shape[-2:] != images.shape[-2:]:
        mask = F.interpolate(mask, size=images.shape[-2:], mode="nearest")
    x = classifier.normalize(images)
    return _cd_stages(classifier, (mask * x, (1.0 - mask) * x), 0, stop, nonlinearity)


def cd_from_trunk(classifier: nn.Module, trunk_rel: Tensor, features: Tensor, nonlinearity: str = "cdep") -> Pair:
    """CD of the logits from the frozen trunk's output: `features` (its forward output, as cached)
    split as rel = `trunk_rel` (from `cd_forward(..., stop=classifier.frozen_stages)`) and
    irr = features - rel. Exact: the frozen stages are fixed and in eval mode, so their decomposition
    is a constant of the image and the mask; only the trainable stages run here, BN on the batch."""
    return _cd_stages(classifier, (trunk_rel, features - trunk_rel), classifier.frozen_stages, None, nonlinearity)


def cdep_loss(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    sal_scaled: Tensor,
    maps: Tensor,
    has_map: Tensor,
    cfg: dict[str, Any],
    state: nn.Module | None = None,
    features: Tensor | None = None,
    cd_trunk_rel: Tensor | None = None,
) -> Tensor:
    """CDEP penalty of the region outside the annotation; a graph-connected 0 when none is annotated.

    CD runs on the whole batch (so train-mode BN sees the forward pass's batch) and the penalty
    is averaged over the annotated samples only. With a frozen trunk, `features` (its output) and
    `cd_trunk_rel` (from `prepare`) let CD start at the trainable stages: same value, no pass of
    the trunk per step.
    """
    # Â is not used: CDEP decomposes the image. Shapes are checked against the images instead.
    has_map = check_inputs(images[:, 0], maps, has_map, NAME)
    rule = param(cfg, "nonlinearity", NAME)
    classes = param(cfg, "classes", NAME)
    if classes not in CLASS_MODES:
        raise MEGLError(f"baselines.{NAME}.classes: {classes!r} not one of {', '.join(CLASS_MODES)}")
    target_cfg = cfg.get("saliency_target")
    if not bool(has_map.any()):
        return _zero(model)
    if features is not None and cd_trunk_rel is not None and getattr(model, "frozen_stages", 0) > 0:
        rel, irr = cd_from_trunk(model, cd_trunk_rel.to(features), features, rule)
    else:
        rel, irr = cd_forward(model, images, _outside(maps, has_map, images.shape[-2:], target_cfg).to(images), rule)
    sel = has_map.to(rel.device)
    rel, irr = rel[sel], irr[sel]
    if classes == "target":
        idx = labels.to(rel.device)[sel].long().view(-1, 1)
        rel, irr = rel.gather(1, idx), irr.gather(1, idx)
    return torch.softmax(torch.stack([rel, irr], dim=-1), dim=-1)[..., 0].mean()


def _outside(maps: Tensor, has_map: Tensor, size: tuple[int, int], target_cfg: dict | None) -> Tensor:
    """(B, 1, H, W): 1 outside the shared target (`saliency_target` on the image's grid) of annotated
    samples, 0 elsewhere: any annotated pixel makes its image pixel "inside"."""
    inside = saliency_target(maps, size, target_cfg).float()[:, None]
    return torch.where(has_map.to(inside.device).view(-1, 1, 1, 1), 1.0 - inside, torch.zeros_like(inside))


TRUNK_CHUNK = 128  # images per trunk decomposition in `prepare` (fixed: results must not depend on it)


def prepare(classifier: nn.Module, split: Any, cfg: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
    """Once per training split: the relevant part of the frozen trunk's output for every sample
    (`cd_trunk_rel`; zeros where there is no map), so that `cdep_loss` decomposes only the trainable
    stages. {} when nothing is frozen or the split carries no trunk features."""
    if getattr(classifier, "frozen_stages", 0) == 0 or split.features is None:
        return {}
    rule, target_cfg = param(cfg, "nonlinearity", NAME), cfg.get("saliency_target")
    rel = torch.zeros_like(split.features)
    annotated = split.has_map.nonzero().flatten()
    with torch.no_grad():
        for start in range(0, len(annotated), TRUNK_CHUNK):
            idx = annotated[start:start + TRUNK_CHUNK]
            images = split.images[idx].to(device).float().div_(255.0)
            outside = _outside(split.maps[idx].to(device), torch.ones(len(idx), dtype=torch.bool, device=device),
                               images.shape[-2:], target_cfg)
            rel[idx] = cd_forward(classifier, images, outside, rule, stop=classifier.frozen_stages)[0].float().cpu()
    return {"cd_trunk_rel": rel}


def _zero(model: nn.Module) -> Tensor:
    """A 0 connected to the model's graph (backward() works on it like on a real penalty)."""
    return 0.0 * sum(p.sum() for p in model.parameters() if p.requires_grad)


def make_state(cfg: dict[str, Any], grid_hw: tuple[int, int]) -> None:
    """CDEP has no learnable parts."""
    return None


__all__ = ["cd_forward", "cd_from_trunk", "cdep_loss", "prepare", "split_bias", "make_state"]
