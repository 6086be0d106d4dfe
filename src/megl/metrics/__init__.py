"""Evaluation metrics (paper §4.2): classification, saliency (mIoU), text (COCO scorers, CLIPScore), efficiency.

Submodules are imported on use so that, e.g., classification metrics do not start torch or Java.
"""

__all__ = ["classification", "saliency", "text", "efficiency"]
