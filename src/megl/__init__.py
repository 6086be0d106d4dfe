"""MEGL: Multimodal Explanation-Guided Learning — a reproducible replication."""

__version__ = "0.1.0"
