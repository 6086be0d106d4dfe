"""The training objective of one batch: every loss term the method's flags switch on, and their
weighted total (paper eq. 6):

L = L_pred + λ_t·L_textual + λ_v·mean_i[1_V(i)·L_visual(i) + (1−1_V(i))·L_dc(i)].
"""
from __future__ import annotations

import torch

from megl import losses
from megl.mllm_protocol import mllm_target
from megl.models.gradcam import saliency as saliency_map
from megl.runs import RunModel


def batch_losses(model: RunModel, batch: dict, cfg_train: dict, mean_map: torch.Tensor | None,
                 config: dict, rationales: list[str], class_names: list[str] | None = None
                 ) -> dict[str, torch.Tensor]:
    """Every loss term the method switches on, and their weighted total. `config`: its `saliency_target`
    and `baselines` sections (a run: RunSpec.sections(); `cfg_train` is the spec's resolved `train`)."""
    method = model.method
    images, labels = batch["image"], batch["label"]
    terms: dict[str, torch.Tensor] = {}
    if method.is_mllm:
        targets = [mllm_target(method, class_names[i], r) for i, r in zip(labels.tolist(), rationales)]
        terms["loss_textual"] = model.sdtg.loss(images, None, None, targets, image_ids=batch.get("index"))
        terms["loss"] = terms["loss_textual"]
        return terms

    saliency, features = None, batch.get("features")
    if method.needs_saliency_graph or method.saliency_path == "detached":
        logits, _, saliency, out = saliency_map(model.classifier, images, labels,
                                                create_graph=method.needs_saliency_graph, features=features)
    else:
        out = (model.classifier.forward_with_features(images) if features is None
               else model.classifier.head_forward(features))
        logits = out.logits
    terms["loss_pred"] = losses.prediction_loss(logits, labels)
    total = terms["loss_pred"]

    has_map = batch["has_map"]
    n = float(len(labels))
    share_annotated = has_map.float().sum() / n
    if method.visual_loss == "l1":
        terms["loss_visual"] = losses.visual_l1_loss(saliency, batch["visual_map"], has_map,
                                                     config.get("saliency_target"))
        total = total + cfg_train["lambda_v"] * share_annotated * terms["loss_visual"]
    elif method.visual_loss is not None:  # a baseline: its own loss and weight, on annotated samples
        from megl.baselines import baseline_config, get_baseline

        cfg = baseline_config(config, method.visual_loss)
        baseline = get_baseline(method.visual_loss)
        extra = {key: batch[key] for key in baseline.batch_keys if key in batch}
        terms["loss_visual"] = baseline.loss_fn(
            model.classifier, images, labels, saliency, batch["visual_map"], has_map, cfg, model.explanation_state,
            **extra)
        total = total + cfg["weight"] * share_annotated * terms["loss_visual"]
    if method.consistency:
        terms["loss_dc"] = losses.distribution_consistency_loss(saliency, mean_map, has_map)
        total = total + cfg_train["lambda_v"] * (1 - share_annotated) * terms["loss_dc"]
    if method.textual:
        text_saliency = {"grad": saliency, "detached": None if saliency is None else saliency.detach(),
                         "none": None}[method.saliency_path]
        k = cfg_train.get("text_batch_size") or len(rationales)  # L_textual on the first k of the (shuffled) batch
        terms["loss_textual"] = model.sdtg.loss(images[:k], None if text_saliency is None else text_saliency[:k],
                                                out.tokens[:k], rationales[:k])
        total = total + cfg_train["lambda_t"] * terms["loss_textual"]
    terms["loss"] = total
    return terms
