"""Classifier backbones and differentiable Grad-CAM."""
