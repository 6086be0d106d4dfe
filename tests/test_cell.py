"""One process per method cell (megl.cell): the selection protocol, its blindness to the test split,
and runs that equal what the single-run commands give."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from megl.backbone_pretrain import pretrain_backbone, source_images
from megl.cell import guidance_grid, run_cell, with_overrides
from megl.data.annotations import read_dataset
from megl.data.tensors import load_cache, save_cache
from megl.errors import MEGLError
from megl.evaluate import evaluate_run
from megl.features import cache_features
from megl.methods import get_method
from megl.score import score_runs
from megl.train import lr_factor, train_run

TIMING = {"latency_ms", "fps", "latency_device", "scorer_versions", "split"}


@pytest.fixture(scope="module")
def frozen_setup(tiny_data, tmp_path_factory):
    """A tiny trunk pretrained on the source task, a config that freezes it, and its feature cache."""
    base = tmp_path_factory.mktemp("cell")
    config = copy.deepcopy(tiny_data.config)
    config["backbones"]["resnet18"].update(weights="source", frozen_stages=4)
    config["train"].update(epochs=2, max_steps_per_epoch=None, schedule="cosine", warmup_fraction=0.1)
    config["selection"]["grid"].update(lambda_v=[1.0, 10.0], lambda_t=[0.1, 1.0], weight=[1.0, 10.0])
    weights = base / "resnet18.safetensors"
    pretrain_backbone(config["backbones"]["resnet18"], config["pretrain"], weights)
    cache = base / "features.safetensors"
    cache_features(config, dataset_root=tiny_data.root, split_path=tiny_data.split, backbone="resnet18",
                   backbone_weights=weights, out=cache)
    return base, config, weights, cache


def _cell(tiny_data, setup, method, out, cache=None, seeds=(0, 1)):
    """The workflow's two jobs of a cell: run_cell (select, train, predict), then score (metrics.json)."""
    base, config, weights, default_cache = setup
    selection = run_cell(config, dataset="objects", backbone="resnet18", method=method, seeds=list(seeds),
                         runs_root=out / "runs", selection_out=out / "selection.json", data_root=tiny_data.root,
                         split_path=tiny_data.split, cache_path=cache or default_cache,
                         pretrained_dir=tiny_data.pretrained, backbone_weights=weights)
    score_runs([out / "runs" / f"seed{seed}" for seed in seeds])
    return selection


def test_guidance_grid_is_zipped_and_the_same_size_for_every_guided_method(tiny_config):
    grid = tiny_config["selection"]["grid"]
    sizes = set()
    for name in ("megl", "megl_visual_only", "megl_text_only", "haics", "cdep", "res_l"):
        points = guidance_grid(tiny_config, get_method(name))
        assert all(set(p) == set(get_method(name).guidance_keys) for p in points)
        sizes.add(len(points))
    assert sizes == {len(grid["lambda_v"])}
    assert guidance_grid(tiny_config, get_method("baseline")) == []
    assert guidance_grid(tiny_config, get_method("llava_vqa")) == []
    megl = guidance_grid(tiny_config, get_method("megl"))
    assert [p["train.lambda_v"] for p in megl] == grid["lambda_v"]
    assert [p["train.lambda_t"] for p in megl] == grid["lambda_t"]
    assert with_overrides(tiny_config, megl[-1])["train.lambda_t".split(".")[0]]["lambda_t"] == grid["lambda_t"][-1]


