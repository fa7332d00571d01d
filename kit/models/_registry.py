"""A timm-style model registry: ``@register_model`` on a builder, ``create_model(name)`` to build."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its own name; ``fn(**overrides)`` must return an ``nn.Module``."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob ``pattern``, sorted."""
    from fnmatch import fnmatch

    return sorted(n for n in _MODELS if fnmatch(n, pattern))


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model.

    Example::

        model = create_model("uniformer_s", num_classes=11, depth=[1, 1, 1, 1])
        logits = model(torch.randn(2, 3, 8, 64, 64))  # (B, C, T, H, W) -> (B, 11)
    """
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return _MODELS[name](**overrides)
