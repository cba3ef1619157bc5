"""User model factories (``[model] name = "custom"``): import, build, and check before training.

``[model] factory = "package.module:function"`` names a function called with the
:class:`~ferretd.config.ModelConfig` that returns an ``nn.Sequential`` (or a list of modules);
``[model] factory_path`` is a directory put first on ``sys.path`` before the import, so a
factory needs no PYTHONPATH (relative paths are relative to the config file). Every problem
is a :class:`~ferretd.config.ConfigError`, one line naming the key: a module that is not
found, a missing function, a factory that raises, a wrong return type, a model that cannot
take ``input_shape``, or one whose output width is not ``num_classes``, which would
otherwise train silently on the wrong number of classes. See docs/custom-models.md.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ferretd.config import ConfigError, ModelConfig


def _one_line(exc: BaseException) -> str:
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first[:200]}"


def load_factory(config: ModelConfig) -> Any:
    module_name, _, attr = config.factory.partition(":")
    directory = str(Path(config.factory_path).expanduser()) if config.factory_path else ""
    if directory and directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            where = (
                f"not in [model] factory_path {config.factory_path!r} nor the installed packages"
                if config.factory_path
                else "not found; set [model] factory_path to the directory that holds it"
            )
            raise ConfigError(f"[model] factory: module {module_name!r} {where}") from None
        raise ConfigError(f"[model] factory: importing {module_name!r} failed: {_one_line(exc)}") from None
    except Exception as exc:
        raise ConfigError(f"[model] factory: importing {module_name!r} failed: {_one_line(exc)}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"[model] factory: module {module_name!r} has no function {attr!r}")
    return factory


def build_custom(config: ModelConfig) -> nn.Sequential:
    """Import and call the factory, wrap a list, and check it fits ``input_shape``/``num_classes``."""
    factory = load_factory(config)
    try:
        built = factory(config)
    except Exception as exc:
        raise ConfigError(f"[model] factory {config.factory!r} raised {_one_line(exc)}") from None
    if isinstance(built, list | tuple) and built and all(isinstance(b, nn.Module) for b in built):
        built = nn.Sequential(*built)
    if not isinstance(built, nn.Sequential):
        raise ConfigError(
            f"[model] factory {config.factory!r} must return nn.Sequential or a list of modules, "
            f"got {type(built).__name__}"
        )
    check_output_width(built, config)
    return built


def check_output_width(model: nn.Module, config: ModelConfig) -> None:
    """One forward pass on zeros of ``(2, *input_shape)``: the output must be ``(2, num_classes)``."""
    was_training = model.training
    model.eval()  # batch norm and dropout behave; the RNG is left alone by the caller's fork
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *config.input_shape))
    except Exception as exc:
        raise ConfigError(
            f"[model] input_shape: the factory's model cannot take input {list(config.input_shape)} "
            f"({_one_line(exc)})"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"[model] factory {config.factory!r}: the model must return (batch, num_classes) logits, got {shape}"
        )
    if out.shape[1] != config.num_classes:
        raise ConfigError(
            f"[model] num_classes: is {config.num_classes} but the factory's model outputs {out.shape[1]} "
            f"values per sample (its last layer must have num_classes outputs)"
        )
