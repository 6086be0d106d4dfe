"""L_pred, L_visual (L1) and L_dc (KL) on hand-computed cases and the right sample subsets."""

import math

import pytest
import torch

from megl.errors import MEGLError
from megl.losses import distribution_consistency_loss, downsample_map, prediction_loss, visual_l1_loss

TARGET = {"threshold": 0.5}  # a config's saliency_target section


def test_prediction_loss_is_cross_entropy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(2)) / 2
    assert prediction_loss(logits, torch.tensor([0, 1])).item() == pytest.approx(expected, rel=1e-6)


def test_downsample_map_area_average_and_shapes():
    m = torch.arange(16.0).view(1, 1, 4, 4)
    out = downsample_map(m, (2, 2))
    torch.testing.assert_close(out, torch.tensor([[[2.5, 4.5], [10.5, 12.5]]]))
    torch.testing.assert_close(downsample_map(m[:, 0], (2, 2)), out)
    torch.testing.assert_close(downsample_map(m[0, 0], (2, 2)), out[0])
    up = downsample_map(torch.tensor([[[0.0, 1.0]]]).expand(1, 2, 2), (4, 4))  # bilinear when growing
    torch.testing.assert_close(up[0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    with pytest.raises(MEGLError):
        downsample_map(torch.zeros(2, 3, 4, 4), (2, 2))


def test_visual_l1_hand_case_and_subset():
    sal = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]], [[0.2, 0.2], [0.2, 0.2]]],
                       requires_grad=True)
    maps = torch.zeros(3, 1, 4, 4)
    maps[0, 0, :2, :2] = 1.0  # -> [[1, 0], [0, 0]] on the 2x2 grid: |diff| = 0
    maps[1, 0, :, :2] = 1.0   # -> [[1, 0], [1, 0]]: |diff| = 0.5 everywhere
    maps[2] = float("nan")    # unannotated: must not leak
    has = torch.tensor([True, True, False])
    loss = visual_l1_loss(sal, maps, has, TARGET)
    assert loss.item() == pytest.approx((0.0 + 0.5) / 2)
    loss.backward()
    assert sal.grad[2].abs().sum() == 0 and sal.grad[1].abs().sum() > 0
    sal2 = sal.detach().clone()
    sal2[2] = 0.9
    assert visual_l1_loss(sal2, maps, has, TARGET).item() == loss.item()


def test_visual_l1_target_is_binary_on_the_scale_of_a_hat():
    """The L1 target is the shared binary target, not the area average: a blurred, thin annotation
    whose area average peaks well below 1 gives a {0, 1} target, so an Â equal to it (min-max
    scaled, peak 1) has loss 0, and the loss changes with saliency_target.threshold."""
    maps = torch.zeros(1, 1, 16, 16)
    maps[0, 0, 5, 2:14] = 0.8   # one pixel thick, peak 0.8
    maps[0, 0, 6, 2:14] = 0.3   # a faint blurred edge
    area = downsample_map(maps, (4, 4))
    assert float(area.max()) < 0.5  # what the area average would ask Â to reach
    target = (maps[0, 0] >= 0.5).float().view(4, 4, 4, 4).amax(dim=(1, 3))[None]
    assert float(target.max()) == 1.0 and set(target.unique().tolist()) == {0.0, 1.0}
    has = torch.tensor([True])
    assert visual_l1_loss(target.clone(), maps, has, TARGET).item() == 0.0
    assert visual_l1_loss(area, maps, has, TARGET).item() > 0.1
    low = visual_l1_loss(target.clone(), maps, has, {"threshold": 0.2})  # the faint edge's row counts too
    assert low.item() == 0.0  # rows 5 and 6 fall in the same grid row: same cells
    assert visual_l1_loss(target.clone(), maps, has, {"threshold": 0.9}).item() > 0.0  # nothing annotated at 0.9
    with pytest.raises(MEGLError, match="saliency_target.threshold"):
        visual_l1_loss(target.clone(), maps, has, None)


