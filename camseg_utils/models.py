"""Model zoo: tumour / no-tumour classifiers with named Grad-CAM target layers.

Our design decisions (not the paper's):
- torchvision backbones keep their convolutional features; the head is replaced by
  global average pooling, dropout and a 2-class linear layer (for VGG this drops the
  100-M-parameter fully connected block, which over-fits small medical sets from scratch).
- Every model names its target layers: ``last`` (the last convolutional block),
  ``middle`` (a block at twice that resolution) and ``early`` (four times), plus each block
  by its own name. Finer blocks give finer heatmaps, but see less context.
- No in-place operation touches a hooked tensor: every ReLU is made out-of-place and
  DenseNet's functional in-place ReLU after ``norm5`` is replaced (a known
  pytorch-grad-cam pitfall, where hooks see a tensor that was modified afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:  # imported where a backbone is built: it takes seconds, and the small CNN needs none of it
    import torchvision


class ModelError(ValueError):
    """Unknown architecture or layer, or weights that cannot be loaded."""


# ------------------------------------------------------------------ small CNN


def _conv_block(c_in: int, c_out: int, convs: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k in range(convs):
        layers += [nn.Conv2d(c_in if k == 0 else c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Four conv blocks (16-32-64-128 channels); trains in minutes on 2 CPU cores.

    The two full-resolution blocks have one convolution each, the two deeper blocks two:
    most of the cost of a CNN sits at full resolution, where little capacity is needed.
    """

    def __init__(self, num_classes: int = 2, width: int = 16, dropout: float = 0.2) -> None:
        super().__init__()
        w = width
        self.block1 = _conv_block(3, w, convs=1)
        self.block2 = _conv_block(w, 2 * w, convs=1)
        self.block3 = _conv_block(2 * w, 4 * w)
        self.block4 = _conv_block(4 * w, 8 * w)
        self.head = _GapHead(8 * w, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.block1(x), 2)
        x = F.max_pool2d(self.block2(x), 2)
        x = F.max_pool2d(self.block3(x), 2)
        return self.head(self.block4(x))


