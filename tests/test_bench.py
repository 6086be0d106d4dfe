"""`make bench`'s micro-benchmark runs on the default config (pretrained-trunk default) and writes its JSON."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from megl.bench import train_step

REPO = Path(__file__).resolve().parents[1]


def test_train_step_bench_runs_on_default_config(tmp_path):
    out = tmp_path / "bench" / "train_step.json"
    rc = train_step.main(["--config", str(REPO / "config" / "config.yaml"), "--out", str(out), "--batch", "4",
                          "--image-size", "32", "--warmup", "0", "--repeats", "1", "--threads", "1"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res["ms"]) == {"ce", "explain", "megl", "loop"}
    assert all(v > 0 for v in res["ms"].values())
    assert res["batch"] == 4 and res["image_size"] == 32


def test_trunk_weights_only_for_source(tmp_path):
    from megl.models.backbones import build_classifier

    bb = {"family": "resnet18", "widths": [4, 4, 8, 8], "image_size": 32, "weights": "source", "frozen_stages": 4}
    path = train_step.trunk_weights(bb, tmp_path)
    assert path is not None and path.is_file()
    clf = build_classifier(bb, 3, path)  # loads and freezes like a cell's trunk
    assert not any(p.requires_grad for n, p in clf.net.named_parameters() if n.startswith("layer3"))
    assert train_step.trunk_weights({**bb, "weights": None}, tmp_path / "none") is None
    with pytest.raises(Exception, match="source"):
        build_classifier(bb, 3)


def _benchmark_patterns() -> list[str]:
    """Every `benchmark:` path the workflow's rules declare, below results/benchmarks/."""
    import re

    text = "\n".join(p.read_text() for p in sorted((REPO / "workflow").rglob("*.smk")))
    text += (REPO / "workflow" / "Snakefile").read_text()
    return re.findall(r'benchmark:\s*\n\s*f?"\{RESULTS\}/benchmarks/([^"]+)"', text)


def test_every_benchmarked_rule_has_a_declared_start(tmp_path):
    """megl.bench.workflow sums a start-up per job kind: a new rule with a benchmark file but no declared
    start (JOB_STARTS) would be counted as nothing, so the share would be too low."""
    from megl.bench import workflow

    patterns = _benchmark_patterns()
    assert len(patterns) >= 10, patterns  # the regex still finds the rules' benchmark paths
    bench = tmp_path / "results" / "benchmarks"
    fill = {"{{dataset}}": "objects", "{{backbone}}": "resnet18"}
    for pattern in patterns:
        for method in ("baseline", "megl"):
            path = pattern.replace("{{method}}", method)
            for key, value in fill.items():
                path = path.replace(key, value)
            (bench / path).parent.mkdir(parents=True, exist_ok=True)
            (bench / path).write_text("s\n1.0\n")
    (bench / "scores" / "objects" / "mllm").mkdir(parents=True)
    (bench / "scores" / "objects" / "mllm" / "llava_vqa.tsv").write_text("s\n1.0\n")
    kinds = workflow.job_kinds(tmp_path / "results")
    codes = {kind: workflow._start_code(kind) for kind in kinds}  # raises for an undeclared kind
    assert {"cells", "cells+text", "scores", "scores-mllm", "data/standin", "report/tables"} <= set(kinds)
    assert "peft" in codes["cells+text"] and "peft" not in codes["cells"]
    assert "torch" in codes["scores"] and "torch" not in codes["scores-mllm"]
    with pytest.raises(SystemExit, match="no start-up declared"):
        workflow._start_code("a_new_rule")


def test_startup_share_weighs_each_kind_by_its_jobs():
    from megl.bench.workflow import startup_share

    share = startup_share({"cells": 10, "scores": 30}, {"cells": 4.0, "scores": 1.0}, job_seconds=1000.0)
    assert share == {"startup_job_s": 70.0, "startup_share": 0.07}
