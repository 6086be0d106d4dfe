"""HAICS, RES-G and RES-L: threshold solver, loss values, one training step, empty batches."""

from pathlib import Path

import pytest
import torch
import yaml

from megl.baselines import baseline_config, get_baseline
from megl.baselines.res import ImputationConv, brute_force_threshold, gaussian_imputation, solve_threshold
from megl.errors import MEGLError
from megl.models.backbones import build_classifier
from megl.models.gradcam import saliency

SNIPPET = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
RESNET = dict(family="resnet18", widths=[8, 8, 16, 16], image_size=32)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _cfg(name: str) -> dict:
    """The baseline's settings as the trainer hands them over (with the shared saliency_target)."""
    return baseline_config(yaml.safe_load(SNIPPET.read_text()), name)


# ---------------------------------------------------------------- threshold solver
@pytest.mark.parametrize("seed", range(6))
def test_solver_matches_brute_force(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 40 + seed * 7
    if seed % 2:  # coarse values: many ties, also across the two classes
        sal = torch.randint(0, 6, (n,), generator=gen).float() / 5
    else:
        sal = torch.rand(n, generator=gen)
    labels = torch.randint(-1, 2, (n,), generator=gen)  # -1 negative, 0 unlabelled, +1 positive
    assert float(solve_threshold(sal, labels)) == float(brute_force_threshold(sal, labels))


def test_solver_edge_cases():
    sal = torch.tensor([0.1, 0.2, 0.7, 0.9])
    # perfectly separable: the first best candidate is the largest negative + eps
    a = solve_threshold(sal, torch.tensor([-1, -1, 1, 1]))
    assert float(a) == pytest.approx(0.2 + 1e-4)
    assert float(a) == float(brute_force_threshold(sal, torch.tensor([-1, -1, 1, 1])))
    for labels in ([1, 1, 1, 1], [-1, -1, -1, -1], [0, 0, 0, 0]):
        y = torch.tensor(labels)
        assert float(solve_threshold(sal, y)) == float(brute_force_threshold(sal, y))
    assert float(solve_threshold(sal, torch.zeros(4))) == 0.0


# ---------------------------------------------------------------- loss values
def _batch(b: int = 4, grid: int = 4, size: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    sal = torch.rand(b, grid, grid, generator=gen, requires_grad=True)
    maps = torch.zeros(b, 1, size, size)
    maps[:, :, : size // 2, : size // 2] = 1.0
    has = torch.tensor([True, False] * (b // 2))
    return sal, maps, has


def test_haics_matches_bce_formula():
    sal, maps, has = _batch()
    out = get_baseline("haics").loss_fn(None, None, None, sal, maps, has, _cfg("haics"), None)
    target = torch.zeros(2, 4, 4)
    target[:, :2, :2] = 1.0
    p = sal[has].clamp(1e-6, 1 - 1e-6)
    expected = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    torch.testing.assert_close(out, expected)


def test_res_g_matches_formula():
    sal, maps, has = _batch()
    cfg = _cfg("res_g")
    out = get_baseline("res_g").loss_fn(None, None, None, sal, maps, has, cfg, None)
    s = sal[has].detach()
    pos = torch.zeros(2, 4, 4)
    pos[:, :2, :2] = 1.0
    y = 2 * pos - 1
    a = brute_force_threshold(s, y)
    robust = torch.relu((torch.tanh(cfg["k"] * (s - a)) - y).abs().mean() - cfg["eta"])
    imputed = gaussian_imputation(pos, cfg["gaussian_kernel"], cfg["gaussian_sigma"])
    expected = robust + (s - imputed).abs().mean()
    torch.testing.assert_close(out.detach(), expected)
    assert float(imputed.amax()) == pytest.approx(1.0, abs=1e-5) and float(imputed[:, 3, 3].max()) < 0.05


def test_thin_annotations_are_positive_cells():
    """A one-pixel line (1/4 of each 4-px cell it crosses) is positive on the grid (any pixel
    annotated, `binary_grid_target`); area-averaging then thresholding would have emptied it."""
    sal, _, has = _batch()
    maps = torch.zeros(4, 1, 16, 16)
    maps[:, :, 5, 2:11] = 1.0  # crosses cells (1, 0), (1, 1), (1, 2)
    pos = torch.zeros(2, 4, 4)
    pos[:, 1, :3] = 1.0
    out = get_baseline("haics").loss_fn(None, None, None, sal, maps, has, _cfg("haics"), None)
    p = sal[has].clamp(1e-6, 1 - 1e-6)
    torch.testing.assert_close(out, -(pos * p.log() + (1 - pos) * (1 - p).log()).mean())
    cfg = _cfg("res_g")
    out = get_baseline("res_g").loss_fn(None, None, None, sal, maps, has, cfg, None)
    s, y = sal[has].detach(), 2 * pos - 1
    a = brute_force_threshold(s, y)
    robust = torch.relu((torch.tanh(cfg["k"] * (s - a)) - y).abs().mean() - cfg["eta"])
    imputed = gaussian_imputation(pos, cfg["gaussian_kernel"], cfg["gaussian_sigma"])
    torch.testing.assert_close(out.detach(), robust + (s - imputed).abs().mean())


def test_res_l_imputation_shape_and_range():
    imp = ImputationConv((4, 4), factor=4, binarize_threshold=0.5)
    out = imp(torch.rand(3, 1, 32, 32)).detach()
    assert out.shape == (3, 4, 4)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    with pytest.raises(MEGLError, match="imputation_factor"):
        ImputationConv((4, 4), factor=3, binarize_threshold=0.5)


@pytest.mark.parametrize("name", ["haics", "res_g", "res_l"])
def test_zero_without_annotations_is_graph_connected(name):
    sal, maps, _ = _batch()
    baseline = get_baseline(name)
    state = baseline.make_state(_cfg(name), (4, 4))
    out = baseline.loss_fn(None, None, None, sal, maps, torch.zeros(4, dtype=torch.bool), _cfg(name), state)
    assert out.dim() == 0 and float(out.detach()) == 0.0 and out.requires_grad
    out.backward()
    assert sal.grad is not None


def test_missing_key_and_missing_state_raise():
    sal, maps, has = _batch()
    cfg = _cfg("res_g")
    del cfg["k"]
    with pytest.raises(MEGLError, match="baselines.res_g: missing required key 'k'"):
        get_baseline("res_g").loss_fn(None, None, None, sal, maps, has, cfg, None)
    with pytest.raises(MEGLError, match="ImputationConv"):
        get_baseline("res_l").loss_fn(None, None, None, sal, maps, has, _cfg("res_l"), None)
    with pytest.raises(MEGLError, match="unknown baseline"):
        get_baseline("gradia")


# ---------------------------------------------------------------- one training step
@pytest.mark.parametrize(
    "name,scope", [("haics", None), ("res_g", "batch"), ("res_g", "sample"), ("res_l", "batch"), ("res_l", "sample")]
)
def test_one_step_lowers_loss(name, scope):
    torch.manual_seed(0)
    model = build_classifier(RESNET, 5).train()
    gen = torch.Generator().manual_seed(4)
    images = torch.rand(6, 3, 32, 32, generator=gen)
    labels = torch.randint(0, 5, (6,), generator=gen)
    # The central 2x2 cells of the 4x4 grid are positive, the ring around them negative. (Scattered
    # noise pixels over the image would make every cell positive: any annotated pixel counts.)
    maps = torch.zeros(6, 1, 32, 32)
    maps[:, :, 8:24, 8:24] = 1.0
    has = torch.tensor([True, False, True, False, True, False])
    cfg = dict(_cfg(name))
    if name != "haics":
        cfg["threshold_scope"] = scope
    baseline = get_baseline(name)
    state = baseline.make_state(cfg, (4, 4))  # Grad-CAM grid of a 32 px small-stem ResNet
    params = list(model.parameters()) + (list(state.parameters()) if state is not None else [])
    opt = torch.optim.SGD(params, lr=0.01)

    def loss() -> torch.Tensor:
        _, _, sal, _ = saliency(model, images, labels, create_graph=True)
        return baseline.loss_fn(model, images, labels, sal, maps, has, cfg, state)

    before = loss()
    opt.zero_grad()
    before.backward()
    opt.step()
    after = loss()
    assert float(after.detach()) < float(before.detach())
    if state is not None:
        assert state.conv.weight.grad is not None and float(state.conv.weight.grad.abs().sum()) > 0
