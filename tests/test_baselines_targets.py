"""Binary grid targets of the baselines (`megl.losses.binary_grid_target`): every annotated map
of every stand-in has a positive cell on the default backbones' Grad-CAM grids."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from megl.data.annotations import read_dataset
from megl.data.dataset import MEDataset
from megl.data.standin import make_standin
from megl.losses import binary_grid_target, downsample_map
from megl.matrix import matrix_backbones
from megl.models.backbones import cam_grid_size

CONFIG = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())
THRESHOLDS = [float(CONFIG["saliency_target"]["threshold"])]  # the one threshold of every saliency target


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


# ---------------------------------------------------------------- the rule itself
def test_thin_annotation_keeps_its_cells():
    maps = torch.zeros(1, 1, 64, 64)
    maps[0, 0, 10, 3:40] = 1.0  # one pixel thick: 1/8 of each 8x8 cell it crosses
    target = binary_grid_target(maps, (8, 8), 0.5)
    assert target.shape == (1, 8, 8) and target.dtype == torch.float32
    assert target[0, 1, :5].tolist() == [1.0] * 5 and float(target.sum()) == 5
    assert not bool((downsample_map(maps, (8, 8)) >= 0.5).any())  # area averaging lost it


def test_binarises_at_the_maps_own_resolution():
    maps = torch.full((2, 16, 16), 0.4)  # everywhere below the threshold: nothing annotated
    maps[1, 0, 0] = 0.6
    target = binary_grid_target(maps, (4, 4), 0.5)
    assert float(target[0].sum()) == 0 and float(target[1].sum()) == 1 and float(target[1, 0, 0]) == 1
    assert set(torch.unique(target).tolist()) <= {0.0, 1.0}


def test_block_maps_match_area_rule_and_shapes():
    gen = torch.Generator().manual_seed(0)
    cells = (torch.rand(3, 4, 4, generator=gen) > 0.5).float()
    maps = cells.repeat_interleave(8, 1).repeat_interleave(8, 2)  # (3, 32, 32), cell-aligned blocks
    torch.testing.assert_close(binary_grid_target(maps, (4, 4), 0.5), cells)
    torch.testing.assert_close(binary_grid_target(maps[:, None], (4, 4), 0.5), cells)
    torch.testing.assert_close(binary_grid_target(maps[0], (4, 4), 0.5), cells[0])
    torch.testing.assert_close(binary_grid_target(maps, (32, 32), 0.5), maps)
    torch.testing.assert_close(binary_grid_target(cells, (32, 32), 0.5), maps)  # growing: nearest


@pytest.mark.parametrize("size,grid", [(64, (7, 7)), (224, (7, 7)), (30, (8, 8)), (64, (4, 16))])
def test_every_single_pixel_reaches_a_cell(size, grid):
    gen = torch.Generator().manual_seed(size)
    maps = torch.zeros(40, size, size)
    ys, xs = torch.randint(0, size, (40,), generator=gen), torch.randint(0, size, (40,), generator=gen)
    maps[torch.arange(40), ys, xs] = 1.0
    target = binary_grid_target(maps, grid, 0.5)
    assert target.shape == (40, *grid) and bool((target.flatten(1).sum(1) >= 1).all())


# ---------------------------------------------------------------- on the stand-ins
@pytest.fixture(scope="module")
def grids() -> dict[str, tuple[int, tuple[int, int]]]:
    """backbone -> (image size, Grad-CAM grid), from config/config.yaml's default backbones."""
    return {b: (int(CONFIG["backbones"][b]["image_size"]), cam_grid_size(CONFIG["backbones"][b]))
            for b in matrix_backbones(CONFIG["matrix"])}


@pytest.mark.parametrize("kind", ["objects", "actions", "digits"])
def test_no_empty_targets_on_the_standins(kind, grids, tmp_path):
    root = tmp_path / kind
    make_standin(kind, root, seed=0, n_images=60, image_size=64, annotated_fraction=1.0, shortcut_strength=0.9)
    data = read_dataset(root)
    for name, (size, grid) in grids.items():
        ds = MEDataset(data, [s.sample_id for s in data.samples], size)  # maps as the trainer reads them
        maps = torch.stack([ds[i]["visual_map"] for i in range(len(ds))])
        assert maps.shape == (60, 1, size, size)
        for thr in THRESHOLDS:
            target = binary_grid_target(maps, grid, thr)
            empty = int((target.flatten(1).sum(1) == 0).sum())
            assert empty == 0, f"{kind}/{name}: {empty} of 60 annotated maps have no positive cell on {grid}"
            # and the baselines are not told the whole image is evidence
            assert float(target.mean()) < 0.9, f"{kind}/{name}: target covers {float(target.mean()):.0%} of the grid"


