"""`megl plan`: the paper-scale models at their real shapes on the meta device, their published sizes,
the memory components and the step counts of every job of the matrix."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from megl.cli import main
from megl.config import load_config
from megl.errors import MEGLError
from megl.plan import per_unit, plan

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "paper.yaml"

# Published sizes: torchvision's ImageNet models (1000-class heads), Llama-2-7B / Vicuna-7B,
# CLIP ViT-L/14's vision tower.
RESNET18_IMAGENET, RESNET18_FEATURES = 11_689_512, 512
VIT_B_16_IMAGENET, VIT_B_16_FEATURES = 86_567_656, 768
LLAMA_7B = 6_738_415_616


def with_classes(imagenet_params: int, features: int, k: int) -> int:
    """The model's size with a k-class linear head in place of the 1000-class one."""
    return imagenet_params - (features + 1) * 1000 + (features + 1) * k


@pytest.fixture(scope="module")
def paper_plan(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan") / "plan.json"
    assert main(["plan", "--config", str(PAPER), "--json", str(out)]) == 0
    return json.loads(out.read_text(encoding="utf-8"))


def test_paper_models_have_their_published_sizes(paper_plan):
    m = paper_plan["models"]
    for k in (40, 127):
        assert m["classifiers"][f"resnet18 ({k} classes)"]["params"] == with_classes(RESNET18_IMAGENET, 512, k)
        assert m["classifiers"][f"vit_b_16 ({k} classes)"]["params"] == with_classes(VIT_B_16_IMAGENET, 768, k)
    assert 303e6 < m["clip_vision"]["params"] < 304e6  # CLIP ViT-L/14 vision tower: 303.2 M
    lm = m["lm"]
    assert lm["params"] - lm["trainable"] == LLAMA_7B
    # LoRA r=128 on every projection: per layer r*(in+out) of q,k,v,o (4096->4096), gate/up (4096->11008), down
    r, h, i = 128, 4096, 11008
    per_layer = r * (4 * (h + h) + 2 * (h + i) + (i + h))
    assert lm["trainable"] == m["lora"]["analytic"] == 32 * per_layer
    assert lm["dtype"] == "bfloat16" and m["clip"]["dtype"] == "bfloat16"


def test_paper_jobs_steps_and_memory(paper_plan):
    config = load_config(PAPER)
    jobs = {(j["dataset"], j["backbone"], j["method"]): j for j in paper_plan["jobs"]}
    expected = set()  # one job per cell of the union of the matrix's blocks
    for block in config["matrix"]["blocks"].values():
        expected |= {(d, b, m) for d in block["datasets"] for b in block["backbones"] for m in block["methods"]}
        expected |= {(d, "mllm", m) for d in block["datasets"] for m in block.get("mllm_methods", [])}
    assert set(jobs) == expected and paper_plan["totals"]["jobs"] == len(expected)
    assert paper_plan["methods"]["megl"]["jobs"] == 4 and paper_plan["methods"]["llava_vqa"]["jobs"] == 2
    assert paper_plan["methods"]["megl_no_sdtg"]["jobs"] == 2  # Table 4's ablations: Object-ME only
    # megl on objects: 3 candidates with the selection seed + 5 reported seeds; floor(train / 16) steps x 3 epochs
    megl = jobs[("objects", "resnet18", "megl")]
    assert megl["trainings"] == 3 + 5
    assert megl["steps"] == 8 * (round(config["split"]["train"] * 4790) // 16) * 3
    assert jobs[("objects", "resnet18", "baseline")]["trainings"] == 5
    assert paper_plan["totals"]["steps"] == sum(j["steps"] for j in jobs.values())
    # memory: AdamW keeps two states per trainable parameter; 16 bytes per trainable fp32 parameter in all
    base = jobs[("objects", "vit_b_16", "baseline")]
    assert base["weight_bytes"] == 4 * base["params"] and base["optimizer_bytes"] == 2 * base["grad_bytes"]
    # the 7B LM in bf16 dominates a text job's weights; checkpointing only shrinks the LM's activations
    assert megl["weight_bytes"] > 2 * LLAMA_7B
    assert megl["total_bytes_checkpointed"] < megl["total_bytes_plain"]
    assert megl["total_bytes"] == megl["total_bytes_checkpointed" if config["lm"].get("gradient_checkpointing")
                                       else "total_bytes_plain"]
    assert megl["activation_bytes"]["clip"] > 0  # L_textual flows back through CLIP into Â
    assert jobs[("objects", "resnet18", "megl_no_sdtg")]["activation_bytes"]["clip"] == 0
    for j in jobs.values():
        assert all(j["fits_checkpointed"][g] or not j["fits_plain"][g] for g in j["fits"])


def test_saved_bytes_counts_what_autograd_keeps():
    """Linear saves its input (weight: constant, dropped), ReLU its output: fp32, per sample 4*(10+20) bytes."""
    net = nn.Sequential(nn.Linear(10, 20), nn.ReLU())
    assert per_unit(lambda n: net(torch.empty(n, 10))) == 4 * (10 + 20)
    with torch.device("meta"):
        net = nn.Sequential(nn.Linear(10, 20), nn.ReLU())
    assert per_unit(lambda n: net(torch.empty(n, 10, device="meta"))) == 4 * (10 + 20)


def test_tiny_config_plans_and_lora_matches_peft():
    p = plan(load_config(REPO / "config" / "config.yaml"))
    m = p["models"]
    assert m["lm"]["trainable"] == m["lora"]["analytic"] > 0
    assert {j["family"] for j in p["jobs"]} >= {"baseline", "visual", "text", "cdep"}


def test_unknown_official_dataset_stops_naming_the_key():
    config = load_config(PAPER)
    config["datasets"]["mine"] = config["datasets"].pop("objects")
    for block in config["matrix"]["blocks"].values():
        block["datasets"] = ["mine" if d == "objects" else d for d in block["datasets"]]
    with pytest.raises(MEGLError, match="datasets.mine"):
        plan(config)


def test_micro_batch_shrinks_the_activations_not_the_steps():
    config = load_config(REPO / "config" / "config.yaml")
    config["train"]["text_batch_size"] = None
    whole = plan(config)
    config["train"]["micro_batch_size"] = 2
    micro = plan(config)
    for a, b in zip(whole["jobs"], micro["jobs"]):
        assert b["steps"] == a["steps"] and b["weight_bytes"] == a["weight_bytes"]
        assert b["activation_bytes"]["classifier"] * a["batch"] == a["activation_bytes"]["classifier"] * 2
        if a["family"] in ("text", "mllm"):
            assert b["activation_bytes"]["lm"] * a["text_batch"] == a["activation_bytes"]["lm"] * 2
