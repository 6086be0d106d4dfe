"""Display names of datasets and backbones, derived from the config: the paper's names only for
runs on the paper's data and models.

- A dataset is "Object-ME" / "Action-ME" only when its config `source` is `official` (the
  authors' zip); a generated one is "<key> (stand-in)", e.g. "objects (stand-in)".
- A backbone carries the paper's name ("ResNet18", "ViT-B/16") only when its sizes are the paper's
  (torchvision's ResNet18 widths; ViT-B/16's patch, width, depth, heads and MLP); a smaller one is
  named as what it is: "ResNet18-narrow", "ViT-tiny".
- The MLLM baselines are "MLLM" on a pretrained LM (LLaVA-1.5's Vicuna), "MLLM (tiny LM)" on the
  embedded tiny LM.

The labels are computed once from the config and passed to the table, claim and figure code; no
module holds a global name table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from megl.methods import MLLM_BACKBONE

# The paper's datasets (arXiv 2411.13053), by our dataset key.
PAPER_DATASETS: dict[str, str] = {"objects": "Object-ME", "actions": "Action-ME"}

# The paper's backbones: (paper name, the sizes that make it that model, name of a smaller variant).
PAPER_BACKBONES: dict[str, tuple[str, dict, str]] = {
    "resnet18": ("ResNet18", {"widths": [64, 128, 256, 512]}, "ResNet18-narrow"),
    "vit_b_16": ("ViT-B/16", {"patch_size": 16, "hidden_dim": 768, "num_layers": 12, "num_heads": 12,
                              "mlp_dim": 3072}, "ViT-tiny"),
}

STANDIN_SUFFIX = " (stand-in)"


def dataset_label(key: str, entry: Mapping | None) -> str:
    """The paper's name for an official dataset it published; `<key> (stand-in)` for a generated one."""
    source = (entry or {}).get("source", "standin")
    if source == "official":
        return PAPER_DATASETS.get(key, key)
    return f"{key}{STANDIN_SUFFIX}"


def backbone_label(key: str, entry: Mapping | None, lm: Mapping | None = None) -> str:
    """The paper's name when the backbone has the paper's sizes; the smaller variant's name otherwise."""
    if key == MLLM_BACKBONE:
        return "MLLM" if (lm or {}).get("kind") == "pretrained" else "MLLM (tiny LM)"
    family = (entry or {}).get("family", key)
    if family not in PAPER_BACKBONES:
        return key
    paper, sizes, small = PAPER_BACKBONES[family]
    same = all((entry or {}).get(k) == v for k, v in sizes.items())
    return paper if same else small


@dataclass(frozen=True)
class Labels:
    """Display names by key. Without an entry a key is shown as is (never as a paper name)."""

    datasets: Mapping[str, str] = field(default_factory=dict)
    backbones: Mapping[str, str] = field(default_factory=dict)

    def dataset(self, key: str) -> str:
        return self.datasets.get(key, key)

    def backbone(self, key: str) -> str:
        return self.backbones.get(key, key)

    def panel(self, dataset: str, backbone: str) -> str:
        return f"{self.dataset(dataset)} / {self.backbone(backbone)}"

    def is_standin(self, dataset: str) -> bool:
        return self.dataset(dataset).endswith(STANDIN_SUFFIX)


def labels_from_config(config: Mapping) -> Labels:
    """Labels of every dataset and backbone of the config (and the MLLM backbone)."""
    datasets = {k: dataset_label(k, v) for k, v in (config.get("datasets") or {}).items()}
    backbones = {k: backbone_label(k, v) for k, v in (config.get("backbones") or {}).items()}
    backbones[MLLM_BACKBONE] = backbone_label(MLLM_BACKBONE, None, config.get("lm"))
    return Labels(datasets, backbones)
