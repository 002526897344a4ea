"""ResNet-50 (He et al. 2016, stride on the 3x3 convolution as in torchvision's "v1.5") in
plain PyTorch with random weights, for benchmarks on machines without torchvision.

    from bench.resnet50 import resnet50   # or load_resnet50(): torchvision's when importable
"""
from __future__ import annotations

from torch import nn


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Convolution without bias followed by batch norm."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, plus the (projected) shortcut."""

    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        c_out = 4 * width
        self.body = nn.Sequential(conv_bn(c_in, width, 1), nn.ReLU(inplace=True),
                                  conv_bn(width, width, 3, stride), nn.ReLU(inplace=True),
                                  conv_bn(width, c_out, 1))
        self.shortcut = conv_bn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


def stage(c_in: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` bottlenecks, the first one strided."""
    layers = [Bottleneck(c_in, width, stride)]
    layers += [Bottleneck(4 * width, width, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def resnet50(num_classes: int = 1000) -> nn.Sequential:
    """ResNet-50 for 224x224 RGB inputs: 25.6 M parameters, random weights."""
    return nn.Sequential(
        conv_bn(3, 64, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
        stage(64, 64, 3, 1), stage(256, 128, 4, 2), stage(512, 256, 6, 2), stage(1024, 512, 3, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, num_classes),
    )


def load_resnet50() -> tuple[nn.Module, str]:
    """torchvision's resnet50 (random weights) when importable, else :func:`resnet50`; and which."""
    try:
        import torchvision
    except ImportError:
        return resnet50(), "bench/resnet50.py (plain torch)"
    return torchvision.models.resnet50(weights=None), f"torchvision {torchvision.__version__}"
