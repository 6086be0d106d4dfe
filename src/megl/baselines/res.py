"""RES-G and RES-L baselines (Gao et al., KDD 2022, "RES: A Robust Framework for Guiding Visual
Explanation"; code github.com/YuyangGao/RES).

On the annotated samples of a batch, with Â the scaled Grad-CAM and y = +1 on annotated cells
(cells holding any pixel with A ≥ saliency_target.threshold, `megl.losses.saliency_target`),
y = -1 elsewhere:

    L = robust_weight · relu( mean_cells |tanh(k (Â - a)) - y| - eta )
      + imputation_weight · mean_cells |Â - Ã|
      + reg · mean_cells (Ã - y⁺)²                                        (RES-L only)

a: the threshold that best separates positive from negative cells of the batch (ranking
criterion of the authors' solver, see `solve_threshold`); Ã: the imputed annotation —
Gaussian-blurred positive label scaled to max 1 (RES-G) or a learnable convolution of the
annotation, min-max scaled (RES-L, `ImputationConv`, trained jointly with the classifier).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

from megl.baselines.common import check_inputs, param
from megl.errors import MEGLError
from megl.losses import downsample_map, saliency_target, target_threshold

SCOPES = ("batch", "sample")


# --------------------------------------------------------------------------------------------
# Threshold solver
# --------------------------------------------------------------------------------------------
def _scores(cands: Tensor, neg_sorted: Tensor, pos_sorted: Tensor) -> Tensor:
    """Separation score of each candidate threshold v (float64):
    #{negatives x < v} / n_neg + #{positives x >= v} / n_pos (a group with no cells adds 0)."""
    score = torch.zeros(cands.shape, dtype=torch.float64, device=cands.device)
    n_neg, n_pos = neg_sorted.numel(), pos_sorted.numel()
    if n_neg:
        below = torch.searchsorted(neg_sorted, cands, side="left")  # count of x < v
        score = score + below.to(torch.float64) / n_neg
    if n_pos:
        at_or_above = n_pos - torch.searchsorted(pos_sorted, cands, side="left")
        score = score + at_or_above.to(torch.float64) / n_pos
    return score


def solve_threshold(sal: Tensor, labels: Tensor, eps: float = 1e-4) -> Tensor:
    """Threshold a (0-dim, detached) maximising the share of negatives (label < 0) strictly below
    a plus the share of positives (label > 0) at or above a; label 0 cells are ignored.

    Candidates, in the authors' order: every negative value + eps, then every positive value;
    the first candidate with the best score wins; 0 when no cell is labelled. O(N log N).
    """
    # Written by hand: no library offers this criterion; sort + searchsorted replaces the
    # authors' O(N²) double loop (`brute_force_threshold` is the test reference).
    x = sal.detach().flatten()
    y = labels.detach().flatten().to(x.device)
    neg, pos = x[y < 0], x[y > 0]
    if neg.numel() + pos.numel() == 0:
        return x.new_zeros(())
    cands = torch.cat([neg + eps, pos])
    score = _scores(cands.contiguous(), torch.sort(neg).values, torch.sort(pos).values)
    return cands[torch.argmax(score)]  # argmax returns the first maximum


def brute_force_threshold(sal: Tensor, labels: Tensor, eps: float = 1e-4) -> Tensor:
    """Reference for `solve_threshold`: a plain double loop over candidates and cells (tests only)."""
    x = sal.detach().flatten()
    y = labels.detach().flatten()
    neg = [x[i] for i in range(x.numel()) if y[i] < 0]
    pos = [x[i] for i in range(x.numel()) if y[i] > 0]
    best, best_score = x.new_zeros(()), 0.0
    for v in [n + eps for n in neg] + pos:
        c_neg = sum(1 for n in neg if bool(v > n))
        c_pos = sum(1 for p in pos if bool(v <= p))
        s = torch.zeros((), dtype=torch.float64)
        if neg:
            s = s + torch.tensor(c_neg, dtype=torch.float64) / len(neg)
        if pos:
            s = s + torch.tensor(c_pos, dtype=torch.float64) / len(pos)
        if float(s) > best_score:
            best, best_score = v, float(s)
    return best


