"""Shared fixtures: one tiny stand-in dataset, its split, pretrained tiny text models, a tiny config.

Built once per test session (a few seconds) so that end-to-end train/evaluate tests stay fast.
"""
from __future__ import annotations

import copy
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The manuscript PDF is never a default target in the tests (workflow/rules/common.smk): whether latexmk
# is installed must not change a test's DAG or outcome. Tests that want it set MEGL_PDF themselves.
os.environ["MEGL_PDF"] = "0"

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY_IMAGE_SIZE = 32
TINY_N_IMAGES = 80


def make_tiny_config() -> dict:
    """config/smoke.yaml with every size shrunk: 32 px images, narrow nets, 1 epoch, 2 steps."""
    from megl.config import validate_config

    cfg = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text(encoding="utf-8"))
    full = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    cfg["baselines"] = copy.deepcopy(full["baselines"])  # smoke.yaml has no baseline section
    cfg["datasets"]["objects"]["standin"].update(n_images=TINY_N_IMAGES, image_size=TINY_IMAGE_SIZE)
    # trained from scratch here (weights: null, nothing frozen); tests/test_cell.py pretrains a tiny trunk
    cfg["backbones"]["resnet18"].update(widths=[8, 8, 16, 16], image_size=TINY_IMAGE_SIZE, weights=None,
                                        frozen_stages=0)
    cfg["backbones"]["vit_b_16"].update(image_size=TINY_IMAGE_SIZE, patch_size=8, hidden_dim=16, num_layers=1,
                                        num_heads=2, mlp_dim=32, weights=None, frozen_stages=0)
    cfg["pretrain"].update(n_images=40, epochs=1, batch_size=16)
    cfg["vision_encoder"]["tiny"].update(hidden_size=16, num_layers=1, num_heads=2, patch_size=8,
                                         projection_dim=16, epochs=1, batch_size=32)
    cfg["lm"]["tiny"].update(hidden_size=16, num_layers=1, num_heads=2, vocab_size=300, epochs=1)
    cfg["sdtg"]["max_rationale_tokens"] = 12
    cfg["train"].update(epochs=1, batch_size=16, max_steps_per_epoch=2, num_threads=1)
    cfg["evaluate"].update(batch_size=32, n_saliency_samples=3)
    cfg["evaluate"]["decoding"]["max_new_tokens"] = 6
    cfg["evaluate"]["latency"].update(warmup=1, repeats=2)
    return validate_config(cfg, "tests/conftest.py:tiny_config")


@dataclass(frozen=True)
class TinyData:
    root: Path        # stand-in dataset in the official ME format
    split: Path       # split file
    pretrained: Path  # tokenizer + tiny CLIP + tiny LM
    config: dict      # the config the pretraining used (do not mutate; use tiny_config)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> TinyData:
    """Stand-in `objects` (80 images, 32 px, 25 % annotated), its seeded split, and the pretrained
    tiny text models, built once per session."""
    from megl.data.annotations import read_dataset
    from megl.data.split import write_split
    from megl.data.standin import make_standin
    from megl.pretrain import pretrain_for_dataset

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("tiny_data")
    config = make_tiny_config()
    root, split = base / "objects", base / "split.json"
    make_standin("objects", root, seed=0, n_images=TINY_N_IMAGES, image_size=TINY_IMAGE_SIZE,
                 annotated_fraction=0.25)
    write_split(read_dataset(root), split, config["split"]["seed"],
                {k: config["split"][k] for k in ("train", "val", "test")})
    pretrained = base / "pretrained"
    pretrain_for_dataset(config, root, split, pretrained)
    return TinyData(root, split, pretrained, config)


@pytest.fixture
def tiny_config(tiny_data) -> dict:
    """A fresh deep copy of the tiny config, free to modify in a test."""
    return copy.deepcopy(tiny_data.config)


@pytest.fixture(scope="module")
def evaluated(tiny_data, tmp_path_factory):
    """A trained + evaluated baseline run on the tiny stand-in (module scope: trained once per module):
    (run folder, its metrics, the config it was trained with)."""
    from megl.evaluate import evaluate_run
    from megl.train import train_run

    config = copy.deepcopy(tiny_data.config)
    run = tmp_path_factory.mktemp("eval") / "baseline"
    train_run(config, dataset="objects", backbone="resnet18", method="baseline", seed=0, run_dir=run,
              data_root=tiny_data.root, split_path=tiny_data.split, pretrained_dir=tiny_data.pretrained)
    metrics = evaluate_run(config, run, tiny_data.root, tiny_data.split, tiny_data.pretrained)
    return run, metrics, config


class Killed(RuntimeError):
    """Raised by `kill_after_checkpoint` in place of a kill -9 right after an epoch's checkpoint."""


@pytest.fixture
def kill_after_checkpoint(monkeypatch):
    """`arm()`: the next training dies right after writing an epoch's checkpoint (raises Killed), as a
    kill -9 would leave it; `arm()` returns the function that restores the real checkpoint writer."""
    import megl.rundir as rundir_mod

    real_save = rundir_mod.save_checkpoint

    def save_then_die(run_dir, model, optimizer, epoch, log_rows):
        real_save(run_dir, model, optimizer, epoch, log_rows)
        raise Killed(f"killed after epoch {epoch}")

    def arm():
        monkeypatch.setattr(rundir_mod, "save_checkpoint", save_then_die)
        return lambda: monkeypatch.setattr(rundir_mod, "save_checkpoint", real_save)

    return arm


def zip_official(data: Path, zip_path: Path, top: str) -> Path:
    """Pack the dataset folder `data` as an official ME zip (every file below `top/`), then remove
    the folder: what `megl unpack-data` and the workflow's official-data path read."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w") as zf:
        for f in sorted(data.rglob("*")):
            if f.is_file():
                zf.write(f, f"{top}/{f.relative_to(data).as_posix()}")
    shutil.rmtree(data)
    return zip_path