def test_visual_l1_none_annotated_is_connected_zero():
    sal = torch.rand(2, 3, 3, requires_grad=True)
    loss = visual_l1_loss(sal, torch.zeros(2, 6, 6), torch.tensor([False, False]), TARGET)
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert torch.equal(sal.grad, torch.zeros_like(sal))


def test_kl_hand_case():
    sal = torch.ones(1, 2, 2)  # -> uniform 0.25
    mean_map = torch.tensor([[0.4, 0.1], [0.1, 0.4]])
    expected = 0.5 * math.log(0.25 / 0.4) + 0.5 * math.log(0.25 / 0.1)
    got = distribution_consistency_loss(sal, mean_map, torch.tensor([False]), eps=0.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # mean map on a finer grid is area-averaged to the saliency grid, then renormalised
    fine = mean_map.repeat_interleave(2, 0).repeat_interleave(2, 1) / 4
    got_fine = distribution_consistency_loss(sal, fine, torch.tensor([False]), eps=0.0)
    assert got_fine.item() == pytest.approx(expected, rel=1e-5)


def test_kl_zero_when_equal_and_positive_otherwise():
    torch.manual_seed(0)
    mean_map = torch.rand(4, 4)
    mean_map /= mean_map.sum()
    sal = (mean_map / mean_map.max())[None]  # same distribution, scaled to [0, 1]: eps shifts it slightly
    assert distribution_consistency_loss(mean_map[None], mean_map, torch.tensor([False])).abs().item() < 1e-7
    assert distribution_consistency_loss(sal, mean_map, torch.tensor([False])).item() < 1e-4
    assert distribution_consistency_loss(torch.rand(1, 4, 4), mean_map, torch.tensor([False])).item() > 1e-3


def test_kl_all_zero_saliency_is_finite():
    sal = torch.zeros(2, 4, 4, requires_grad=True)
    mean_map = torch.zeros(8, 8)
    mean_map[:4, :4] = 1 / 16
    loss = distribution_consistency_loss(sal, mean_map, torch.tensor([False, False]))
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert torch.isfinite(sal.grad).all()


def test_kl_uses_only_unannotated_samples():
    torch.manual_seed(1)
    sal = torch.rand(3, 4, 4, requires_grad=True)
    mean_map = torch.rand(16, 16)
    mean_map /= mean_map.sum()
    has = torch.tensor([True, False, False])
    loss = distribution_consistency_loss(sal, mean_map, has)
    by_hand = sum(distribution_consistency_loss(sal[i : i + 1], mean_map, torch.tensor([False])) for i in (1, 2)) / 2
    torch.testing.assert_close(loss, by_hand)
    changed = sal.detach().clone()
    changed[0] = torch.rand(4, 4)  # annotated sample: no effect
    assert distribution_consistency_loss(changed, mean_map, has).item() == loss.item()
    changed[1] = torch.rand(4, 4)  # unannotated: changes the loss
    assert distribution_consistency_loss(changed, mean_map, has).item() != loss.item()
    loss.backward()
    assert sal.grad[0].abs().sum() == 0 and sal.grad[1:].abs().sum() > 0


def test_kl_all_annotated_is_connected_zero():
    sal = torch.rand(2, 4, 4, requires_grad=True)
    loss = distribution_consistency_loss(sal, torch.full((4, 4), 1 / 16), torch.tensor([True, True]))
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert torch.equal(sal.grad, torch.zeros_like(sal))


def test_bad_shapes_raise():
    with pytest.raises(MEGLError, match="has_map"):
        visual_l1_loss(torch.rand(2, 4, 4), torch.rand(2, 8, 8), torch.tensor([True]), TARGET)
    with pytest.raises(MEGLError, match="mean_map"):
        distribution_consistency_loss(torch.rand(2, 4, 4), torch.rand(1, 4, 4), torch.tensor([False, True]))
