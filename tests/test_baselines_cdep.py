"""CDEP: contextual decomposition sums to the logits on both backbones; the loss trains."""

from pathlib import Path

import pytest
import torch
import yaml

from megl.baselines import baseline_config, cd_forward, get_baseline
from megl.models.backbones import build_classifier
from megl.models.gradcam import saliency

SNIPPET = Path(__file__).resolve().parents[1] / "config" / "config.yaml"

BACKBONES = {
    "resnet_small_stem": dict(family="resnet18", widths=[8, 8, 16, 16], image_size=32),
    "resnet_imagenet_stem": dict(family="resnet18", widths=[8, 8, 16, 16], image_size=64, stem="imagenet"),
    "vit": dict(family="vit_b_16", patch_size=8, hidden_dim=32, num_layers=2, num_heads=4, mlp_dim=64, image_size=32),
}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _cfg() -> dict:
    """CDEP's settings as the trainer hands them over (with the shared saliency_target)."""
    return baseline_config(yaml.safe_load(SNIPPET.read_text()), "cdep")


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_classifier(BACKBONES[name], 5)
    size = BACKBONES[name]["image_size"]
    model.train()
    with torch.no_grad():  # non-trivial BN running statistics
        for _ in range(2):
            model(torch.rand(8, 3, size, size))
    return model


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("rule", ["cdep", "shapley"])
def test_cd_parts_sum_to_logits(backbone, mode, rule):
    model = _model(backbone)
    model.train(mode == "train")
    size = BACKBONES[backbone]["image_size"]
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(4, 3, size, size, generator=gen)
    masks = {
        "random": (torch.rand(4, 1, 16, 16, generator=gen) > 0.5).float(),
        "soft": torch.rand(4, 1, 16, 16, generator=gen),
        "ones": torch.ones(4, 1, 16, 16),
        "zeros": torch.zeros(4, 1, 16, 16),
    }
    with torch.no_grad():
        logits = model(images)
    scale = logits.abs().max()
    for kind, mask in masks.items():
        with torch.no_grad():
            rel, irr = cd_forward(model, images, mask, rule)
        assert rel.shape == irr.shape == logits.shape
        torch.testing.assert_close(rel + irr, logits, rtol=0, atol=1e-4 * float(scale), msg=kind)
        if kind == "ones":
            assert float(irr.abs().max()) == 0.0
        if kind == "zeros":
            assert float(rel.abs().max()) == 0.0


