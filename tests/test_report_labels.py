"""Honest labels: a stand-in dataset is named as one and a small CPU backbone as what it is, in every
table and figure; the paper's names (Object-ME, Action-ME, ResNet18, ViT-B/16) only for runs on the
paper's data and models. The labels come from the config and are passed to the report code."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import matplotlib.text
import pytest
import yaml

from megl.matrix import enumerate_runs
from megl.report import build, figures
from megl.report.collect import required_keys
from megl.report.labels import Labels, labels_from_config

REPO = Path(__file__).resolve().parents[1]
PAPER_NAMES = ("Object-ME", "Action-ME", "ViT-B/16")


def _config(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text(encoding="utf-8"))


def test_labels_of_the_embedded_default_name_what_runs():
    labels = labels_from_config(_config("config.yaml"))
    assert [labels.dataset(d) for d in ("objects", "actions", "digits")] == [
        "objects (stand-in)", "actions (stand-in)", "digits (stand-in)"]
    assert labels.backbone("resnet18") == "ResNet18-narrow" and labels.backbone("vit_b_16") == "ViT-tiny"
    assert labels.backbone("mllm") == "MLLM (tiny LM)"
    smoke = labels_from_config(_config("smoke.yaml"))  # wider, still not torchvision's ResNet18
    assert smoke.backbone("resnet18") == "ResNet18-narrow" and smoke.dataset("objects") == "objects (stand-in)"


def test_paper_names_only_for_the_papers_data_and_models():
    paper = _config("paper.yaml")
    labels = labels_from_config(paper)
    assert labels.dataset("objects") == "Object-ME" and labels.dataset("actions") == "Action-ME"
    assert labels.backbone("resnet18") == "ResNet18" and labels.backbone("vit_b_16") == "ViT-B/16"
    assert labels.backbone("mllm") == "MLLM"
    half = copy.deepcopy(paper)
    half["datasets"]["objects"]["source"] = "standin"
    half["backbones"]["vit_b_16"]["num_layers"] = 6
    labels = labels_from_config(half)
    assert labels.dataset("objects") == "objects (stand-in)" and labels.backbone("vit_b_16") == "ViT-tiny"
    assert Labels().dataset("objects") == "objects"  # no config: the key, never a paper name


def _forbidden(text: str) -> list[str]:
    """Paper names in `text`: Object-ME, Action-ME, ViT-B/16, or ResNet18 not followed by -narrow."""
    hits = [name for name in PAPER_NAMES if name in text]
    hits += [m.group(0) for m in re.finditer(r"ResNet18(?!-narrow)\S*", text)]
    return hits


def _write_run(root: Path, dataset: str, backbone: str, method: str, seed: int) -> None:
    folder = root / "runs" / dataset / backbone / method / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    record = {k: 0.5 + 0.01 * seed + (0.05 if method == "megl" else 0.0) for k in required_keys()}
    record.update(params=11_000, latency_ms=1.0, fps=1000.0, n_test=40, spice=None, notes={"spice": "off"})
    record["run"] = {"dataset": dataset, "backbone": backbone, "method": method, "seed": seed}
    (folder / "metrics.json").write_text(json.dumps(record))
    (folder / "train_log.csv").write_text("epoch,step,loss,loss_pred\n0,0,1.0,1.0\n0,1,0.8,0.8\n")


@pytest.mark.parametrize("config_name", ["config.yaml", "smoke.yaml"])
def test_no_table_or_figure_of_standin_runs_carries_a_paper_name(tmp_path, monkeypatch, config_name):
    config = _config(config_name)
    matrix = config["matrix"]
    if "blocks" in matrix:   # every block kept with its baseline and MEGL only, no MLLM
        blocks = {name: dict(block, methods=[m for m in block["methods"] if m in ("baseline", "megl")],
                             mllm_methods=[]) for name, block in matrix["blocks"].items()}
        matrix.update(blocks={name: block for name, block in blocks.items() if block["methods"]}, seeds=[0, 1, 2])
    else:
        matrix.update(methods=["baseline", "megl"], mllm_methods=[], seeds=[0, 1, 2])
    for run in enumerate_runs(config):
        _write_run(tmp_path, run.dataset, run.backbone, run.method, run.seed)
    written = build.build_tables(config, tmp_path, tmp_path / "tables", REPO / "config" / "published.yaml", 0.05)
    for path in written:
        text = path.read_text(encoding="utf-8")
        if path.stem == "paper_vs_ours":  # the Published column is the paper's; Dataset/Backbone are ours
            import pandas as pd

            frame = pd.read_csv(path) if path.suffix == ".csv" else None
            if frame is not None:
                assert not _forbidden(" ".join(frame["Dataset"]) + " " + " ".join(frame["Backbone"]))
                assert set(frame["Data"]) == {"stand-in"}
            continue
        assert not _forbidden(text), (path.name, _forbidden(text))
    assert "(stand-in)" in (tmp_path / "tables" / "table2.md").read_text()
    assert "ResNet18-narrow" in (tmp_path / "tables" / "claims.md").read_text()

    texts: list[str] = []
    real_save = figures.save_figure

    def spy(fig, out_stem):
        texts.extend(t.get_text() for t in fig.findobj(matplotlib.text.Text))
        return real_save(fig, out_stem)

    monkeypatch.setattr(figures, "save_figure", spy)
    monkeypatch.setattr(build, "qualitative_pair", lambda config, results: None)
    build.build_figures(config, tmp_path, tmp_path / "figures")
    joined = "\n".join(texts)
    assert "objects (stand-in) / ResNet18-narrow" in joined and "ViT-tiny" in joined
    assert not _forbidden(joined), _forbidden(joined)
