"""Architectures for the red-team kit, by name."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from offline.models.mobilenet import mobilenet
from offline.models.resnet import resnet, resnet18
from offline.models.vgg import vgg
from offline.models.vit import vit

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"resnet": resnet, "resnet18": resnet18, "vgg": vgg, "mobilenet": mobilenet, "vit": vit}
NEEDS_IMAGE_SIZE = {"vit"}  # a fixed number of patch positions


def create_model(arch: str, input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> nn.Module:
    extra = {"image_size": input_shape[-1]} if arch in NEEDS_IMAGE_SIZE else {}
    return ARCHITECTURES[arch](in_channels=input_shape[0], num_classes=num_classes, width=width, **extra)
