"""Small native nets sized by ``width`` and ``depth``: CPU-fast students and teachers for tiny data."""

from torch import nn


class SmallCNN(nn.Module):
    """``depth`` conv3x3-BN-ReLU blocks of ``width * 2**i`` channels, global average pool, linear head.

    A 2x2 max-pool follows each block but the last while the feature map is at least 2x2, so any
    depth works on any image size (8x8 digits included).
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int, depth: int):
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for i in range(depth):
            out = width * 2**i
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if i < depth - 1 and size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class MLP(nn.Module):
    """Flatten, ``depth`` hidden Linear-ReLU layers of ``width`` units, linear head."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int, depth: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        features = in_channels * image_size * image_size
        for _ in range(depth):
            layers += [nn.Linear(features, width), nn.ReLU(inplace=True)]
            features = width
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(features, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


def cnn(*, in_channels: int, num_classes: int, image_size: int, width: int, depth: int, **_) -> nn.Module:
    return SmallCNN(in_channels, num_classes, image_size, width, depth)


def mlp(*, in_channels: int, num_classes: int, image_size: int, width: int, depth: int, **_) -> nn.Module:
    """``depth=0`` is multinomial logistic regression on the pixels."""
    return MLP(in_channels, num_classes, image_size, width, depth)
