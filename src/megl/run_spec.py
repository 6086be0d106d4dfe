"""What one run of a (dataset, backbone, method) cell reads of the config, resolved in one place.

`resolve_run_spec` merges `train.by_backbone`, puts the dataset's trunk depth into the backbone's
entry, drops the `train` keys the method never reads and keeps only its own guidance grids and
baseline entry. The same RunSpec is the `run_cell` rule's params (`params()`, through
`megl.matrix.training_config`) and what the job trains and predicts from (megl.cell, megl.train,
megl.predict): a key the run reads is a key its rule declares, so changing it re-runs the cell.
tests/test_run_spec.py proves it: a cell run from a config whose every other key is garbage predicts
byte for byte what the normal run predicts.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

from megl.config import for_cell, image_size_for
from megl.errors import MEGLError
from megl.methods import MLLM_BACKBONE, Method, get_method

TEXT_SECTIONS = ("sdtg", "lm", "vision_encoder")


@dataclass(frozen=True)
class RunSpec:
    """Everything one run reads of the config (its identity aside, every field is a rule param)."""
    dataset: str | None
    backbone: str
    method: str
    device: str
    train: dict[str, Any]              # by-backbone merged; the keys of other methods' losses dropped
    backbone_cfg: dict[str, Any]       # the backbone's entry (dataset's trunk depth); an MLLM: every backbone
    pretrain: dict | None              # what made the trunk (weights: source); the run reads it as a weights file
    baseline: dict | None              # baselines.<the method's visual loss>
    saliency_target: dict | None       # methods that supervise saliency
    selection: dict[str, Any]          # seed, metric, rule; a guided method: the grids of its own weights
    seeds: list[int]                   # matrix.seeds
    evaluate: dict[str, Any]
    text: dict[str, Any] | None        # sdtg, lm, vision_encoder of a text-writing method

    IDENTITY = ("dataset", "backbone", "method")
    PARAM_NAMES = {"backbone_cfg": "backbone"}  # the rule params' name of a field, where it differs

    @property
    def method_def(self) -> Method:
        return get_method(self.method)

    @property
    def entry(self) -> dict | None:
        """The classifier backbone's entry (None for an MLLM: it has no classifier)."""
        return None if self.method_def.is_mllm else self.backbone_cfg

    @property
    def image_size(self) -> int:
        """The run's image size: its backbone's; an MLLM's, the largest of every backbone (config.image_size_for)."""
        return image_size_for({"backbones": self.backbone_cfg} if self.entry is None else {}, self.entry)

    def baseline_config(self) -> dict:
        """The method's baseline entry with the shared saliency target, as megl.baselines.baseline_config
        gives it (not imported: megl.matrix imports this module, and the report's jobs import the matrix)."""
        if not isinstance(self.baseline, dict):
            raise MEGLError(f"config: key baselines.{self.method_def.visual_loss} missing (see config/config.yaml)")
        return {**self.baseline, "saliency_target": self.saliency_target}

    def sections(self) -> dict:
        """The spec in the config's shape for the building blocks that take config sections
        (models/build.py, objective.py): nothing else is in it, so reading anything else fails."""
        out: dict[str, Any] = {"saliency_target": self.saliency_target}
        if self.baseline is not None:
            out["baselines"] = {self.method_def.visual_loss: self.baseline}
        out.update(self.text or {})
        return out

    def with_guidance(self, chosen: dict[str, float]) -> RunSpec:
        """The spec with the method's guidance weights (dotted keys of Method.guidance) set to `chosen`."""
        train, baseline = dict(self.train), None if self.baseline is None else dict(self.baseline)
        own_weight = f"baselines.{self.method_def.visual_loss}.weight"
        for dotted, value in chosen.items():
            section, _, key = dotted.partition(".")
            if section == "train" and key in train:
                train[key] = value
            elif dotted == own_weight and baseline is not None and "weight" in baseline:
                baseline["weight"] = value
            else:
                raise MEGLError(f"selection: the run of {self.method!r} has no key {dotted!r}")
        return dataclasses.replace(self, train=train, baseline=baseline)

    def config_keys(self) -> dict[str, list[str]]:
        """The dotted config keys each field is resolved from (DVC's cell stages name them as params:
        DVC cannot compute a spec; tests/test_run_spec.py checks both)."""
        m = self.method_def
        keys = {"device": ["device"], "train": ["train"], "seeds": ["matrix.seeds"], "evaluate": ["evaluate"],
                "backbone_cfg": ["backbones"] if m.is_mllm else
                [f"backbones.{self.backbone}", f"datasets.{self.dataset}.frozen_stages.{self.backbone}"],
                "selection": [f"selection.{k}" for k in self.selection if k != "grid"]
                + [f"selection.grid.{g}" for g in self.selection.get("grid", {})],
                "pretrain": ["pretrain"], "baseline": [f"baselines.{m.visual_loss}"],
                "saliency_target": ["saliency_target"], "text": list(TEXT_SECTIONS)}
        return {name: found for name, found in keys.items() if getattr(self, name) is not None}

    def params(self) -> dict:
        """The rule params (plain data, so Snakemake sees a change): every field but the identity."""
        return {self.PARAM_NAMES.get(f.name, f.name): copy.deepcopy(getattr(self, f.name))
                for f in dataclasses.fields(self) if f.name not in self.IDENTITY}


def resolve_run_spec(config: dict, dataset: str | None, backbone: str, method: str) -> RunSpec:
    """The one resolution of what a run of (dataset, backbone, method) reads. Without a dataset: the
    backbone's own trunk depth."""
    m = get_method(method)
    resolved = for_cell(config, dataset, backbone)
    train = dict(resolved["train"])
    if not m.textual:
        train.pop("lambda_t", None)
        train.pop("text_batch_size", None)
    if m.visual_loss != "l1" and not m.consistency:
        train.pop("lambda_v", None)
    if m.is_mllm and backbone != MLLM_BACKBONE:
        raise MEGLError(f"method {m.name!r} has no classifier backbone: use backbone {MLLM_BACKBONE!r}")
    if not m.is_mllm and backbone not in resolved["backbones"]:
        raise MEGLError(f"unknown backbone {backbone!r}; valid backbones: {', '.join(resolved['backbones'])}")
    bb = resolved["backbones"] if m.is_mllm else resolved["backbones"][backbone]
    selection = dict(config["selection"])
    if m.guidance:
        selection["grid"] = {name: selection["grid"][name] for name in m.guidance.values()}
    else:
        selection.pop("grid", None)  # the record of an unguided cell names seed, metric and rule only
    return RunSpec(
        dataset=dataset, backbone=backbone, method=method,
        device=config["device"],
        train=copy.deepcopy(train),
        backbone_cfg=copy.deepcopy(bb),
        pretrain=copy.deepcopy(config.get("pretrain")) if not m.is_mllm and bb.get("weights") == "source" else None,
        baseline=copy.deepcopy(config.get("baselines", {}).get(m.visual_loss)),
        saliency_target=copy.deepcopy(config.get("saliency_target")) if m.visual_loss or m.consistency else None,
        selection=copy.deepcopy(selection),
        seeds=list(config["matrix"]["seeds"]),
        evaluate=copy.deepcopy(config.get("evaluate")),
        text=copy.deepcopy({k: config[k] for k in TEXT_SECTIONS}) if m.writes_text else None,
    )
