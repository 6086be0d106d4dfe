"""CPU and wall time a job spends scoring one cell's 5 seeds of rationales (megl.metrics.text.text_metrics_many).

    PYTHONPATH=src .venv/bin/python tools/bench_text_scoring.py [--samples 300] [--repeats 3] [--shared-only]

Prints, as JSON, the job's CPU seconds (its own plus its children's: what Snakemake's benchmark
counts) and wall seconds, (a) with every JVM the job's own (MEGL_METEOR_SERVER=0) and (b) with the
machine's shared scorer server warm (a first call starts it, untimed). Synthetic captions (the
words of bird descriptions, fixed seed): the JVM starts, not the text, dominate. Run it on the
code before and after a change (same machine, same load) to compare.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np

WORDS = ["the", "bird", "has", "a", "red", "crown", "black", "wings", "small", "white", "belly", "long", "beak",
         "yellow", "eyes", "brown", "feathers", "short", "tail", "grey", "breast", "striped", "head,", "orange",
         "legs;", "it's", "a", "sparrow.", "with"]


def cell(samples: int, seeds: int = 5, refs: int = 3):
    rng = np.random.default_rng(0)

    def caption() -> str:
        return " ".join(rng.choice(WORDS, size=rng.integers(6, 16))).capitalize() + "."

    references = {f"img{i}": [caption() for _ in range(refs)] for i in range(samples)}
    runs = {seed: {k: caption() for k in references} for seed in range(seeds)}
    return references, runs


def cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, repeats: int) -> dict:
    walls, cpus = [], []
    for _ in range(repeats):
        c0, w0 = cpu(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(cpu() - c0)
    return {"wall_s": round(float(np.median(walls)), 3), "cpu_s": round(float(np.median(cpus)), 3),
            "wall_all": [round(w, 3) for w in walls], "cpu_all": [round(c, 3) for c in cpus]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--shared-only", action="store_true", help="skip (a): time only the warm shared server")
    a = p.parse_args()
    from megl.metrics import text

    refs, runs = cell(a.samples)
    def score():
        return text.text_metrics_many(refs, runs, spice=False)

    os.environ["MEGL_METEOR_SERVER"] = "0"
    own = None if a.shared_only else timed(score, a.repeats)
    reference = score()
    del os.environ["MEGL_METEOR_SERVER"]
    assert score() == reference  # starts the server if none runs; the same numbers
    shared = timed(score, a.repeats)
    print(json.dumps({"samples": a.samples, "seeds": len(runs), "own_jvms": own, "shared_server_warm": shared},
                     indent=1))


if __name__ == "__main__":
    main()