class _GapHead(nn.Module):
    def __init__(self, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


# --------------------------------------------------------------- torchvision


class _VGG(nn.Module):
    def __init__(self, base: torchvision.models.VGG, num_classes: int) -> None:
        super().__init__()
        # the last max-pool only shrinks the map before global pooling: drop it, so the
        # last block's heatmap keeps twice the resolution
        self.features = nn.Sequential(*list(base.features.children())[:-1])
        self.head = _GapHead(512, num_classes, 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _DenseNet(nn.Module):
    def __init__(self, base: torchvision.models.DenseNet, num_classes: int) -> None:
        super().__init__()
        self.features = base.features
        self.head = _GapHead(base.classifier.in_features, num_classes, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torchvision applies F.relu(..., inplace=True) to norm5's output here, which
        # corrupts what a hook on norm5 recorded; this ReLU makes a new tensor
        return self.head(F.relu(self.features(x)))


class _ResNet(nn.Module):
    def __init__(self, base: torchvision.models.ResNet, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(base.conv1, base.bn1, base.relu, base.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = base.layer1, base.layer2, base.layer3, base.layer4
        self.head = _GapHead(base.fc.in_features, num_classes, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.head(self.layer4(self.layer3(x)))


# ---------------------------------------------------------------------- zoo
# VGG blocks are named by the ReLU that ends them (the tensor before each max-pool).


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[[torchvision.models.WeightsEnum | None], nn.Module]
    layers: dict[str, str]  # layer name -> dotted module path
    last: str
    middle: str
    early: str  # a block at four times the last block's resolution
    torchvision_name: str | None = None


def _tv(name: str, wrap: Callable[[nn.Module, int], nn.Module]) -> Callable:
    def build(weights: torchvision.models.WeightsEnum | None, num_classes: int = 2) -> nn.Module:
        import torchvision

        base = getattr(torchvision.models, name)(weights=None)
        if weights is not None:
            base.load_state_dict(weights)
        return wrap(base, num_classes)

    return build


_VGG16_LAYERS = {f"conv{k}": p for k, p in zip(range(1, 6), ["features.3", "features.8", "features.15", "features.22", "features.29"])}
_VGG11BN_LAYERS = {f"conv{k}": p for k, p in zip(range(1, 6), ["features.2", "features.6", "features.13", "features.20", "features.27"])}

MODEL_ZOO: dict[str, ModelSpec] = {
    "small_cnn": ModelSpec(
        build=lambda weights, num_classes=2: SmallCNN(num_classes),
        layers={"block2": "block2", "block3": "block3", "block4": "block4"},
        last="block4",
        middle="block3",
        early="block2",
    ),
    "resnet18": ModelSpec(
        _tv("resnet18", _ResNet), {f"layer{k}": f"layer{k}" for k in (2, 3, 4)}, "layer4", "layer3", "layer2", "resnet18"
    ),
    "resnet50": ModelSpec(
        _tv("resnet50", _ResNet), {f"layer{k}": f"layer{k}" for k in (2, 3, 4)}, "layer4", "layer3", "layer2", "resnet50"
    ),
    "vgg16": ModelSpec(_tv("vgg16", _VGG), _VGG16_LAYERS, "conv5", "conv4", "conv3", "vgg16"),
    "vgg11_bn": ModelSpec(_tv("vgg11_bn", _VGG), _VGG11BN_LAYERS, "conv5", "conv4", "conv3", "vgg11_bn"),
    "densenet121": ModelSpec(
        _tv("densenet121", _DenseNet),
        {"denseblock2": "features.denseblock2", "denseblock3": "features.denseblock3", "norm5": "features.norm5"},
        "norm5",
        "denseblock3",
        "denseblock2",
        "densenet121",
    ),
}


def architectures() -> list[str]:
    return list(MODEL_ZOO)


def get_spec(arch: str) -> ModelSpec:
    if arch not in MODEL_ZOO:
        raise ModelError(f"unknown architecture {arch!r}; known: {', '.join(MODEL_ZOO)}")
    return MODEL_ZOO[arch]


def layer_names(arch: str) -> list[str]:
    spec = get_spec(arch)
    return ["last", "middle", "early", *spec.layers]


def resolve_layer(arch: str, name: str) -> str:
    """'last' / 'middle' / 'early' / a block name -> the block name."""
    spec = get_spec(arch)
    name = {"last": spec.last, "middle": spec.middle, "early": spec.early}.get(name, name)
    if name not in spec.layers:
        raise ModelError(f"unknown layer {name!r} for {arch}; known: {', '.join(layer_names(arch))}")
    return name


def get_layer(model: nn.Module, arch: str, name: str) -> nn.Module:
    return model.get_submodule(get_spec(arch).layers[resolve_layer(arch, name)])


def _no_inplace(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    return model


def imagenet_weights_path(arch: str) -> Path:
    """Where torchvision keeps the ImageNet weights of ``arch`` once they were downloaded."""
    spec = get_spec(arch)
    if spec.torchvision_name is None:
        raise ModelError(f"{arch} has no ImageNet weights; use pretrained=False")
    import torchvision

    weights = torchvision.models.get_model_weights(spec.torchvision_name).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def build_model(arch: str, pretrained: bool | str = False, num_classes: int = 2) -> nn.Module:
    """A classifier from the zoo, from scratch by default.

    ``pretrained=True`` loads torchvision's ImageNet weights from the local torch hub
    cache and never downloads (this code must run offline); ``pretrained='path.pth'``
    loads a torchvision state dict from that file.
    """
    spec = get_spec(arch)
    state = None
    if pretrained:
        path = imagenet_weights_path(arch) if pretrained is True else Path(pretrained)
        if not path.is_file():
            raise ModelError(
                f"ImageNet weights for {arch} were asked for but {path} does not exist, and camseg never "
                f"downloads at run time. On a machine with internet run "
                f"`python -c \"import torchvision; torchvision.models.{spec.torchvision_name}(weights='DEFAULT')\"` "
                f"and copy the file to {path}, pass pretrained='/path/to/weights.pth', or use pretrained=False."
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ModelError(f"cannot load ImageNet weights for {arch} from {path}: {e}") from e
    try:
        model = spec.build(state, num_classes)
    except RuntimeError as e:  # a state dict for another architecture
        raise ModelError(f"weights from {pretrained} do not fit {arch}: {e}") from e
    return _no_inplace(model)
