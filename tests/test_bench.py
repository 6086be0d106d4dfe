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
