"""Image classifiers f of the paper (ResNet18, ViT-B/16) built from torchvision, with the
Grad-CAM target layer and the token features exposed for MEGL.

Images enter in [0, 1], shape (B, 3, S, S); ImageNet mean/std normalisation happens inside.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import resnet18 as tv_resnet18
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.models.vision_transformer import VisionTransformer

from megl.errors import MEGLError
from megl.models import SOURCE_PRETRAINED

FAMILIES = ("resnet18", "vit_b_16")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET18_WIDTHS = [64, 128, 256, 512]
SMALL_IMAGE_MAX = 96  # stem "auto": images up to this size get the CIFAR-style stem


@dataclass
class ClassifierOutput:
    """Logits, the Grad-CAM target layer's output (in the graph) and tokens for the text generator."""

    logits: Tensor  # (B, K)
    cam_activations: Tensor  # (B, C, h, w)
    tokens: Tensor  # (B, N, D)


class PatchGrid(nn.Module):
    """Lays ViT patch tokens (B, N, D) out on the patch grid (B, D, gh, gw).

    It has no parameters; it exists so that Grad-CAM (ours and captum's hooks) can target the
    spatial layout of the tokens as one module output.
    """

    def __init__(self, grid_h: int, grid_w: int):
        super().__init__()
        self.grid_h = grid_h
        self.grid_w = grid_w

    def forward(self, tokens: Tensor) -> Tensor:
        b, n, d = tokens.shape
        if n != self.grid_h * self.grid_w:
            raise MEGLError(f"PatchGrid: got {n} patch tokens, expected {self.grid_h}x{self.grid_w}")
        return tokens.transpose(1, 2).reshape(b, d, self.grid_h, self.grid_w)


class NarrowResNet18(ResNet):
    """torchvision ResNet18 ([2, 2, 2, 2] BasicBlocks) with configurable stage widths.

    Written as a subclass because torchvision has no width knob for BasicBlock (its
    `width_per_group` only applies to Bottleneck); it reuses torchvision's `_make_layer`,
    `_forward_impl` and initialisation so the architecture is otherwise identical.
    """

    def __init__(self, widths: list[int], num_classes: int):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = widths[0]
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(BasicBlock, widths[0], 2)
        self.layer2 = self._make_layer(BasicBlock, widths[1], 2, stride=2)
        self.layer3 = self._make_layer(BasicBlock, widths[2], 2, stride=2)
        self.layer4 = self._make_layer(BasicBlock, widths[3], 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * BasicBlock.expansion, num_classes)
        for m in self.modules():  # same initialisation as torchvision.models.resnet.ResNet
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


