"""Built-in model zoo. Every model is a sequence of blocks, so a partition can cut it into stages.

``build_model(config.model)`` returns a ``torch.nn.Sequential`` whose children are the blocks
``l_0 .. l_{L-1}`` of the method (section 2 of the Ferret notes). A user model is a factory
``package.module:function`` called with the model config that returns a Sequential (or a list
of modules, wrapped); see :mod:`ferretd.models.custom` and docs/custom-models.md.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ferretd.config import ModelConfig


class Block(nn.Sequential):
    """One partitionable unit; a named Sequential so printed models read well."""


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...]) -> nn.Sequential:
    """Flatten + (Linear, ReLU) per hidden width + a Linear head; one block per layer."""
    width = math.prod(input_shape)
    blocks: list[nn.Module] = []
    for i, h in enumerate(hidden):
        layers: list[nn.Module] = [nn.Flatten()] if i == 0 else []
        layers += [nn.Linear(width, h), nn.ReLU()]
        blocks.append(Block(*layers))
        width = h
    head: list[nn.Module] = [nn.Flatten()] if not hidden else []
    blocks.append(Block(*head, nn.Linear(width, num_classes)))
    return nn.Sequential(*blocks)


def convnet(input_shape: tuple[int, ...], num_classes: int, channels: tuple[int, ...]) -> nn.Sequential:
    """Small conv net: (Conv3x3, ReLU, MaxPool2 when the map is >= 4 wide) per channel width."""
    c, h, w = input_shape
    blocks: list[nn.Module] = []
    for out in channels:
        layers: list[nn.Module] = [nn.Conv2d(c, out, kernel_size=3, padding=1), nn.ReLU()]
        if min(h, w) >= 4:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        blocks.append(Block(*layers))
        c = out
    blocks.append(Block(nn.Flatten(), nn.Linear(c * h * w, num_classes)))
    return nn.Sequential(*blocks)


def build_model(config: ModelConfig, seed: int | None = None) -> nn.Sequential:
    """Instantiate the configured model; ``seed`` makes the initial weights reproducible."""
    if seed is not None:
        torch.manual_seed(seed)
    if config.name == "mlp":
        return mlp(tuple(config.input_shape), config.num_classes, tuple(config.hidden))
    if config.name == "convnet":
        return convnet(tuple(config.input_shape), config.num_classes, tuple(config.channels))
    from ferretd.models.custom import build_custom

    return build_custom(config)  # imports via [model] factory_path; checks the output width
