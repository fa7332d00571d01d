"""Load pretrained weights exactly, or fail naming what does not fit.

A silent partial load is how a kit reports 0% accuracy (the reference's loader never fired), so
everything that does not load is either one of a few named, expected adaptations (new head,
2-D -> 3-D inflation, PySlowFast MViT conversion, MViT position-table resize) or an error.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .mvit import convert_pyslowfast_mvit, is_pyslowfast_mvit, resize_pos_embed

logger = logging.getLogger(__name__)

_WRAPPER_KEYS = ("model", "model_state", "state_dict")
_PREFIXES = ("module.", "backbone.", "_orig_mod.")
_POS_TABLES = ("pos_encoding.temporal_pos", "pos_encoding.spatial_pos")


class PretrainedError(ValueError):
    """A checkpoint does not fit the model; the message names the keys, shapes or file at fault."""


@dataclass
class LoadReport:
    """What ``load_pretrained`` did. Keys are the model's names (after prefix strip / conversion)."""

    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # classifier head with another class count
    inflated: list[str] = field(default_factory=list)  # 2-D weights repeated over time / T
    converted_from: str | None = None  # e.g. "pyslowfast_mvit"
    interpolated: list[str] = field(default_factory=list)  # MViT position tables resized
    # only non-empty with strict=False
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"loaded {len(self.loaded)}"]
        for name in ("dropped", "inflated", "interpolated", "missing", "unexpected", "mismatched"):
            items = getattr(self, name)
            if items:
                shown = ", ".join(items[:4]) + (", ..." if len(items) > 4 else "")
                parts.append(f"{name} {len(items)} ({shown})")
        if self.converted_from:
            parts.append(f"converted from {self.converted_from}")
        return "; ".join(parts)


def guess_family(keys) -> str | None:
    """Name the architecture family a set of state-dict keys belongs to, or None when unknown."""
    keys = set(keys)
    if any(k.startswith(("patch_embed1.", "blocks1.")) for k in keys):
        return "UniFormer"
    if is_pyslowfast_mvit(dict.fromkeys(keys)):
        return "MViT (PySlowFast)"
    if "conv_proj.weight" in keys and any(k.startswith("pos_encoding.") for k in keys):
        return "MViT (torchvision)"
    if any(k.startswith("s1.pathway0_stem.") for k in keys):
        return "SlowFast (PySlowFast)"
    if any(k.startswith("layer1.0.conv1.") for k in keys):
        return "ResNet (torchvision-style)"
    if any(k.startswith("layers.0.blocks.0.attn.relative_position_bias_table") for k in keys):
        return "Swin Transformer"
    if "patch_embed.proj.weight" in keys and any(k.startswith("blocks.0.attn.") for k in keys):
        return "ViT (timm-style)"
    return None


def _read(path: str | Path, *, weights_only: bool) -> object:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as err:
        raise PretrainedError(
            f"{path}: holds objects other than tensors and plain containers; if you trust "
            f"the file, pass weights_only=False ({err})"
        ) from err
    except Exception as err:  # corrupt or not a torch file
        raise PretrainedError(
            f"{path}: cannot be read as a torch checkpoint ({type(err).__name__}: {err})"
        ) from err