class Classifier(nn.Module):
    """Classifier f: images in [0, 1] -> logits, plus the Grad-CAM layer output and tokens."""

    def __init__(self, family: str, net: nn.Module, num_classes: int, feature_dim: int, image_size: int):
        super().__init__()
        if family not in FAMILIES:
            raise MEGLError(f"backbone family {family!r} unknown; valid families: {', '.join(FAMILIES)}")
        self.family = family
        self.net = net
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if family == "vit_b_16":
            g = image_size // net.patch_size
            self.patch_grid = PatchGrid(g, g)
        self.frozen_stages = 0

    # ------------------------------------------------------------ frozen trunk / trainable head
    # Stages in order: ResNet [stem, layer1, layer2, layer3, layer4]; ViT [embedding, block 1, ...,
    # block L]. The first `frozen_stages` form the trunk: frozen, always in eval mode, and their
    # output (`trunk_features`) can be computed once and cached; the rest is the trainable head.
    def max_frozen_stages(self) -> int:
        return 4 if self.family == "resnet18" else len(self.net.encoder.layers)

    def freeze(self, n_stages: int) -> None:
        """Freeze the first n stages (0 = train everything). The last stage always trains: Grad-CAM's
        layer sits in it, and every explanation loss must train through it by double backprop."""
        if not 0 <= n_stages <= self.max_frozen_stages():
            raise MEGLError(f"frozen_stages must lie in 0..{self.max_frozen_stages()} for {self.family}, "
                            f"got {n_stages}")
        self.frozen_stages = int(n_stages)
        for module in self._stages()[: self.frozen_stages]:
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        for module in self._stages()[: self.frozen_stages]:
            module.train(False)  # frozen BatchNorm statistics / dropout off: cached features stay valid
        return self

    def _stages(self) -> list[nn.Module]:
        n = self.net
        if self.family == "resnet18":
            return [nn.ModuleList([n.conv1, n.bn1]), n.layer1, n.layer2, n.layer3, n.layer4]
        return [_VitEmbedding(n), *n.encoder.layers]

    def trunk_features(self, x: Tensor) -> Tensor:
        """Output of the frozen stages for images in [0, 1] (the images themselves when none is frozen)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise MEGLError(f"classifier input must be (B, 3, S, S) images, got shape {tuple(x.shape)}")
        if self.frozen_stages == 0:
            return x
        with torch.no_grad():
            return self._run_stages(x, 0, self.frozen_stages)

    def _run_stages(self, h: Tensor, start: int, stop: int) -> Tensor:
        n = self.net
        for k in range(start, stop):
            if k == 0:
                h = self.normalize(h)
                if self.family == "resnet18":
                    h = n.maxpool(n.relu(n.bn1(n.conv1(h))))
                else:
                    h = n._process_input(h)
                    h = torch.cat([n.class_token.expand(h.shape[0], -1, -1), h], dim=1)
                    h = n.encoder.dropout(h + n.encoder.pos_embedding)
            elif self.family == "resnet18":
                h = getattr(n, f"layer{k}")(h)
            else:
                h = n.encoder.layers[k - 1](h)
        return h

    def head_forward(self, features: Tensor) -> ClassifierOutput:
        """The trainable stages, from `trunk_features` output to logits, CAM layer and tokens."""
        if self.family == "resnet18":
            n = self.net
            a = self._run_stages(features, self.frozen_stages, 4)
            a = n.layer4(a)
            logits = n.fc(torch.flatten(n.avgpool(a), 1))
            return ClassifierOutput(logits=logits, cam_activations=a, tokens=a.flatten(2).transpose(1, 2))
        return self._vit_head(self._run_stages(features, self.frozen_stages, len(self.net.encoder.layers)))

    @property
    def cam_layer(self) -> nn.Module:
        """The module whose output is the Grad-CAM target (`cam_activations`)."""
        return self.net.layer4 if self.family == "resnet18" else self.patch_grid

    def normalize(self, images: Tensor) -> Tensor:
        """ImageNet mean/std normalisation of images in [0, 1]."""
        return (images - self.mean) / self.std

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_features(x).logits

    def forward_with_features(self, x: Tensor) -> ClassifierOutput:
        return self.head_forward(self.trunk_features(x))

    def _vit_head(self, h: Tensor) -> ClassifierOutput:
        # `h` enters the LAST block (the stages before it ran in _run_stages); same computation as
        # torchvision's VisionTransformer, unrolled for the last block so that its ln_1 output (the
        # tokens entering its self-attention) passes through PatchGrid. The last block's OUTPUT patch
        # tokens cannot be the CAM layer: the class logit reads only the CLS token after that block
        # (LayerNorm is per token), so their gradient is exactly 0.
        n = self.net
        last = n.encoder.layers[-1]
        z = last.ln_1(h)
        grid = self.patch_grid(z[:, 1:])  # (B, D, gh, gw): Grad-CAM target
        z = torch.cat([z[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
        y, _ = last.self_attention(z, z, z, need_weights=False)
        y = last.dropout(y) + h
        h = y + last.mlp(last.ln_2(y))
        h = n.encoder.ln(h)
        logits = n.heads(h[:, 0])
        return ClassifierOutput(logits=logits, cam_activations=grid, tokens=h[:, 1:])


class _VitEmbedding(nn.Module):
    """View of a ViT's embedding parameters (patch projection, class token, positions) as one stage."""

    def __init__(self, net: VisionTransformer):
        super().__init__()
        self.conv_proj = net.conv_proj
        self._net = [net]  # not a submodule: only the three embedding tensors below belong to the stage

    def requires_grad_(self, requires_grad: bool = True) -> "_VitEmbedding":
        net = self._net[0]
        for p in (*net.conv_proj.parameters(), net.class_token, net.encoder.pos_embedding):
            p.requires_grad_(requires_grad)
        return self


