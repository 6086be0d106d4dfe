"""Classifier construction, shapes, normalisation, the ViT CAM layer, and local weight loading."""

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from megl.errors import MEGLError
from megl.models.backbones import Classifier, ClassifierOutput, build_classifier

torch.set_num_threads(1)

RESNET_SMALL = {"family": "resnet18", "widths": [16, 32, 64, 128], "image_size": 64, "weights": None}
VIT_SMALL = {"family": "vit_b_16", "patch_size": 8, "hidden_dim": 64, "num_layers": 4, "num_heads": 4,
             "mlp_dim": 128, "image_size": 64, "weights": None}
RESNET_PAPER = {"family": "resnet18", "widths": [64, 128, 256, 512], "image_size": 224, "weights": None}
VIT_PAPER = {"family": "vit_b_16", "patch_size": 16, "hidden_dim": 768, "num_layers": 12, "num_heads": 12,
             "mlp_dim": 3072, "image_size": 224, "weights": None}


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    "cfg, grid, dim, n_tokens",
    [(RESNET_SMALL, 8, 128, 64), (VIT_SMALL, 8, 64, 64)],
)
def test_small_shapes(cfg, grid, dim, n_tokens):
    torch.manual_seed(0)
    model = build_classifier(cfg, num_classes=7)
    out = model.forward_with_features(torch.rand(2, 3, 64, 64))
    assert isinstance(model, Classifier) and isinstance(out, ClassifierOutput)
    assert model.num_classes == 7 and model.feature_dim == dim
    assert out.logits.shape == (2, 7)
    assert out.cam_activations.shape == (2, dim, grid, grid)
    assert out.tokens.shape == (2, n_tokens, dim)
    assert out.cam_activations.grad_fn is not None  # part of the graph


