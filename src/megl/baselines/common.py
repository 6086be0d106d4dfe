"""What the baselines share: the trainer's call of a loss on Â, the input checks and required config keys."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from megl.errors import MEGLError

SaliencyLoss = Callable[[Tensor, Tensor, Tensor, dict[str, Any], "nn.Module | None"], Tensor]


def param(cfg: dict[str, Any], key: str, name: str) -> Any:
    """`baselines.<name>.<key>` of the baseline's config; a MEGLError naming the key when it is missing."""
    if key not in cfg or cfg[key] is None:
        raise MEGLError(f"baselines.{name}: missing required key {key!r}")
    return cfg[key]


def check_inputs(sal: Tensor, maps: Tensor, has_map: Tensor, name: str) -> Tensor:
    """Validate shapes shared by every baseline; return has_map as a bool vector on sal's device."""
    if sal.dim() != 3:
        raise MEGLError(f"{name}: sal_scaled must be (B, h, w), got {tuple(sal.shape)}")
    if maps.dim() != 4 or maps.shape[1] != 1 or maps.shape[0] != sal.shape[0]:
        raise MEGLError(f"{name}: maps must be (B, 1, S, S) with B={sal.shape[0]}, got {tuple(maps.shape)}")
    has_map = has_map.to(device=sal.device, dtype=torch.bool).view(-1)
    if has_map.numel() != sal.shape[0]:
        raise MEGLError(f"{name}: has_map has {has_map.numel()} entries for a batch of {sal.shape[0]}")
    return has_map


def on_saliency(loss: SaliencyLoss) -> Callable[..., Tensor]:
    """A loss that reads only Â, the maps and the baseline's state (HAICS, RES), called as the trainer
    calls every baseline's loss (megl.baselines, `loss_fn`)."""

    def loss_fn(model: nn.Module, images: Tensor, labels: Tensor, sal_scaled: Tensor, maps: Tensor,
                has_map: Tensor, cfg: dict[str, Any], state: nn.Module | None = None) -> Tensor:
        return loss(sal_scaled, maps, has_map, cfg, state)

    loss_fn.__name__ = loss_fn.__qualname__ = getattr(loss, "__name__", "loss_fn")
    loss_fn.__doc__ = loss.__doc__
    return loss_fn
