"""Architectures for the red-team kit, by name."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from offline.models.resnet import resnet
from offline.models.vgg import vgg

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"resnet": resnet, "vgg": vgg}


def create_model(arch: str, in_channels: int, num_classes: int, width: int = 16) -> nn.Module:
    return ARCHITECTURES[arch](in_channels=in_channels, num_classes=num_classes, width=width)