def test_paper_scale_resnet18_is_torchvision_resnet18():
    model = build_classifier(RESNET_PAPER, num_classes=40)
    ref = torchvision.models.resnet18(weights=None, num_classes=40)
    assert type(model.net) is torchvision.models.resnet.ResNet
    assert {k: v.shape for k, v in model.net.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    with torch.no_grad():
        out = model.eval().forward_with_features(torch.rand(1, 3, 224, 224))
    assert out.logits.shape == (1, 40)
    assert out.cam_activations.shape == (1, 512, 7, 7)
    assert out.tokens.shape == (1, 49, 512)


def test_paper_scale_vit_b_16_is_torchvision_vit_b_16():
    model = build_classifier(VIT_PAPER, num_classes=40)
    ref = torchvision.models.vit_b_16(weights=None, num_classes=40)
    assert n_params(model) == n_params(ref)
    assert {k: v.shape for k, v in model.net.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    with torch.no_grad():
        out = model.eval().forward_with_features(torch.rand(1, 3, 224, 224))
    assert out.logits.shape == (1, 40)
    assert out.cam_activations.shape == (1, 768, 14, 14)
    assert out.tokens.shape == (1, 196, 768)


def test_narrow_resnet_matches_torchvision_structure():
    model = build_classifier({**RESNET_SMALL, "stem": "imagenet"}, num_classes=3)
    ref = torchvision.models.resnet18(weights=None, num_classes=3)
    ours, theirs = model.net.state_dict(), ref.state_dict()
    assert list(ours) == list(theirs)  # same modules, same order: only the widths differ
    assert ours["layer4.1.conv2.weight"].shape == (128, 128, 3, 3)
    out = model.forward_with_features(torch.rand(1, 3, 64, 64))
    assert out.cam_activations.shape[-2:] == (2, 2)  # ImageNet stem: /32


def test_small_stem_choice():
    auto = build_classifier(RESNET_SMALL, 3)
    big = build_classifier({**RESNET_SMALL, "image_size": 128}, 3)
    assert isinstance(auto.net.maxpool, torch.nn.Identity) and auto.net.conv1.stride == (1, 1)
    assert isinstance(big.net.maxpool, torch.nn.MaxPool2d) and big.net.conv1.kernel_size == (7, 7)


@pytest.mark.parametrize("cfg", [RESNET_SMALL, VIT_SMALL])
def test_normalisation_inside_and_same_as_torchvision_forward(cfg):
    torch.manual_seed(0)
    model = build_classifier(cfg, 5).eval()
    x = torch.rand(2, 3, 64, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = model(x)
        ref = model.net((x - mean) / std)  # torchvision's own forward on normalised input
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert not any(k in ("mean", "std") for k in model.state_dict())


def test_vit_last_block_output_has_zero_gradient():
    """Why the ViT CAM layer is the last block's ln_1 output and not the block's output."""
    torch.manual_seed(0)
    model = build_classifier(VIT_SMALL, 5).eval()
    net = model.net
    captured = {}
    last = net.encoder.layers[-1]
    handle = last.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    logits = net(model.normalize(torch.rand(2, 3, 64, 64)))
    handle.remove()
    (g,) = torch.autograd.grad(logits[:, 0].sum(), captured["out"])
    assert g[:, 1:].abs().max() == 0  # patch tokens: no gradient at all
    assert g[:, 0].abs().max() > 0
    out = model.forward_with_features(torch.rand(2, 3, 64, 64))
    (g2,) = torch.autograd.grad(out.logits[:, 0].sum(), out.cam_activations)
    assert g2.abs().max() > 0


def test_vit_head_not_zero_initialised():
    model = build_classifier(VIT_SMALL, 5)
    assert model.net.heads.head.weight.abs().sum() > 0


@pytest.mark.parametrize("cfg, param", [(RESNET_SMALL, "layer3.0.conv1.weight"),
                                        (VIT_SMALL, "encoder.layers.encoder_layer_1.self_attention.in_proj_weight")])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_load_local_weights_drops_head(tmp_path, cfg, param, suffix):
    torch.manual_seed(1)
    source = build_classifier(cfg, num_classes=1000)  # stands in for an ImageNet checkpoint
    state = {k: v.contiguous() for k, v in source.net.state_dict().items()}
    path = tmp_path / f"imagenet{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    torch.manual_seed(2)
    model = build_classifier({**cfg, "weights": str(path)}, num_classes=6)
    torch.testing.assert_close(model.net.state_dict()[param], state[param], rtol=0, atol=0)
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 6)
    fresh = build_classifier(cfg, num_classes=6)
    assert not torch.equal(fresh.net.state_dict()[param], state[param])


def test_load_weights_wrong_architecture_or_missing_file(tmp_path):
    source = build_classifier({**RESNET_SMALL, "widths": [8, 16, 32, 64]}, num_classes=10)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.net.state_dict().items()}, str(path))
    with pytest.raises(MEGLError, match="w.safetensors"):
        build_classifier({**RESNET_SMALL, "weights": str(path)}, 10)
    with pytest.raises(MEGLError, match="not found"):
        build_classifier({**RESNET_SMALL, "weights": str(tmp_path / "nope.pth")}, 10)
    partial = {k: v for k, v in source.net.state_dict().items() if not k.startswith("layer4")}
    path2 = tmp_path / "partial.safetensors"
    save_file({k: v.contiguous() for k, v in partial.items()}, str(path2))
    with pytest.raises(MEGLError, match="missing keys"):
        build_classifier({**RESNET_SMALL, "widths": [8, 16, 32, 64], "weights": str(path2)}, 10)


def test_unknown_family_and_missing_keys():
    with pytest.raises(MEGLError, match="resnet18, vit_b_16"):
        build_classifier({"family": "vgg16"}, 3)
    with pytest.raises(MEGLError, match="hidden_dim"):
        build_classifier({k: v for k, v in VIT_SMALL.items() if k != "hidden_dim"}, 3)
