"""Differentiable Grad-CAM: equality with captum, batching, double backprop, scaling."""

import pytest
import torch
from captum.attr import LayerGradCam

from megl.errors import MEGLError
from megl.models.backbones import build_classifier
from megl.models.gradcam import gradcam, saliency, scale_per_sample

torch.set_num_threads(1)

RESNET_SMALL = {"family": "resnet18", "widths": [16, 32, 64, 128], "image_size": 64, "weights": None}
VIT_SMALL = {"family": "vit_b_16", "patch_size": 8, "hidden_dim": 64, "num_layers": 4, "num_heads": 4,
             "mlp_dim": 128, "image_size": 64, "weights": None}
FAMILIES = [RESNET_SMALL, VIT_SMALL]


def make(cfg, k=5, seed=0):
    torch.manual_seed(seed)
    return build_classifier(cfg, num_classes=k)


def trained_a_little(cfg):
    """A model after a few CE steps, so BN statistics and the head are not at their init values."""
    model = make(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(3)
    for _ in range(2):
        x, y = torch.rand(4, 3, 64, 64, generator=g), torch.randint(0, 5, (4,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("cfg", FAMILIES, ids=["resnet18", "vit_b_16"])
def test_equals_captum_layergradcam(cfg):
    model = trained_a_little(cfg)
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1, 4, 2])
    _, raw, _, _ = saliency(model, x, target)
    ref = LayerGradCam(model, model.cam_layer).attribute(x, target=target, relu_attributions=True)
    assert ref.shape == (4, 1, 8, 8)
    assert raw.abs().max() > 1e-4  # a non-trivial comparison
    torch.testing.assert_close(raw, ref[:, 0].detach(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("cfg", FAMILIES, ids=["resnet18", "vit_b_16"])
def test_batched_equals_per_sample_loop(cfg):
    model = trained_a_little(cfg)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([2, 0, 3])
    _, raw, scaled, _ = saliency(model, x, target, create_graph=True)
    for i in range(3):
        _, raw_i, scaled_i, _ = saliency(model, x[i : i + 1], target[i : i + 1], create_graph=True)
        torch.testing.assert_close(raw[i], raw_i[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(scaled[i], scaled_i[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg", FAMILIES, ids=["resnet18", "vit_b_16"])
def test_predicted_class_when_no_target(cfg):
    model = trained_a_little(cfg)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    logits, raw, _, _ = saliency(model, x)
    _, raw_pred, _, _ = saliency(model, x, logits.argmax(1))
    torch.testing.assert_close(raw, raw_pred)
    other = (logits.argmax(1) + 1) % 5
    _, raw_other, _, _ = saliency(model, x, other)
    assert not torch.allclose(raw, raw_other)


CHECKED = {
    "resnet18": ["conv1.weight", "layer1.0.conv1.weight", "layer4.1.conv2.weight", "fc.weight"],
    "vit_b_16": ["conv_proj.weight", "encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
                 "encoder.layers.encoder_layer_3.self_attention.in_proj_weight", "heads.head.weight"],
}


@pytest.mark.parametrize("cfg", FAMILIES, ids=["resnet18", "vit_b_16"])
def test_saliency_loss_trains_the_classifier(cfg):
    """Double backprop: a loss on the scaled map alone reaches the backbone and the head."""
    model = make(cfg).train()
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 1, 2, 3])
    goal = torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(5))
    params = dict(model.net.named_parameters())
    before = {n: params[n].detach().clone() for n in CHECKED[cfg["family"]]}
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    opt.zero_grad()
    _, _, scaled, _ = saliency(model, x, y, create_graph=True)
    (scaled - goal).abs().mean().backward()
    for n in before:
        g = params[n].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, n
    opt.step()
    for n, old in before.items():
        assert not torch.equal(params[n].detach(), old), n


@pytest.mark.parametrize("cfg", FAMILIES, ids=["resnet18", "vit_b_16"])
def test_no_graph_without_create_graph(cfg):
    model = make(cfg)
    x = torch.rand(2, 3, 64, 64)
    logits, raw, scaled, _ = saliency(model, x, torch.tensor([0, 1]), create_graph=False)
    assert raw.grad_fn is None and not raw.requires_grad
    assert scaled.grad_fn is None and not scaled.requires_grad
    with pytest.raises(RuntimeError):
        scaled.sum().backward()
    assert all(p.grad is None for p in model.parameters())
    # the logits' graph is still usable (e.g. for L_pred after an evaluation-style saliency call)
    logits.sum().backward()
    assert any(p.grad is not None for p in model.parameters())


def test_saliency_under_no_grad_and_frozen_model():
    model = trained_a_little(RESNET_SMALL)
    x = torch.rand(2, 3, 64, 64)
    _, ref, _, _ = saliency(model, x, torch.tensor([1, 2]))
    model.requires_grad_(False)
    with torch.no_grad():
        _, raw, _, _ = saliency(model, x, torch.tensor([1, 2]))
    torch.testing.assert_close(raw, ref)


def test_gradcam_definition_by_hand():
    acts = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]], requires_grad=True)
    w = torch.tensor([[1.0, -2.0], [0.5, 0.5]])  # logits = w @ spatial-sum(acts)
    logits = (w[None] * acts.sum((2, 3))[:, None]).sum(-1)  # (1, 2)
    cam = gradcam(acts, logits, torch.tensor([0]), create_graph=False)
    # grads = w[0] everywhere -> mean weights (1, -2); cam = relu(1*A0 - 2*A1)
    torch.testing.assert_close(cam, torch.tensor([[[1.0, 0.0], [1.0, 4.0]]]))
    with pytest.raises(MEGLError):
        gradcam(acts.detach(), logits, torch.tensor([0]), create_graph=False)


def test_scale_per_sample_range_zero_and_constant_maps():
    cam = torch.stack([torch.rand(8, 8) * 5 + 1, torch.zeros(8, 8), torch.full((8, 8), 3.0)]).requires_grad_(True)
    out = scale_per_sample(cam)
    assert out.min() >= 0 and out.max() <= 1
    assert out[0].min() == 0 and torch.isclose(out[0].max(), torch.tensor(1.0))
    assert torch.equal(out[1], torch.zeros(8, 8)) and torch.equal(out[2], torch.zeros(8, 8))
    assert not torch.isnan(out).any()
    (out * torch.rand(3, 8, 8)).sum().backward()
    assert torch.isfinite(cam.grad).all()
    assert cam.grad[1:].abs().sum() == 0 and cam.grad[0].abs().sum() > 0
    expected = (cam[0] - cam[0].min()) / (cam[0].max() - cam[0].min())
    torch.testing.assert_close(out[0], expected.detach())
