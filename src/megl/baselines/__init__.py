"""Visual explanation-guided baselines: the plain classifier plus one explanation loss on the
annotated samples (CDEP, HAICS, RES-G, RES-L). docs/baselines.md gives each formula and source.

Every baseline has the same two functions, so the trainer treats them as siblings:

    loss_fn(model, images, labels, sal_scaled (B,h,w), maps (B,1,S,S), has_map bool (B,),
            cfg, state) -> scalar            # unweighted; a graph-connected 0 without annotations
                                             # (a loss on Â alone: common.on_saliency(loss))
    make_state(cfg, grid_hw) -> nn.Module | None   # learnable parts (RES-L), for the optimiser

and may have `prepare(classifier, split, cfg, device) -> {key: (N, ...) tensor}`: per-sample inputs
computed once per training split, which batches then carry; `batch_keys` names the batch entries
its loss_fn takes as keyword arguments (CDEP: the trunk's features and its decomposition).

`cfg` is `baseline_config(config, name)`: the method's entry of the config's `baselines:` mapping
(config/config.yaml), its `weight` the factor the trainer puts in front of the loss, plus the
config's shared `saliency_target` section under the key `saliency_target`, from which every loss
builds its target (`megl.losses.saliency_target`, the same target as MEGL's L1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor, nn

from megl.baselines.cdep import cd_forward, cdep_loss
from megl.baselines.cdep import make_state as _cdep_state
from megl.baselines.cdep import prepare as _cdep_prepare
from megl.baselines.common import on_saliency
from megl.baselines.haics import haics_loss
from megl.baselines.haics import make_state as _haics_state
from megl.baselines.res import make_state_g, make_state_l, res_g_loss, res_l_loss, solve_threshold
from megl.errors import MEGLError

LossFn = Callable[..., Tensor]
StateFn = Callable[[dict[str, Any], tuple[int, int]], "nn.Module | None"]


@dataclass(frozen=True)
class Baseline:
    name: str
    loss_fn: LossFn
    make_state: StateFn
    prepare: Callable[..., dict[str, Tensor]] | None = None
    batch_keys: tuple[str, ...] = ()


BASELINES: dict[str, Baseline] = {
    "cdep": Baseline("cdep", cdep_loss, _cdep_state, _cdep_prepare, ("features", "cd_trunk_rel")),
    "haics": Baseline("haics", on_saliency(haics_loss), _haics_state),
    "res_g": Baseline("res_g", on_saliency(res_g_loss), make_state_g),
    "res_l": Baseline("res_l", on_saliency(res_l_loss), make_state_l),
}


def get_baseline(name: str) -> Baseline:
    """The baseline registered under `name` (a method's `visual_loss` in megl.methods)."""
    if name not in BASELINES:
        raise MEGLError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    return BASELINES[name]


def baseline_config(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The `baselines.<name>` entry of a validated config with the shared `saliency_target` section
    added (the one target rule of every saliency-supervising method), or a MEGLError naming the key."""
    entry = (config.get("baselines") or {}).get(name)
    if not isinstance(entry, dict):
        raise MEGLError(f"config: key baselines.{name} missing (see config/config.yaml)")
    return {**entry, "saliency_target": config.get("saliency_target")}


__all__ = ["Baseline", "BASELINES", "get_baseline", "baseline_config", "cd_forward", "solve_threshold"]
