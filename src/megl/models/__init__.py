"""Classifier backbones and differentiable Grad-CAM."""

SOURCE_PRETRAINED = "source"  # backbones.X.weights: pretrained by the workflow on the source stand-in
