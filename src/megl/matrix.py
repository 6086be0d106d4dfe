"""The run matrix, read from the config: the one enumeration Snakemake and DVC both follow.

Classifier methods run on every backbone; MLLM baselines have no classifier and run once per
dataset and seed under the backbone folder `mllm`.
"""
from __future__ import annotations

from dataclasses import dataclass

from megl.config import for_backbone
from megl.errors import MEGLError
from megl.methods import MLLM_BACKBONE, get_method


@dataclass(frozen=True, order=True)
class Run:
    dataset: str
    backbone: str
    method: str
    seed: int

    @property
    def path(self) -> str:
        """Folder of the run below the results root: runs/{dataset}/{backbone}/{method}/seed{seed}."""
        return f"runs/{self.dataset}/{self.backbone}/{self.method}/seed{self.seed}"

    @property
    def dvc_stage(self) -> str:
        """DVC's name of the stage that trains and evaluates the run's cell (`dvc repro <name>`)."""
        if self.backbone == MLLM_BACKBONE:
            return f"cell_mllm@{self.dataset}-{self.method}"
        return f"cell@{self.dataset}-{self.backbone}-{self.method}"


def check_method_kinds(matrix: dict) -> None:
    for key, kind in (("methods", "classifier"), ("mllm_methods", "mllm")):
        for name in matrix.get(key, []):
            if get_method(name).kind != kind:
                raise MEGLError(f"config key matrix.{key}: method {name!r} is a {get_method(name).kind} method; "
                                f"list it under matrix.{'mllm_methods' if kind == 'classifier' else 'methods'}")


def enumerate_runs(config: dict) -> list[Run]:
    matrix = config["matrix"]
    check_method_kinds(matrix)
    runs = [Run(d, b, m, s) for d in matrix["datasets"] for b in matrix["backbones"]
            for m in matrix["methods"] for s in matrix["seeds"]]
    runs += [Run(d, MLLM_BACKBONE, m, s) for d in matrix["datasets"]
             for m in matrix.get("mllm_methods", []) for s in matrix["seeds"]]
    return runs


def training_config(config: dict, method: str, backbone: str) -> dict:
    """The part of the config one run's training reads (megl.train). As a rule's params it makes a
    change to another method's hyperparameter (e.g. train.lambda_t, baselines.haics) leave this run alone."""
    m = get_method(method)
    train = dict(for_backbone(config, backbone)["train"])
    if not m.textual:
        train.pop("lambda_t", None)
        train.pop("text_batch_size", None)
    if m.visual_loss != "l1" and not m.consistency:
        train.pop("lambda_v", None)
    bb = config["backbones"] if backbone == MLLM_BACKBONE else config["backbones"][backbone]
    return {
        "device": config["device"],
        "train": train,
        "backbone": bb,
        "pretrain": config.get("pretrain") if backbone != MLLM_BACKBONE and bb.get("weights") == "source" else None,
        "baseline": config.get("baselines", {}).get(m.visual_loss),
        "selection": _selection_of(config, m),
        "seeds": list(config["matrix"]["seeds"]),
        "evaluate": config.get("evaluate"),
        "text": {k: config[k] for k in ("sdtg", "lm", "vision_encoder")} if m.writes_text else None,
    }


def _selection_of(config: dict, method) -> dict | None:
    """The selection settings this method's cell reads: only the grids of its own guidance weights."""
    keys = method.guidance_keys
    if not keys:
        return None
    sel = config["selection"]
    grids = {"train.lambda_v": "lambda_v", "train.lambda_t": "lambda_t"}
    return {"seed": sel["seed"], "metric": sel["metric"],
            "grid": {grids.get(k, "weight"): sel["grid"][grids.get(k, "weight")] for k in keys}}
