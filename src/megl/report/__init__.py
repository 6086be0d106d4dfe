"""Aggregation of run metrics into tables, claim verdicts, figures and the paper-vs-ours table."""
