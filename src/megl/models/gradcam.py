"""Batched, differentiable Grad-CAM: the visual explanation Â of the classifier (paper §3)."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor

from megl.errors import MEGLError
from megl.models.backbones import Classifier


def gradcam(activations: Tensor, logits: Tensor, target: Tensor, create_graph: bool) -> Tensor:
    """Grad-CAM maps (B, h, w) of `logits[b, target[b]]` over `activations` (B, C, h, w).

    With create_graph=True the map stays differentiable w.r.t. the model parameters (double
    backprop), so losses on it train the model; with False it is returned detached.
    """
    # Written by hand: captum's LayerGradCam and pytorch-grad-cam detach their gradients, so
    # their maps cannot be trained through (tests check equality with captum's values).
    if activations.dim() != 4:
        raise MEGLError(f"gradcam: activations must be (B, C, h, w), got {tuple(activations.shape)}")
    if not activations.requires_grad:
        raise MEGLError("gradcam: activations do not require grad; run the forward pass with grad enabled")
    target = target.to(device=logits.device, dtype=torch.long).view(-1, 1)
    score = logits.gather(1, target).sum()  # samples are independent after the CAM layer
    (grads,) = torch.autograd.grad(score, activations, create_graph=create_graph, retain_graph=True)
    weights = grads.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1): global-average-pooled gradients
    acts = activations if create_graph else activations.detach()
    return F.relu((weights * acts).sum(dim=1))


def scale_per_sample(cam: Tensor, eps: float = 1e-8) -> Tensor:
    """Min-max scale each map of (B, h, w) to [0, 1]; a constant (e.g. all-zero) map becomes zeros."""
    flat = cam.flatten(1)
    lo = flat.amin(dim=1, keepdim=True)
    rng = flat.amax(dim=1, keepdim=True) - lo
    ok = rng > eps
    safe = torch.where(ok, rng, torch.ones_like(rng))  # no 0/0 even in the unused branch's gradient
    out = torch.where(ok, (flat - lo) / safe, torch.zeros_like(flat))
    return out.view_as(cam)


def saliency(
    model: Classifier, images: Tensor, target: Tensor | None = None, create_graph: bool = False,
    features: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, object]:
    """Forward `images` and return (logits, raw Grad-CAM (B,h,w), scaled map in [0,1], ClassifierOutput).

    target=None explains the predicted class (evaluation protocol); training passes labels.
    `features`: the frozen trunk's output for `images` (cached once per dataset); the forward then
    starts from them (`Classifier.head_forward`) and gives the same maps as from the images.
    """
    if create_graph and model.family == "vit_b_16":
        # Fused attention kernels (flash/efficient, CPU and CUDA) have no double backward; math has.
        from torch.nn.attention import SDPBackend, sdpa_kernel

        kernel = sdpa_kernel(SDPBackend.MATH)
    else:
        kernel = nullcontext()
    with torch.enable_grad(), kernel:
        x = images if features is None else features
        if not any(p.requires_grad for p in model.parameters()):
            x = x.detach().requires_grad_(True)  # frozen model: still get a graph to the CAM layer
        out = model.forward_with_features(x) if features is None else model.head_forward(x)
        logits = out.logits
        if target is None:
            target = logits.detach().argmax(dim=1)
        raw = gradcam(out.cam_activations, logits, target, create_graph=create_graph)
    return logits, raw, scale_per_sample(raw), out


__all__ = ["gradcam", "scale_per_sample", "saliency"]
