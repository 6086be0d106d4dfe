"""Evaluation metrics (paper §4.2): classification, saliency (mIoU), text (COCO scorers, CLIPScore).
Efficiency (parameters, latency) is a measurement of the model, not a score: megl.timing.

Submodules are imported on use so that, e.g., classification metrics do not start torch or Java.
"""

__all__ = ["classification", "saliency", "text"]
