"""HAICS baseline (Shen et al., CHI EA 2021): binary cross-entropy between Â and the annotation.

L = mean over the cells of the annotated samples of BCE(Â, A*), with A* the annotation on Â's
grid: binary (target: binary, the default; the shared target of every saliency-supervising method,
`megl.losses.saliency_target`: a cell is 1 when any of its pixels is >= saliency_target.threshold)
or soft (target: soft, a documented deviation knob; the area-averaged annotation).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from megl.baselines.common import check_inputs, param
from megl.errors import MEGLError
from megl.losses import downsample_map, saliency_target

NAME = "haics"
TARGETS = ("binary", "soft")


def haics_loss(sal_scaled: Tensor, maps: Tensor, has_map: Tensor, cfg: dict[str, Any],
               state: nn.Module | None = None) -> Tensor:
    """HAICS explanation loss on the annotated samples; a graph-connected 0 when none is annotated."""
    has_map = check_inputs(sal_scaled, maps, has_map, NAME)
    target_kind = param(cfg, "target", NAME)
    if target_kind not in TARGETS:
        raise MEGLError(f"baselines.{NAME}.target: {target_kind!r} not one of {', '.join(TARGETS)}")
    eps = float(param(cfg, "eps", NAME))
    if not bool(has_map.any()):
        return 0.0 * sal_scaled.sum()
    sal = sal_scaled[has_map]
    sel = maps[has_map.to(maps.device)]
    if target_kind == "binary":
        target = saliency_target(sel, sal.shape[-2:], cfg.get("saliency_target")).to(sal)
    else:
        target = downsample_map(sel, sal.shape[-2:]).to(sal)
    # Clamp away from {0, 1}: the per-sample min-max scaling puts exact 0s and 1s in every map,
    # where BCE's gradient is unbounded.
    pred = sal.clamp(eps, 1.0 - eps)
    return F.binary_cross_entropy(pred, target.clamp(0.0, 1.0), reduction="mean")


def make_state(cfg: dict[str, Any], grid_hw: tuple[int, int]) -> None:
    """HAICS has no learnable parts."""
    return None


__all__ = ["haics_loss", "make_state"]
