"""A run's model from the config: the dataset and backbone entries it names, the classifier, and (for
text-writing methods) SDTG on the frozen encoder and the LM, or a baseline's learnable state."""
from __future__ import annotations

from pathlib import Path

import torch

from megl.errors import MEGLError
from megl.methods import Method
from megl.run_spec import RunSpec
from megl.runs import RunModel


def dataset_entry(config: dict, dataset: str) -> dict:
    if dataset not in config["datasets"]:
        raise MEGLError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(config['datasets'])}")
    return config["datasets"][dataset]


def build_run_model(config: dict, method: Method, backbone_cfg: dict | None, num_classes: int,
                    pretrained_dir: Path | None, backbone_weights: Path | None = None) -> RunModel:
    """The classifier, and (for text-writing methods) SDTG on the frozen encoder and the LM.
    `config`: its sdtg/lm/vision_encoder, baselines and saliency_target sections (a run: RunSpec.sections()).
    `backbone_weights`: the trunk the workflow pretrained (config `weights: source`)."""
    from megl.models.backbones import build_classifier

    classifier = build_classifier(backbone_cfg, num_classes, backbone_weights) if backbone_cfg is not None else None
    sdtg = clip = clip_tokenizer = state = None
    if method.writes_text:
        from megl.models.lm import prepare_lm
        from megl.models.sdtg import SDTG
        from megl.pretrain import load_lm, load_vision

        encoder, clip, clip_tokenizer = load_vision(config["vision_encoder"], pretrained_dir)
        lm, lm_tokenizer = load_lm(config["lm"], pretrained_dir)
        sdtg = SDTG(prepare_lm(lm, config["lm"]), lm_tokenizer, encoder if method.uses_vision_encoder else None,
                    feature_dim=classifier.feature_dim if classifier is not None else None,
                    prefix_tokens=config["sdtg"]["prefix_tokens"], prompt=config["sdtg"]["prompt"],
                    max_rationale_tokens=config["sdtg"]["max_rationale_tokens"])
    if method.visual_loss not in (None, "l1"):
        from megl.baselines import baseline_config, get_baseline

        state = get_baseline(method.visual_loss).make_state(baseline_config(config, method.visual_loss),
                                                            cam_grid(classifier, backbone_cfg["image_size"]))
    return RunModel(method, classifier, sdtg, state, clip, clip_tokenizer)


def cam_grid(classifier, image_size: int) -> tuple[int, int]:
    """(h, w) of the classifier's Grad-CAM grid, read off one forward pass."""
    with torch.no_grad():
        acts = classifier.forward_with_features(torch.zeros(1, 3, image_size, image_size)).cam_activations
    return tuple(acts.shape[-2:])


def new_run_model(spec: RunSpec, num_classes: int, seed: int, pretrained_dir: Path | None,
                  backbone_weights: Path | None, device: torch.device) -> RunModel:
    """The run's model with its seed-determined initialisation (everything not loaded from a file)."""
    torch.manual_seed(seed)
    return build_run_model(spec.sections(), spec.method_def, spec.entry, num_classes, pretrained_dir,
                           backbone_weights).to(device)
