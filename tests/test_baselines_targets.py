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
from megl.models.backbones import cam_grid_size

CONFIG = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())
THRESHOLDS = sorted({float(CONFIG["baselines"][b]["binarize_threshold"]) for b in ("haics", "res_g", "res_l", "cdep")})


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
            for b in CONFIG["matrix"]["backbones"]}


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
