"""MEGL's classification and visual-explanation losses (paper §3): L_pred, L_visual, L_dc."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from megl.errors import MEGLError

KL_EPS = 1e-6  # smoothing added to every cell before normalising a map to a distribution


def prediction_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """L_pred: cross-entropy between logits (B, K) and class labels (B,)."""
    return F.cross_entropy(logits, labels.long())


def downsample_map(maps: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Resize maps (B, 1, S, S), (B, S, S) or (S, S) to `size` = (h, w), keeping the leading shape
    without the channel: returns (B, h, w) or (h, w).

    Shrinking uses area averaging (adaptive average pooling: each cell is the mean of the pixels it
    covers, so values stay in the input's range); growing uses bilinear interpolation.
    """
    h, w = int(size[0]), int(size[1])
    if maps.dim() == 2:
        return downsample_map(maps[None], (h, w))[0]
    if maps.dim() == 4:
        if maps.shape[1] != 1:
            raise MEGLError(f"downsample_map: 4-D maps must be (B, 1, S, S), got {tuple(maps.shape)}")
        maps = maps[:, 0]
    if maps.dim() != 3:
        raise MEGLError(f"downsample_map: maps must be (B, 1, S, S), (B, S, S) or (S, S), got {tuple(maps.shape)}")
    x = maps[:, None].float() if not maps.is_floating_point() else maps[:, None]
    if tuple(x.shape[-2:]) == (h, w):
        return x[:, 0]
    if x.shape[-2] >= h and x.shape[-1] >= w:
        return F.adaptive_avg_pool2d(x, (h, w))[:, 0]
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)[:, 0]


def binary_grid_target(maps: Tensor, grid_hw: tuple[int, int] | torch.Size, threshold: float) -> Tensor:
    """Binary target of an annotation on a saliency grid: 1 where a cell holds ANY annotated pixel.

    maps (B, 1, S, S), (B, S, S) or (S, S) in [0, 1] -> float {0, 1} of shape (B, h, w) or (h, w).
    The annotation is binarised at its OWN resolution (pixel >= threshold), then max-pooled to
    (h, w) (adaptive windows, so every pixel falls in some cell). Area averaging first and
    thresholding the cell means instead (`downsample_map(...) >= threshold`) empties the target of
    any annotation thinner than half a cell. A grid larger than the map is reached by nearest
    neighbour (before the pooling, per axis), which keeps the target binary.
    """
    h, w = int(grid_hw[0]), int(grid_hw[1])
    if maps.dim() == 2:
        return binary_grid_target(maps[None], (h, w), threshold)[0]
    if maps.dim() == 4:
        if maps.shape[1] != 1:
            raise MEGLError(f"binary_grid_target: 4-D maps must be (B, 1, S, S), got {tuple(maps.shape)}")
        maps = maps[:, 0]
    if maps.dim() != 3:
        raise MEGLError(f"binary_grid_target: maps must be (B, 1, S, S), (B, S, S) or (S, S), got {tuple(maps.shape)}")
    dtype = maps.dtype if maps.is_floating_point() else torch.float32
    x = (maps >= threshold).to(dtype)[:, None]
    big = (max(h, x.shape[-2]), max(w, x.shape[-1]))
    if big != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=big, mode="nearest")
    if tuple(x.shape[-2:]) != (h, w):
        x = F.adaptive_max_pool2d(x, (h, w))
    return x[:, 0]


def saliency_target(maps: Tensor, grid_hw: tuple[int, int] | torch.Size, target_cfg: dict | None) -> Tensor:
    """THE training target of every method that supervises saliency (MEGL's L1, HAICS, RES-G, RES-L,
    CDEP's inside/outside): `binary_grid_target(maps, grid_hw, target_cfg["threshold"])`.

    `target_cfg` is the config's `saliency_target` section, the one place the threshold is set. The
    result is {0, 1}, the scale of Â (min-max scaled per sample to [0, 1], peak 1), so a perfect Â
    can reach it; docs/choices.md#saliency-target says why. Every loss calls this function (tested).
    """
    return binary_grid_target(maps, grid_hw, target_threshold(target_cfg))


def target_threshold(target_cfg: dict | None) -> float:
    """The pixel threshold of `saliency_target` (config `saliency_target.threshold`)."""
    if not isinstance(target_cfg, dict) or target_cfg.get("threshold") is None:
        raise MEGLError("config: key saliency_target.threshold missing (see config/config.yaml)")
    return float(target_cfg["threshold"])


def _check(sal: Tensor, has_map: Tensor, name: str) -> Tensor:
    if sal.dim() != 3:
        raise MEGLError(f"{name}: saliency must be (B, h, w), got {tuple(sal.shape)}")
    has_map = has_map.to(device=sal.device, dtype=torch.bool).view(-1)
    if has_map.numel() != sal.shape[0]:
        raise MEGLError(f"{name}: has_map has {has_map.numel()} entries for a batch of {sal.shape[0]}")
    return has_map


def visual_l1_loss(sal: Tensor, maps: Tensor, has_map: Tensor, target_cfg: dict | None) -> Tensor:
    """L_visual: mean absolute difference per grid cell between Â (B, h, w) and the annotation's
    target on Â's grid (`saliency_target`, the baselines' target too), averaged over annotated
    samples; a graph-connected 0 if none is annotated. `target_cfg`: the config's `saliency_target`."""
    has_map = _check(sal, has_map, "visual_l1_loss")
    if not bool(has_map.any()):
        return 0.0 * sal.sum()
    target = saliency_target(maps[has_map.to(maps.device)], sal.shape[-2:], target_cfg).to(sal)
    return (sal[has_map] - target).abs().mean()


def _to_distribution(maps: Tensor, eps: float) -> Tensor:
    """(B, h, w) non-negative maps -> per-sample distributions over cells: (m + eps) / sum(m + eps)."""
    flat = maps.flatten(1).clamp_min(0) + eps
    return flat / flat.sum(dim=1, keepdim=True)


def distribution_consistency_loss(sal: Tensor, mean_map: Tensor, has_map: Tensor, eps: float = KL_EPS) -> Tensor:
    """L_dc: KL(Â ‖ Ā) averaged over UNannotated samples, both maps normalised to sum 1 over Â's grid
    (after adding `eps` to every cell); a graph-connected 0 if every sample is annotated."""
    has_map = _check(sal, has_map, "distribution_consistency_loss")
    if mean_map.dim() != 2:
        raise MEGLError(f"distribution_consistency_loss: mean_map must be (h', w'), got {tuple(mean_map.shape)}")
    free = ~has_map
    if not bool(free.any()):
        return 0.0 * sal.sum()
    p = _to_distribution(sal[free], eps)
    q = _to_distribution(downsample_map(mean_map.to(sal), sal.shape[-2:])[None], eps)
    return (p * (p.log() - q.log())).sum(dim=1).mean()


__all__ = ["prediction_loss", "downsample_map", "binary_grid_target", "saliency_target", "target_threshold",
           "visual_l1_loss", "distribution_consistency_loss", "KL_EPS"]
