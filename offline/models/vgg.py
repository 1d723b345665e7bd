"""A small VGG: pairs of 3x3 conv-BN-ReLU, max pooling between stages."""

from __future__ import annotations

from torch import nn


def vgg(in_channels: int, num_classes: int, width: int = 16) -> nn.Module:
    layers, cin = [], in_channels
    for stage in range(3):
        cout = width * 2**stage
        for _ in range(2):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))