# ---------------------------------------------------------------- one target for every method
SUPERVISED = ("megl_visual_l1_only", "haics", "res_g", "res_l", "cdep")  # every visual_loss: l1 + the baselines


def _capture_targets(monkeypatch, config: dict) -> dict[str, list]:
    """Run the trainer's real `batch_losses` for every saliency-supervising method on one batch,
    recording each call of `saliency_target` (grid, settings, result) per method. The spy replaces
    the function where each loss module looks it up, so a loss that built its own target would
    record nothing and fail the test below."""
    from megl import losses
    from megl.baselines import cdep, haics, res
    from megl.methods import get_method
    from megl.models.build import build_run_model
    from megl.objective import batch_losses

    real, current, calls = losses.saliency_target, [None], {}

    def spy(maps, grid_hw, target_cfg):
        out = real(maps, grid_hw, target_cfg)
        calls.setdefault(current[0], []).append((tuple(int(v) for v in grid_hw), target_cfg, out.detach().clone()))
        return out

    for module in (losses, haics, res, cdep):
        monkeypatch.setattr(module, "saliency_target", spy)  # raises if a module no longer imports it
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    maps = torch.zeros(4, 1, 32, 32)
    maps[:, :, 12:20, 9:23] = 0.55                      # a soft blob below the area average's reach
    maps[:, :, 5, 3:28] = 0.9                           # and a one-pixel line
    maps[3] = torch.rand(1, 32, 32, generator=gen) * 0.4  # unannotated sample: must not count
    batch = {"image": torch.rand(4, 3, 32, 32, generator=gen), "label": torch.tensor([0, 1, 2, 0]),
             "has_map": torch.tensor([True, True, True, False]), "visual_map": maps}
    bb = dict(family="resnet18", widths=[8, 8, 16, 16], image_size=32)  # small stem: a 4x4 Grad-CAM grid
    mean_map = torch.full((32, 32), 1 / 32 ** 2)
    for name in SUPERVISED:
        current[0] = name
        model = build_run_model(config, get_method(name), bb, 3, None)
        model.train(True)
        batch_losses(model, batch, config["train"], mean_map, config, [""] * 4)
        if name == "res_l":
            assert model.explanation_state.binarize_threshold == config["saliency_target"]["threshold"]
    return {"maps": maps[:3], **calls}


def test_every_saliency_loss_trains_towards_the_same_target(monkeypatch):
    from megl.config import load_config
    from megl.losses import saliency_target

    config = load_config(Path(__file__).resolve().parents[1] / "config" / "config.yaml")
    calls = _capture_targets(monkeypatch, config)
    maps = calls.pop("maps")
    assert sorted(calls) == sorted(SUPERVISED)  # every method built its target through saliency_target
    for name, seen in calls.items():
        assert all(cfg is config["saliency_target"] for _, cfg, _ in seen), name  # the one config key
    reference = calls["megl_visual_l1_only"][0][2]
    assert reference.shape == (3, 4, 4) and set(reference.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(reference, saliency_target(maps, (4, 4), config["saliency_target"]), rtol=0, atol=0)
    for name in ("haics", "res_g", "res_l"):
        grids = {grid for grid, _, _ in calls[name]}
        assert grids == {(4, 4)}, name
        for _, _, target in calls[name]:
            assert torch.equal(target, reference), f"{name}'s target differs from MEGL's L1 target"
    # CDEP decomposes the image, so its target is on the image's grid: the same rule, and the same
    # cells once brought to Â's grid
    (grid, _, inside), = calls["cdep"]
    assert grid == (32, 32)
    assert torch.equal(torch.nn.functional.adaptive_max_pool2d(inside[:3, None], (4, 4))[:, 0], reference)


def test_the_target_threshold_is_one_key(monkeypatch):
    """Moving saliency_target.threshold moves every method's target; no baseline has a key of its own."""
    from megl.config import load_config
    from megl.errors import MEGLError

    path = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
    high = load_config(path, {"saliency_target.threshold": 0.7})
    calls = _capture_targets(monkeypatch, high)
    calls.pop("maps")
    l1 = calls["megl_visual_l1_only"][0][2]
    assert float(l1.sum()) == 3 * 4  # only the 0.9 line (row 5 -> grid row 0, 4 cells) is left
    for name in ("haics", "res_g", "res_l"):
        assert all(torch.equal(t, l1) for _, _, t in calls[name]), name
    with pytest.raises(MEGLError, match="binarize_threshold"):
        load_config(path, {"baselines.haics.binarize_threshold": 0.3})