def _require(cfg: dict[str, Any], key: str, family: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise MEGLError(f"backbones.{family}: missing required key {key!r}")
    return cfg[key]


def _build_resnet(cfg: dict[str, Any], num_classes: int) -> tuple[nn.Module, int, int]:
    widths = [int(w) for w in _require(cfg, "widths", "resnet18")]
    image_size = int(_require(cfg, "image_size", "resnet18"))
    if len(widths) != 4 or min(widths) < 1:
        raise MEGLError(f"backbones.resnet18.widths: need 4 positive ints, got {widths}")
    if widths == RESNET18_WIDTHS:
        net: ResNet = tv_resnet18(weights=None, num_classes=num_classes)
    else:
        net = NarrowResNet18(widths, num_classes)
    stem = cfg.get("stem", "auto")
    if stem not in ("auto", "imagenet", "small"):
        raise MEGLError(f"backbones.resnet18.stem: {stem!r} not one of auto, imagenet, small")
    if stem == "small" or (stem == "auto" and image_size <= SMALL_IMAGE_MAX):
        # CIFAR-style stem: 3x3 stride-1 conv, no maxpool, so a 64 px image keeps an 8x8 CAM grid
        # (the ImageNet stem would leave 2x2).
        net.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    return net, widths[3], image_size


def _build_vit(cfg: dict[str, Any], num_classes: int) -> tuple[nn.Module, int, int]:
    keys = ("image_size", "patch_size", "num_layers", "num_heads", "hidden_dim", "mlp_dim")
    v = {k: int(_require(cfg, k, "vit_b_16")) for k in keys}
    if v["image_size"] % v["patch_size"]:
        raise MEGLError(f"backbones.vit_b_16: image_size {v['image_size']} not divisible by "
                        f"patch_size {v['patch_size']}")
    if v["hidden_dim"] % v["num_heads"]:
        raise MEGLError(f"backbones.vit_b_16: hidden_dim {v['hidden_dim']} not divisible by num_heads {v['num_heads']}")
    net = VisionTransformer(num_classes=num_classes, **v)
    # torchvision zero-initialises the ViT head, which makes Grad-CAM identically zero (and the
    # saliency losses inert) until the first update; use nn.Linear's default init instead.
    net.heads.head.reset_parameters()
    return net, v["hidden_dim"], v["image_size"]


def _head_prefix(family: str) -> str:
    return "fc." if family == "resnet18" else "heads."


def load_backbone_weights(net: nn.Module, path: str | Path, family: str) -> None:
    """Load a local ImageNet state dict into `net`, dropping the classification head (strict otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise MEGLError(f"backbones.{family}.weights: file {path} not found (weights are never downloaded)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif path.suffix in (".pth", ".pt"):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise MEGLError(f"backbones.{family}.weights: {path} must be .safetensors, .pth or .pt")
    except MEGLError:
        raise
    except Exception as exc:  # corrupt file, pickled objects refused by weights_only, ...
        raise MEGLError(f"backbones.{family}.weights: cannot read {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if state and all(k.startswith("net.") for k in state):  # saved from a Classifier
        state = {k[4:]: t for k, t in state.items()}
    head = _head_prefix(family)
    state = {k: t for k, t in state.items() if not k.startswith(head)}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise MEGLError(f"backbones.{family}.weights: {path} does not fit the configured architecture: {exc}") from exc
    missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        raise MEGLError(
            f"backbones.{family}.weights: {path} does not match the architecture; "
            f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )


def build_classifier(backbone_cfg: dict[str, Any], num_classes: int,
                     weights_path: str | Path | None = None) -> Classifier:
    """Build the classifier described by one entry of the config's `backbones:` mapping.

    `weights_path` overrides `backbone_cfg["weights"]` (the workflow passes the trunk its
    pretrain_backbone step wrote when the config says `weights: source`)."""
    family = backbone_cfg.get("family")
    if int(num_classes) < 1:
        raise MEGLError(f"build_classifier: num_classes must be >= 1, got {num_classes}")
    if family == "resnet18":
        net, feature_dim, image_size = _build_resnet(backbone_cfg, num_classes)
    elif family == "vit_b_16":
        net, feature_dim, image_size = _build_vit(backbone_cfg, num_classes)
    else:
        raise MEGLError(f"backbones: family {family!r} unknown; valid families: {', '.join(FAMILIES)}")
    weights = weights_path or backbone_cfg.get("weights")
    if weights == SOURCE_PRETRAINED:
        raise MEGLError(f"backbones.{family}.weights is {SOURCE_PRETRAINED!r}: pass the pretrained trunk file "
                        "(the workflow's pretrain_backbone step writes it)")
    if weights:
        load_backbone_weights(net, weights, family)
    model = Classifier(family, net, int(num_classes), feature_dim, image_size)
    frozen = int(backbone_cfg.get("frozen_stages", 0))
    if frozen and not weights:
        raise MEGLError(f"backbones.{family}.frozen_stages is {frozen} but no weights are given: a frozen trunk "
                        "must be pretrained (set weights, or frozen_stages: 0)")
    model.freeze(frozen)
    return model


def cam_grid_size(backbone_cfg: dict[str, Any]) -> tuple[int, int]:
    """(h, w) of the Grad-CAM grid of the classifier one `backbones:` entry describes (one forward
    of a zero image through a fresh, untrained copy; `weights` are not loaded)."""
    model = build_classifier({**backbone_cfg, "weights": None, "frozen_stages": 0}, 2).eval()
    size = int(backbone_cfg["image_size"])
    with torch.no_grad():
        out = model.forward_with_features(torch.zeros(1, 3, size, size))
    return int(out.cam_activations.shape[-2]), int(out.cam_activations.shape[-1])


__all__ = [
    "Classifier", "ClassifierOutput", "PatchGrid", "NarrowResNet18", "build_classifier", "load_backbone_weights",
    "cam_grid_size", "FAMILIES",
]
