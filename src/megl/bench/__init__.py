"""Micro-benchmarks (not tests). Run without make:

    python -m megl.bench.train_step --out results/bench/train_step.json

docs/benchmarks.md says what each number means.
"""
