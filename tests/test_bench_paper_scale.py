"""The paper-scale device benchmark, run with --small on the CPU: the same code path as on a GPU."""
from __future__ import annotations

import json
import math
from pathlib import Path

from megl.bench.paper_scale import main
from megl.config import load_config
from megl.plan import plan

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "paper.yaml"


def test_small_run_covers_every_family_with_finite_losses_and_gradients(tmp_path):
    out = tmp_path / "paper_scale.json"
    assert main(["--config", str(PAPER), "--small", "--device", "cpu", "--warmup", "0", "--steps", "1",
                 "--out", str(out)]) == 0
    r = json.loads(out.read_text(encoding="utf-8"))
    assert r["errors"] == {} and r["small"] is True
    expected = {f"{f}/{b}" for f in ("baseline", "visual", "cdep", "text") for b in ("resnet18", "vit_b_16")}
    assert set(r["families"]) == expected | {"mllm/mllm"}
    for key, fam in r["families"].items():
        assert fam["losses_finite"] and fam["grad_reached"], key
        assert all(math.isfinite(v) for v in fam["losses"].values()) and fam["ms_per_step"] > 0, key
    for b in ("resnet18", "vit_b_16"):  # the real loss terms of each family ran
        assert "loss_visual" in r["families"][f"visual/{b}"]["losses"]
        text = r["families"][f"text/{b}"]
        assert {"loss_textual", "loss_visual", "loss_dc"} <= set(text["losses"])
        assert text["text_grad_reaches_first_layer"]  # L_textual alone reaches the classifier's first layer
    assert r["families"]["mllm/mllm"]["grad_reaches"] == "LoRA adapters"
    config = load_config(PAPER)  # shrunk shapes, but the configured dtype and checkpointing of the GPU run
    assert r["text_models"]["lm_dtype"] == config["lm"]["dtype"]
    assert r["text_models"]["gradient_checkpointing"] == bool(config["lm"].get("gradient_checkpointing"))
    assert r["scoring"]["scores_finite"] and r["scoring"]["ms_per_batch"] > 0
    # GPU-hours: plan's steps x measured ms per step, summed per method; 4 GPUs share the same work
    steps = plan(config, memory=False)
    one, four = r["gpu_hours"]["1"], r["gpu_hours"]["4"]
    assert one["missing"] == [] and four["total_gpu_hours"] == one["total_gpu_hours"]
    assert four["wall_hours_lower_bound"] < one["wall_hours_lower_bound"]
    ms = {k: v["ms_per_step"] for k, v in r["families"].items()}
    megl = sum(j["steps"] * ms[f"text/{j['backbone']}"] for j in steps["jobs"] if j["method"] == "megl") / 3.6e6
    assert math.isclose(one["per_method_gpu_hours"]["megl"], megl, rel_tol=1e-3, abs_tol=5e-4)  # rounded to 3 decimals
    assert r["gpu_hours"]["mllm_closed_set_scoring"] > 0