def test_lr_schedule_warms_up_then_decays_to_zero():
    factors = [lr_factor(s, 100, "cosine", 0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[-1] < 0.01
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert lr_factor(50, 100, "constant", 0.0) == 1.0


def test_source_task_is_deterministic_and_not_the_target_classes():
    a, la = source_images(14, 32, 5)
    b, lb = source_images(14, 32, 5)
    assert torch.equal(a, b) and torch.equal(la, lb) and a.dtype == torch.uint8
    assert set(la.tolist()) <= set(range(7))


@pytest.mark.parametrize("method", ["megl_visual_only", "cdep"])
def test_cell_runs_equal_the_single_run_commands(tiny_data, frozen_setup, tmp_path, method):
    """Trained and evaluated inside the cell (cached features; CDEP's trunk decomposition computed
    once and reused by every candidate and seed) or by `megl train` + `megl evaluate` (features
    computed in the process): same weights, same metrics."""
    base, config, weights, cache = frozen_setup
    selection = _cell(tiny_data, frozen_setup, method, tmp_path / "cell", seeds=(1,))
    assert selection["chosen"] and len(selection["candidates"]) == 2
    run_config = with_overrides(config, selection["chosen"])
    single = tmp_path / "single"
    train_run(run_config, dataset="objects", backbone="resnet18", method=method, seed=1, run_dir=single,
              data_root=tiny_data.root, split_path=tiny_data.split, pretrained_dir=tiny_data.pretrained,
              backbone_weights=weights)
    evaluate_run(run_config, single, tiny_data.root, tiny_data.split, tiny_data.pretrained, weights)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "cell" / "runs" / "seed1" / "model.safetensors"))
    b = load_file(str(single / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma = json.loads((tmp_path / "cell" / "runs" / "seed1" / "metrics.json").read_text())
    mb = json.loads((single / "metrics.json").read_text())
    assert {k: v for k, v in ma.items() if k not in TIMING} == {k: v for k, v in mb.items() if k not in TIMING}
    cell_log = tmp_path / "cell" / "runs" / "seed1" / "train_log.csv"
    assert cell_log.read_text() == (single / "train_log.csv").read_text()


def test_selection_never_reads_the_test_split(tiny_data, frozen_setup, tmp_path):
    """A cache whose test split is garbage (wrong labels, blank images and features) leaves the choice
    and every validation score unchanged; only the test metrics move."""
    base, config, weights, cache = frozen_setup
    splits, meta = load_cache(cache)
    test = splits["test"]
    test.labels = (test.labels + 1) % read_dataset(tiny_data.root).num_classes
    test.images = torch.zeros_like(test.images)
    test.features = torch.zeros_like(test.features)
    poisoned = tmp_path / "poisoned.safetensors"
    save_cache(poisoned, splits, meta)
    clean = _cell(tiny_data, frozen_setup, "haics", tmp_path / "clean", seeds=(0,))
    dirty = _cell(tiny_data, frozen_setup, "haics", tmp_path / "dirty", cache=poisoned, seeds=(0,))
    assert clean == dirty
    assert (tmp_path / "clean" / "selection.json").read_bytes() == (tmp_path / "dirty" / "selection.json").read_bytes()
    labels = [[json.loads(line)["label"] for line in (tmp_path / d / "runs" / "seed0" / "predictions.jsonl")
               .read_text().splitlines()] for d in ("clean", "dirty")]
    assert labels[0] != labels[1]  # the test split itself did change


def test_unguided_method_skips_selection_and_writes_every_seed(tiny_data, frozen_setup, tmp_path):
    selection = _cell(tiny_data, frozen_setup, "baseline", tmp_path, seeds=(0, 1))
    assert selection["candidates"] == [] and selection["chosen"] == {}
    for seed in (0, 1):
        folder = tmp_path / "runs" / f"seed{seed}"
        for name in ("model.safetensors", "metrics.json", "predictions.jsonl", "train_done.json", "run.json"):
            assert (folder / name).is_file(), folder / name
        assert json.loads((folder / "run.json").read_text())["run"]["seed"] == seed
    assert not list(Path(tmp_path).rglob("*.tmp*"))


def test_text_loss_reads_only_the_first_k_samples(tiny_data, tiny_config):
    """train.text_batch_size = k: L_textual is SDTG's loss on the batch's first k samples, whatever the rest say."""
    from megl.data.split import read_split
    from megl.data.tensors import decode_split
    from megl.models.build import build_run_model
    from megl.objective import batch_losses

    cfg = copy.deepcopy(tiny_config)
    cfg["train"]["text_batch_size"] = 3
    data = read_dataset(tiny_data.root)
    train = decode_split(data, read_split(tiny_data.split, data)["train"], 32, with_full_maps=False)
    torch.manual_seed(0)
    model = build_run_model(cfg, get_method("megl_text_only"), cfg["backbones"]["resnet18"], data.num_classes,
                            tiny_data.pretrained)
    model.train(False)
    batch = train.batch(torch.arange(8), torch.device("cpu"))
    rationales = [r[0] for r in batch["rationales"]]
    a = batch_losses(model, batch, cfg["train"], None, cfg, rationales)["loss_textual"]
    other = rationales[:3] + ["something else entirely"] * 5
    b = batch_losses(model, batch, cfg["train"], None, cfg, other)["loss_textual"]
    assert float(a) == pytest.approx(float(b))
    cfg["train"]["text_batch_size"] = None
    c = batch_losses(model, batch, cfg["train"], None, cfg, other)["loss_textual"]
    assert float(c) != pytest.approx(float(a))


def test_regime_pilot_scores_each_candidate_on_validation(tiny_data, frozen_setup):
    from megl.bench.regime_pilot import parse_candidate, pilot

    base, config, weights, cache = frozen_setup
    candidate = parse_candidate("train.lr=3e-3,train.epochs=1")
    assert candidate == {"train.lr": 0.003, "train.epochs": 1}
    row = pilot(config, "objects", "resnet18", candidate, [0, 1], data_root=tiny_data.root,
                split_path=tiny_data.split, cache_path=cache, backbone_weights=weights)
    assert len(row["val"]) == 2 and "test" not in row  # the pilot never reads the test split
    assert all(0.0 <= v <= 1.0 for v in row["val"])
    again = pilot(config, "objects", "resnet18", candidate, [0], data_root=tiny_data.root,
                  split_path=tiny_data.split, cache_path=cache, backbone_weights=weights)
    assert again["val"][0] == row["val"][0]  # deterministic per seed
    # a trunk-depth candidate trains from the images: the cache holds the frozen trunk's features
    deeper = pilot(config, "objects", "resnet18", {"backbones.resnet18.frozen_stages": 0}, [0],
                   data_root=tiny_data.root, split_path=tiny_data.split, cache_path=cache, backbone_weights=weights)
    assert 0.0 <= deeper["val"][0] <= 1.0


def test_one_se_rule_prefers_the_weaker_guidance_within_noise():
    from megl.cell import binomial_se, choose

    assert choose([0.80, 0.82, 0.70], 240, "best") == 1
    assert binomial_se(0.82, 240) > 0.02  # .82 - .80 is within one SE on 240 images
    assert choose([0.80, 0.82, 0.70], 240, "one_se") == 0
    assert choose([0.70, 0.82, 0.80], 240, "one_se") == 1  # the stronger wins by more than its SE
    assert choose([0.80, 0.80, 0.80], 240, "one_se") == 0


def test_the_selection_seed_is_never_a_reported_seed(tiny_data, frozen_setup, tmp_path):
    """The candidates train with selection.seed; every reported seed is trained afresh, and a cell
    asked to report the selection seed is refused before anything is written."""
    base, config, weights, cache = frozen_setup
    sel_seed = int(config["selection"]["seed"])
    with pytest.raises(MEGLError, match="must never be a reported seed"):
        _cell(tiny_data, frozen_setup, "haics", tmp_path / "bad", seeds=(sel_seed,))
    assert not (tmp_path / "bad").exists()
    selection = json.loads(json.dumps(_cell(tiny_data, frozen_setup, "haics", tmp_path / "ok", seeds=(0,))))
    assert selection["seed"] == sel_seed != 0 and selection["rule"] == "one_se"
    assert all("se" in c for c in selection["candidates"]) and selection["n_val"] > 0
    metrics = json.loads((tmp_path / "ok" / "runs" / "seed0" / "metrics.json").read_text())
    assert 0.0 <= metrics["val_accuracy"] <= 1.0 and metrics["num_classes"] == read_dataset(tiny_data.root).num_classes