@pytest.mark.parametrize("backbone", ["resnet_imagenet_stem", "vit"])
def test_cd_shapley_rule_is_symmetric(backbone):
    """With the Shapley rule, the complement mask swaps the two parts."""
    model = _model(backbone).eval()
    size = BACKBONES[backbone]["image_size"]
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(3, 3, size, size, generator=gen)
    mask = (torch.rand(3, 1, 8, 8, generator=gen) > 0.5).float()
    with torch.no_grad():
        rel, irr = cd_forward(model, images, mask, "shapley")
        rel_c, irr_c = cd_forward(model, images, 1.0 - mask, "shapley")
    torch.testing.assert_close(rel, irr_c, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(irr, rel_c, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backbone", ["resnet_small_stem", "vit"])
def test_cdep_step_lowers_loss(backbone):
    model = _model(backbone)
    model.train(backbone != "vit")
    cfg = _cfg()
    loss_fn = get_baseline("cdep").loss_fn
    size = BACKBONES[backbone]["image_size"]
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(6, 3, size, size, generator=gen)
    labels = torch.randint(0, 5, (6,), generator=gen)
    maps = torch.zeros(6, 1, 16, 16)
    maps[:, :, 4:12, 4:12] = 1.0
    has_map = torch.tensor([True, False, True, False, True, False])
    opt = torch.optim.SGD(model.parameters(), lr=0.005)

    def loss() -> torch.Tensor:
        _, _, sal, _ = saliency(model, images, labels, create_graph=False)
        return loss_fn(model, images, labels, sal, maps, has_map, cfg, None)

    before = loss()
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss()
    assert float(after) < float(before.detach())


def test_cdep_thin_annotation_survives_a_smaller_image():
    """Maps larger than the image are binarised at their own resolution and max-pooled
    (`binary_grid_target`): a one-pixel line on an odd row, which nearest-neighbour shrinking
    would drop, stays inside the annotation, so CDEP does not penalise it."""
    from megl.losses import binary_grid_target

    model = _model("resnet_small_stem").eval()
    gen = torch.Generator().manual_seed(5)
    images = torch.rand(2, 3, 32, 32, generator=gen)
    labels = torch.tensor([0, 1])
    maps = torch.zeros(2, 1, 64, 64)
    maps[:, :, 11, 4:50] = 1.0
    assert not bool(torch.nn.functional.interpolate(maps, size=(32, 32), mode="nearest").any())
    inside = binary_grid_target(maps, (32, 32), 0.5)[:, None]
    assert float(inside[0, 0, 5, 2:25].min()) == 1.0 and float(inside.sum()) == 2 * 23
    cfg = _cfg()
    has = torch.tensor([True, True])
    with torch.no_grad():
        val = get_baseline("cdep").loss_fn(model, images, labels, torch.rand(2, 4, 4), maps, has, cfg, None)
        rel, irr = cd_forward(model, images, 1.0 - inside, cfg["nonlinearity"])
    torch.testing.assert_close(val, torch.softmax(torch.stack([rel, irr], -1), -1)[..., 0].mean())


def test_cdep_zero_without_annotations_is_graph_connected():
    model = _model("resnet_small_stem")
    images = torch.rand(3, 3, 32, 32)
    labels = torch.tensor([0, 1, 2])
    _, _, sal, _ = saliency(model, images, labels, create_graph=True)
    out = get_baseline("cdep").loss_fn(
        model, images, labels, sal, torch.rand(3, 1, 8, 8), torch.zeros(3, dtype=torch.bool), _cfg(), None
    )
    assert out.dim() == 0 and float(out.detach()) == 0.0 and out.requires_grad
    out.backward()


def test_cdep_target_mode_and_bad_key():
    from megl.errors import MEGLError

    model = _model("vit").eval()
    images = torch.rand(2, 3, 32, 32)
    labels = torch.tensor([1, 3])
    sal = torch.rand(2, 4, 4)
    maps = torch.rand(2, 1, 8, 8)
    has = torch.tensor([True, True])
    cfg = dict(_cfg(), classes="target")
    val = get_baseline("cdep").loss_fn(model, images, labels, sal, maps, has, cfg, None)
    assert 0.0 < float(val.detach()) < 1.0
    with pytest.raises(MEGLError, match="baselines.cdep.classes"):
        get_baseline("cdep").loss_fn(model, images, labels, sal, maps, has, dict(cfg, classes="x"), None)


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("rule", ["cdep", "shapley"])
def test_cdep_from_cached_trunk_equals_the_full_decomposition(backbone, rule):
    """With a frozen trunk, the loss from the trunk's cached features and `prepare`'s decomposition
    (the training path) equals the loss that decomposes the whole network from the pixels, in value
    and in its gradient on the trainable stages; samples without a map carry no relevant part."""
    from megl.data.tensors import SplitTensors, trunk_features

    model = _model(backbone)
    model.freeze(model.max_frozen_stages() - 1)
    model.train(True)
    size = BACKBONES[backbone]["image_size"]
    gen = torch.Generator().manual_seed(3)
    n = 6
    images = (torch.rand(n, 3, size, size, generator=gen) * 255).round().to(torch.uint8)
    maps = (torch.rand(n, 1, size, size, generator=gen) > 0.6).float()
    has_map = torch.tensor([True, False, True, True, False, True])
    split = SplitTensors(ids=[str(i) for i in range(n)], images=images, labels=torch.arange(n) % 5,
                         has_map=has_map, maps=maps * has_map.view(-1, 1, 1, 1), full_maps=None,
                         rationales=[("r",)] * n, features=trunk_features(model, images, torch.device("cpu")))
    cfg = {**_cfg(), "nonlinearity": rule}
    baseline = get_baseline("cdep")
    split.extras = baseline.prepare(model, split, cfg, torch.device("cpu"))
    assert torch.all(split.extras["cd_trunk_rel"][~has_map] == 0)
    assert split.extras["cd_trunk_rel"][has_map].abs().sum() > 0
    batch = split.batch(torch.arange(n), torch.device("cpu"))

    def loss_and_grads(**extra):
        model.zero_grad(set_to_none=True)
        loss = baseline.loss_fn(model, batch["image"], batch["label"], None, batch["visual_map"], batch["has_map"],
                                cfg, None, **extra)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    full, full_grads = loss_and_grads()
    cached, cached_grads = loss_and_grads(**{k: batch[k] for k in baseline.batch_keys})
    assert torch.allclose(cached, full, rtol=1e-5, atol=1e-6)
    for a, b in zip(cached_grads, full_grads):  # float32 rounding differs: compare each gradient as a whole
        assert (a - b).norm() <= 1e-3 * b.norm() + 1e-7
