"""Video backbones of the method behind one registry.

``create_model(name, num_classes=..., **overrides)`` builds ``uniformer_s``/``uniformer_b``/
``uniformer_tiny``, ``mvit_b``/``mvit_tiny`` and ``slowfast_r50``/``slowfast_r101``/``slowfast_tiny``;
every model maps ``(B, C, T, H, W)`` float to pre-softmax logits ``(B, num_classes)``.
``load_pretrained(model, path_or_state_dict)`` loads official checkpoints exactly or fails naming keys.
"""

from __future__ import annotations

import logging

import torch.nn as nn

from . import mvit, slowfast, uniformer  # noqa: F401  (importing registers the models)
from ._registry import create_model, list_models, register_model
from .pretrained import LoadReport, PretrainedError, load_pretrained

logger = logging.getLogger(__name__)

__all__ = [
    "create_model",
    "list_models",
    "register_model",
    "load_pretrained",
    "LoadReport",
    "PretrainedError",
    "has_batchnorm",
]


def has_batchnorm(model: nn.Module) -> bool:
    """True when ``model`` has BatchNorm layers, i.e. Adapt BN has statistics to re-estimate (MViT: False)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
