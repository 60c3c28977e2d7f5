"""CIFAR-style KD benchmark networks, defined as in CRD's code (Tian et al., "Contrastive Representation
Distillation", ICLR 2020; github.com/HobbitLong/RepDistiller, models/resnet.py, wrn.py, vgg.py).

Layer shapes, module names and initialisation follow that code, so parameter counts match the
published ones and its checkpoints' state dicts load. Changes: the input channel count is a parameter,
and the fixed 8x8 average pool is adaptive, so the nets run on any image size >= 8. The nets return
logits only (the reference can also return intermediate features for feature-based distillation).
"""

import math

import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Post-activation residual block of the CIFAR ResNets (He et al. 2016)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class CifarResNet(nn.Module):
    """ResNet of depth 6n+2: a 3x3 stem and three stages of n blocks with ``filters[1:]`` channels."""

    def __init__(self, depth: int, filters: tuple[int, int, int, int], in_channels: int, num_classes: int):
        super().__init__()
        n = (depth - 2) // 6
        self.inplanes = filters[0]
        self.conv1 = nn.Conv2d(in_channels, filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(filters[1], n, stride=1)
        self.layer2 = self._make_layer(filters[2], n, stride=2)
        self.layer3 = self._make_layer(filters[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(filters[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


class WideBasicBlock(nn.Module):
    """Pre-activation block of Wide ResNets (Zagoruyko & Komodakis 2016), without dropout."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equal_in_out = in_planes == out_planes
        # The reference's attribute name, kept so its checkpoints load.
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)

    def forward(self, x):
        # With a shortcut conv, the shortcut also sees the pre-activated input (as in the reference).
        pre = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        return out + (x if self.equal_in_out else self.convShortcut(pre))


class NetworkBlock(nn.Module):
    """A stage of ``n`` wide blocks; the wrapper exists for the reference's ``blockN.layer.i`` key names."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        blocks = [WideBasicBlock(in_planes, out_planes, stride)]
        blocks += [WideBasicBlock(out_planes, out_planes, 1) for _ in range(1, n)]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k: depth 6n+4, stages of 16k, 32k, 64k channels."""

    def __init__(self, depth: int, widen_factor: int, in_channels: int, num_classes: int):
        super().__init__()
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(self.avgpool(x).flatten(1))


class VGG(nn.Module):
    """VGG with BatchNorm and a single linear classifier (no FC stack), five conv blocks.

    Blocks end in BatchNorm, the ReLU is applied in ``forward`` (the reference's layout). The fourth
    max-pool runs only for images of 64 pixels and more (the reference applies it at exactly 64).
    """

    def __init__(self, cfg: list[list[int]], in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        self.block0 = self._make_block(cfg[0], in_channels)
        self.block1 = self._make_block(cfg[1], cfg[0][-1])
        self.block2 = self._make_block(cfg[2], cfg[1][-1])
        self.block3 = self._make_block(cfg[3], cfg[2][-1])
        self.block4 = self._make_block(cfg[4], cfg[3][-1])
        self.pool0 = nn.MaxPool2d(2, 2)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.pool3 = nn.MaxPool2d(2, 2) if image_size >= 64 else nn.Identity()
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_block(widths: list[int], in_channels: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            in_channels = width
        return nn.Sequential(*layers[:-1])

    def forward(self, x):
        x = self.pool0(F.relu(self.block0(x)))
        x = self.pool1(F.relu(self.block1(x)))
        x = self.pool2(F.relu(self.block2(x)))
        x = self.pool3(F.relu(self.block3(x)))
        x = F.relu(self.block4(x))
        return self.classifier(self.pool4(x).flatten(1))


_VGG8 = [[64], [128], [256], [512], [512]]
_VGG13 = [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]


def resnet20(*, in_channels: int, num_classes: int, **_) -> nn.Module:
    """CIFAR ResNet-20 (stages of 16, 32, 64 channels), CRD/RepDistiller definition."""
    return CifarResNet(20, (16, 16, 32, 64), in_channels, num_classes)


def resnet56(*, in_channels: int, num_classes: int, **_) -> nn.Module:
    """CIFAR ResNet-56 (stages of 16, 32, 64 channels), CRD/RepDistiller definition."""
    return CifarResNet(56, (16, 16, 32, 64), in_channels, num_classes)


def resnet110(*, in_channels: int, num_classes: int, **_) -> nn.Module:
    """CIFAR ResNet-110 (stages of 16, 32, 64 channels), CRD/RepDistiller definition."""
    return CifarResNet(110, (16, 16, 32, 64), in_channels, num_classes)


def resnet8x4(*, in_channels: int, num_classes: int, **_) -> nn.Module:
    """CIFAR ResNet-8, four times as wide (stages of 64, 128, 256 channels), CRD/RepDistiller definition."""
    return CifarResNet(8, (32, 64, 128, 256), in_channels, num_classes)


def resnet32x4(*, in_channels: int, num_classes: int, **_) -> nn.Module:
    """CIFAR ResNet-32, four times as wide (stages of 64, 128, 256 channels), CRD/RepDistiller definition."""
    return CifarResNet(32, (32, 64, 128, 256), in_channels, num_classes)


def wrn_40_2(*, in_channels: int, num_classes: int, **_) -> nn.Module:
    """Wide ResNet 40-2 (depth 40, widening factor 2), CRD/RepDistiller definition."""
    return WideResNet(40, 2, in_channels, num_classes)


def wrn_16_2(*, in_channels: int, num_classes: int, **_) -> nn.Module:
    """Wide ResNet 16-2 (depth 16, widening factor 2), CRD/RepDistiller definition."""
    return WideResNet(16, 2, in_channels, num_classes)


def vgg8(*, in_channels: int, num_classes: int, image_size: int, **_) -> nn.Module:
    """VGG-8 with BatchNorm, CRD/RepDistiller definition."""
    return VGG(_VGG8, in_channels, num_classes, image_size)


def vgg13(*, in_channels: int, num_classes: int, image_size: int, **_) -> nn.Module:
    """VGG-13 with BatchNorm, CRD/RepDistiller definition."""
    return VGG(_VGG13, in_channels, num_classes, image_size)