def unwrap_state_dict(obj: object, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside ``obj``: raw, or under ``model`` / ``model_state`` / ``state_dict``, prefixes stripped.

    Strips ``module.`` (DataParallel), ``backbone.`` (mmaction-style) and ``_orig_mod.`` (torch.compile).
    """
    for _ in range(3):  # e.g. {"state_dict": {"model": ...}}
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping):
        raise PretrainedError(
            f"{source}: expected a state dict (a mapping), got {type(obj).__name__}"
        )
    out = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise PretrainedError(
                f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor; "
                f"top-level keys: {sorted(map(str, obj))[:10]}"
            )
        name = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix) :], True
        if name in out:
            raise PretrainedError(
                f"{source}: key {key!r} collides with another after stripping prefixes"
            )
        out[name] = value
    return out


def _head_name(model: nn.Module) -> str | None:
    # the classifier: get_classifier() if the model has it, else its last Linear layer
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if head is not None:
        return next((n for n, m in model.named_modules() if m is head), None)
    return linears[-1][0] if linears else None


def _inflate(value: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    # (O, I, H, W) -> (O, I, T, H, W): repeat over time and divide by T so a static clip gives the 2-D response
    if (
        value.dim() == 4
        and len(shape) == 5
        and value.shape[:2] == shape[:2]
        and value.shape[2:] == shape[3:]
    ):
        t = shape[2]
        return value.unsqueeze(2).repeat(1, 1, t, 1, 1) / t
    return None


def load_pretrained(
    model: nn.Module, path_or_state_dict, *, strict: bool = True, weights_only: bool = True
) -> LoadReport:
    """Load a checkpoint into ``model`` exactly, adapting only what is named in the report.

    ``path_or_state_dict``: a file (official ``.pth``/``.pyth``, the kit's ``checkpoint.pth``) or a
    mapping, raw or wrapped under ``model``/``model_state``/``state_dict``. Allowed adaptations:
    drop a classifier head whose class count differs (the head keeps its fresh init), inflate 2-D
    conv weights to 3-D, convert a PySlowFast MViT state dict, resize MViT position tables to the
    model's frames/crop. Anything else missing, unexpected or of another shape raises
    ``PretrainedError`` naming the keys (``strict=False``: load what fits, report the rest).
    ``num_batches_tracked`` buffers absent from old checkpoints are not an error.
    """
    source = (
        str(path_or_state_dict) if isinstance(path_or_state_dict, (str, Path)) else "state dict"
    )
    obj = (
        _read(path_or_state_dict, weights_only=weights_only)
        if isinstance(path_or_state_dict, (str, Path))
        else path_or_state_dict
    )
    ckpt = unwrap_state_dict(obj, source=source)
    target = model.state_dict()
    report = LoadReport()

    ckpt_family, model_family = guess_family(ckpt), guess_family(target)
    if ckpt_family == "MViT (PySlowFast)" and model_family == "MViT (torchvision)":
        try:
            ckpt = convert_pyslowfast_mvit(ckpt)
        except ValueError as err:
            raise PretrainedError(f"{source}: {err}") from err
        report.converted_from = "pyslowfast_mvit"
    elif ckpt_family and model_family and ckpt_family != model_family:
        raise PretrainedError(
            f"{source} looks like a {ckpt_family} checkpoint, but the model is "
            f"{model_family} ({type(model).__name__})"
        )

    head = _head_name(model)
    head_keys = {f"{head}.weight", f"{head}.bias"} if head else set()
    new_state, unexpected, mismatched = {}, [], []
    for key, value in ckpt.items():
        if key not in target:
            unexpected.append(key)
            continue
        shape = target[key].shape
        if value.shape == shape:
            new_state[key] = value
            report.loaded.append(key)
        elif key in head_keys and value.shape[1:] == shape[1:]:
            report.dropped.append(key)
        elif (inflated := _inflate(value, shape)) is not None:
            new_state[key] = inflated
            report.inflated.append(key)
        elif key.endswith(_POS_TABLES) and value.dim() == 2 and value.shape[1] == shape[1]:
            new_state[key] = resize_pos_embed(key, value, shape)
            report.interpolated.append(key)
        else:
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(shape)}")
    missing = [
        k
        for k in target
        if k not in ckpt and k not in report.dropped and not k.endswith("num_batches_tracked")
    ]

    if strict and (unexpected or missing or mismatched):
        parts = []
        for what, items in (
            ("missing from checkpoint", missing),
            ("unexpected in checkpoint", unexpected),
            ("shape mismatch", mismatched),
        ):
            if items:
                more = f" ... (+{len(items) - 20} more)" if len(items) > 20 else ""
                parts.append(f"{what} ({len(items)}): {', '.join(items[:20])}{more}")
        raise PretrainedError(
            f"{source} does not fit {type(model).__name__}:\n  " + "\n  ".join(parts)
        )
    report.missing, report.unexpected, report.mismatched = missing, unexpected, mismatched

    model.load_state_dict(new_state, strict=False)  # every key was checked against the model above
    for key in report.dropped:
        logger.info("dropped %s (checkpoint head has another class count)", key)
    logger.info(
        "loaded %d tensors from %s (%d inflated, %d interpolated, %d dropped%s)",
        len(new_state),
        source,
        len(report.inflated),
        len(report.interpolated),
        len(report.dropped),
        f", converted from {report.converted_from}" if report.converted_from else "",
    )
    if missing or unexpected or mismatched:
        logger.warning(
            "non-strict load from %s: %d missing, %d unexpected, %d mismatched",
            source,
            len(missing),
            len(unexpected),
            len(mismatched),
        )
    return report