# --------------------------------------------------------------------------------------------
# Imputation of the annotation
# --------------------------------------------------------------------------------------------
def gaussian_imputation(pos_label: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """RES-G: blur the positive label (B, h, w) and scale each map to max 1."""
    blurred = gaussian_blur(pos_label[:, None], [kernel_size, kernel_size], [sigma, sigma])[:, 0]
    return blurred / (blurred.flatten(1).amax(dim=1).view(-1, 1, 1) + 1e-6)


class ImputationConv(nn.Module):
    """RES-L: one learnable convolution from the binarised annotation to Â's grid.

    The annotation is brought to (f·h, f·w) (area average) and convolved with a 2f×2f kernel,
    stride f, padding f/2 — the authors' shallow imputation (64×64 kernel, stride 32, padding 16
    from a 224² mask to 7×7) for any grid; the output is min-max scaled per sample.
    """

    def __init__(self, grid_hw: tuple[int, int], factor: int, binarize_threshold: float):
        super().__init__()
        if factor < 2 or factor % 2:
            raise MEGLError(f"baselines.res_l.imputation_factor: must be an even int >= 2, got {factor}")
        self.grid_hw = (int(grid_hw[0]), int(grid_hw[1]))
        self.factor = int(factor)
        self.binarize_threshold = float(binarize_threshold)
        self.conv = nn.Conv2d(1, 1, kernel_size=2 * factor, stride=factor, padding=factor // 2)

    def forward(self, maps: Tensor) -> Tensor:
        """maps (B, 1, S, S) in [0, 1] -> imputed labels (B, h, w) in [0, 1]."""
        h, w = self.grid_hw
        f = self.factor
        binary = (maps >= self.binarize_threshold).to(self.conv.weight.dtype)
        x = downsample_map(binary, (f * h, f * w))[:, None]
        out = self.conv(x)[:, 0]
        out = out - out.flatten(1).amin(dim=1).view(-1, 1, 1)
        return out / (out.flatten(1).amax(dim=1).view(-1, 1, 1) + 1e-6)


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------
def _thresholds(sal: Tensor, y: Tensor, scope: str, eps: float) -> Tensor:
    """(n, 1, 1) thresholds: one for the batch (authors' code) or one per sample."""
    if scope == "batch":
        return solve_threshold(sal, y, eps).view(1, 1, 1).expand(sal.shape[0], 1, 1)
    return torch.stack([solve_threshold(s, t, eps) for s, t in zip(sal, y)]).view(-1, 1, 1)


def res_loss(name: str, sal_scaled: Tensor, maps: Tensor, has_map: Tensor, cfg: dict[str, Any],
             state: nn.Module | None = None) -> Tensor:
    """RES-G (`name` res_g) or RES-L (res_l, state = `make_state_l(...)`) loss on the annotated samples;
    a graph-connected 0 when none is annotated."""
    has_map = check_inputs(sal_scaled, maps, has_map, name)
    k = float(param(cfg, "k", name))
    eta = float(param(cfg, "eta", name))
    scope = param(cfg, "threshold_scope", name)
    if scope not in SCOPES:
        raise MEGLError(f"baselines.{name}.threshold_scope: {scope!r} not one of {', '.join(SCOPES)}")
    w_robust = float(param(cfg, "robust_weight", name))
    w_imp = float(param(cfg, "imputation_weight", name))
    if name == "res_l" and not isinstance(state, ImputationConv):
        raise MEGLError("baselines.res_l: the loss needs the ImputationConv from make_state (got none)")
    if not bool(has_map.any()):
        zero = 0.0 * sal_scaled.sum()
        if state is not None:
            zero = zero + 0.0 * sum(p.sum() for p in state.parameters())
        return zero

    sal = sal_scaled[has_map]
    sel_maps = maps[has_map.to(maps.device)]
    positive = saliency_target(sel_maps, sal.shape[-2:], cfg.get("saliency_target")).to(sal)
    y = 2.0 * positive - 1.0  # +1 annotated, -1 not: every cell of an annotated map is labelled

    a = _thresholds(sal, y, scope, float(param(cfg, "threshold_eps", name)))
    robust = F.relu((torch.tanh(k * (sal - a)) - y).abs().mean() - eta)

    if name == "res_g":
        ks = int(param(cfg, "gaussian_kernel", name))
        sigma = float(param(cfg, "gaussian_sigma", name))
        imputed = gaussian_imputation(positive, ks, sigma)
        extra = sal.new_zeros(())
    else:
        if tuple(state.grid_hw) != tuple(sal.shape[-2:]):
            raise MEGLError(f"baselines.res_l: imputation built for grid {state.grid_hw}, "
                            f"saliency grid is {tuple(sal.shape[-2:])}")
        imputed = state(sel_maps.to(sal))
        extra = float(param(cfg, "reg", name)) * ((imputed - positive) ** 2).mean()
    imputation = (sal - imputed).abs().mean()
    return w_robust * robust + w_imp * imputation + extra


def res_g_loss(sal_scaled: Tensor, maps: Tensor, has_map: Tensor, cfg: dict[str, Any],
               state: nn.Module | None = None) -> Tensor:
    """RES-G: no learnable part, so `state` is not read."""
    return res_loss("res_g", sal_scaled, maps, has_map, cfg, None)


def res_l_loss(sal_scaled: Tensor, maps: Tensor, has_map: Tensor, cfg: dict[str, Any],
               state: nn.Module | None = None) -> Tensor:
    return res_loss("res_l", sal_scaled, maps, has_map, cfg, state)


def make_state_g(cfg: dict[str, Any], grid_hw: tuple[int, int]) -> None:
    """RES-G has no learnable parts."""
    return None


def make_state_l(cfg: dict[str, Any], grid_hw: tuple[int, int]) -> ImputationConv:
    """The learnable imputation of RES-L; the trainer adds its parameters to the optimiser."""
    return ImputationConv(grid_hw, int(param(cfg, "imputation_factor", "res_l")),
                          target_threshold(cfg.get("saliency_target")))


__all__ = [
    "solve_threshold", "brute_force_threshold", "gaussian_imputation", "ImputationConv",
    "res_g_loss", "res_l_loss", "make_state_g", "make_state_l",
]
