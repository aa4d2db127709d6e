"""The torchvision path: image classifiers that return what ``Trainer`` expects, the CIFAR models of the
thesis, and its fixed orthogonal classifier (thesis §3.2).

Models by name (``build_model``): ``resnet20/32/44/56/110`` (He et al. 2016, CIFAR: 3 stages of 16/32/64
channels, identity shortcuts with zero padding), ``wrn28-10`` (Zagoruyko & Komodakis 2016), ``vgg16-bn``
(VGG-16 with BatchNorm, a 512→C classifier for 32×32 inputs) and any torchvision classification model by
its torchvision name (e.g. ``mobilenet_v2`` for ImageNet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from ..heads import find_classifier


class ImageClassifier(nn.Module):
    """Wrap a classifier ``f(images) -> logits`` as ``forward(pixel_values, labels=None)`` returning
    ``loss`` (mean cross-entropy when labels are given) and ``logits``, as ``Trainer`` expects."""

    def __init__(self, network: nn.Module, num_labels: int):
        super().__init__()
        self.network = network
        self.num_labels = num_labels

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        logits = self.network(pixel_values)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


# ---- CIFAR ResNets (He et al. 2016, §4.2) -------------------------------------------------------


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes - in_planes  # option A: subsample and zero-pad the identity, no parameters
        self.stride = stride

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.stride != 1 or self.pad:
            shortcut = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 images: 3 stages of n blocks with 16, 32, 64 channels."""

    def __init__(self, depth: int, num_classes: int):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110); got {depth}.")
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# ---- Wide ResNet (Zagoruyko & Komodakis 2016) ---------------------------------------------------


class _WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.shortcut = None if (stride == 1 and in_planes == planes) else nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-depth-width for 32×32 images (pre-activation blocks, 3 stages of 16·w, 32·w, 64·w channels)."""

    def __init__(self, depth: int, width: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"Wide ResNet depth must be 6n+4 (e.g. 28); got {depth}.")
        n = (depth - 4) // 6
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        layers, in_planes = [], 16
        for planes, stride in ((16 * width, 1), (32 * width, 2), (64 * width, 2)):
            for i in range(n):
                layers.append(_WideBlock(in_planes, planes, stride if i == 0 else 1, dropout))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.layers(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# ---- VGG-16 with BatchNorm for CIFAR ------------------------------------------------------------

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class CifarVGG(nn.Module):
    """VGG-16-BN for 32×32 images: the 13 convolutions of VGG-16, each followed by BatchNorm, and a 512→C classifier."""

    def __init__(self, num_classes: int, plan=VGG16):
        super().__init__()
        layers, channels = [], 3
        for item in plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


CIFAR_MODELS = {
    **{f"resnet{d}": (lambda d: lambda c: CifarResNet(d, c))(d) for d in (20, 32, 44, 56, 110)},
    "wrn28-10": lambda c: WideResNet(28, 10, c),
    "vgg16-bn": lambda c: CifarVGG(c),
}


def build_model(name: str, num_classes: int) -> ImageClassifier:
    """A CIFAR model of the thesis by name, or a torchvision classification model by its torchvision name."""
    if name in CIFAR_MODELS:
        network = CIFAR_MODELS[name](num_classes)
    else:
        import torchvision

        available = torchvision.models.list_models(module=torchvision.models)
        if name not in available:
            raise ValueError(
                f"Unknown model {name!r}; choose one of {sorted(CIFAR_MODELS)} or a torchvision classification model "
                f"such as {[m for m in available if m.startswith(('mobilenet', 'resnet'))][:6]}."
            )
        network = torchvision.models.get_model(name, num_classes=num_classes)
    return ImageClassifier(network, num_classes)


def fix_orthogonal_classifier(model: nn.Module, classifier_module: str | None = None, seed: int = 0) -> nn.Linear:
    """Thesis §3.2: freeze the last linear layer to an orthonormal projection (rows of W orthonormal, bias 0);
    only the encoder trains. Needs num_classes <= feature_dim."""
    linear = find_classifier(model, classifier_module).linear
    classes, dim = linear.weight.shape
    if classes > dim:
        raise ValueError(f"an orthogonal classifier needs num_classes <= feature_dim; got {classes} > {dim}.")
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(dim, classes, generator=generator))
        linear.weight.copy_(q.T)
        if linear.bias is not None:
            linear.bias.zero_()
    for parameter in linear.parameters():
        parameter.requires_grad_(False)
    return linear
