"""A small MobileNetV2: inverted residual blocks (expand 1x1, depthwise 3x3, project 1x1)."""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU6()) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.block = nn.Sequential(
            *([_conv_bn(cin, hidden, 1)] if expansion != 1 else []),
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            _conv_bn(hidden, cout, 1, act=False),  # linear bottleneck
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


def mobilenet(in_channels: int, num_classes: int, width: int = 16) -> nn.Module:
    # (expansion, output channels as a multiple of width, blocks, first stride)
    stages = [(1, 1, 1, 1), (6, 1.5, 2, 2), (6, 2, 2, 2), (6, 4, 2, 2)]
    layers, cin = [_conv_bn(in_channels, width, 3)], width
    for expansion, multiple, blocks, stride in stages:
        cout = int(width * multiple)
        for b in range(blocks):
            layers.append(InvertedResidual(cin, cout, stride if b == 0 else 1, expansion))
            cin = cout
    head = width * 8
    return nn.Sequential(*layers, _conv_bn(cin, head, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(head, num_classes))
