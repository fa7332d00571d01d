"""MViT (v1) built on torchvision's ``MViT`` class from PySlowFast-style arguments.

There is one implementation: torchvision's. This module only turns PySlowFast's config
(``DEPTH``, ``EMBED_DIM``, ``DIM_MUL``, ``HEAD_MUL``, ``POOL_Q_STRIDE``, ``POOL_KV_STRIDE_ADAPTIVE``)
into torchvision's per-block settings, converts PySlowFast state dicts (``.pyth``, ``model_state``)
to torchvision keys, and resizes position embeddings when a checkpoint was trained at another
frame count or crop. The model always returns pre-softmax logits (PySlowFast applies softmax in
eval mode; that is what made the reference ensemble apply softmax twice). MViT has LayerNorm only,
so Adapt BN has nothing to re-estimate in it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torchvision.models.video.mvit import MSBlockConfig
from torchvision.models.video.mvit import MViT as _TorchvisionMViT

from ._registry import register_model

logger = logging.getLogger(__name__)


def _round_width(width: float, multiplier: float, *, divisor: int = 1) -> int:
    # PySlowFast's round_width (min_width 1): widths stay multiples of the head count
    if not multiplier:
        return int(width)
    width *= multiplier
    out = max(divisor, int(width + divisor / 2) // divisor * divisor)
    if out < 0.9 * width:
        out += divisor
    return int(out)


def _pool_kernel(stride: Sequence[int], kernel: Sequence[int] | None) -> list[int]:
    # PySlowFast: kernel = stride + 1 where the stride is above 1, unless POOL_KVQ_KERNEL is set
    if kernel is not None:
        return list(kernel)
    return [s + 1 if s > 1 else s for s in stride]


def mvit_block_settings(
    *,
    depth: int,
    embed_dim: int,
    num_heads: int,
    dim_mul: Sequence[Sequence[float]],
    head_mul: Sequence[Sequence[float]],
    pool_q_stride: Sequence[Sequence[int]],
    pool_kv_stride_adaptive: Sequence[int] | None,
    pool_kv_stride: Sequence[Sequence[int]] = (),
    pool_kvq_kernel: Sequence[int] | None = None,
) -> list[MSBlockConfig]:
    """torchvision ``MSBlockConfig`` per block from PySlowFast's MViT (v1) arguments.

    ``dim_mul``/``head_mul`` are ``[[block, factor], ...]``; ``pool_q_stride`` is ``[[block, st, sh, sw], ...]``.
    KV strides follow the adaptive rule: start at ``pool_kv_stride_adaptive`` and divide by each Q
    stride met on the way (minimum 1); explicit ``pool_kv_stride`` rows override that.
    """
    dim_muls = [1.0] * (depth + 1)
    head_muls = [1.0] * (depth + 1)
    for table, out, what in ((dim_mul, dim_muls, "dim_mul"), (head_mul, head_muls, "head_mul")):
        for row in table:
            if len(row) != 2 or not 0 <= int(row[0]) < depth:
                raise ValueError(f"{what} row {list(row)} must be [block < depth={depth}, factor]")
            out[int(row[0])] = float(row[1])
    stride_q: list[list[int]] = [[] for _ in range(depth)]
    for row in pool_q_stride:
        if len(row) != 4 or not 0 <= int(row[0]) < depth:
            raise ValueError(
                f"pool_q_stride row {list(row)} must be [block < depth={depth}, st, sh, sw]"
            )
        stride_q[int(row[0])] = [int(s) for s in row[1:]]
    stride_kv: list[list[int]] = [[] for _ in range(depth)]
    if pool_kv_stride_adaptive is not None:
        current = [int(s) for s in pool_kv_stride_adaptive]
        for i in range(depth):
            if stride_q[i]:
                current = [max(c // s, 1) for c, s in zip(current, stride_q[i], strict=True)]
            stride_kv[i] = list(current)
    for row in pool_kv_stride:
        stride_kv[int(row[0])] = [int(s) for s in row[1:]]

    settings = []
    dim, heads = embed_dim, num_heads
    for i in range(depth):
        heads = _round_width(heads, head_muls[i])
        dim_out = _round_width(dim, dim_muls[i + 1], divisor=_round_width(heads, head_muls[i + 1]))
        kernel_q = _pool_kernel(stride_q[i], pool_kvq_kernel) if stride_q[i] else []
        kernel_kv = _pool_kernel(stride_kv[i], pool_kvq_kernel) if stride_kv[i] else []
        settings.append(
            MSBlockConfig(
                num_heads=heads,
                input_channels=dim,
                output_channels=dim_out,
                kernel_q=kernel_q,
                kernel_kv=kernel_kv,
                stride_q=stride_q[i],
                stride_kv=stride_kv[i],
            )
        )
        dim = dim_out
    return settings


class MViT(_TorchvisionMViT):
    """torchvision MViT v1 that remembers its PySlowFast-style config and checks its input size.

    ``(B, C, T, H, W)`` float with ``T == frames`` and ``H == W == crop`` -> logits ``(B, num_classes)``.
    """

    has_batchnorm = False

    def __init__(
        self,
        *,
        depth: int,
        embed_dim: int,
        num_heads: int,
        dim_mul,
        head_mul,
        pool_q_stride,
        pool_kv_stride_adaptive,
        pool_kvq_kernel=None,
        frames: int,
        crop: int,
        num_classes: int,
        # stem (PySlowFast PATCH_KERNEL / PATCH_STRIDE / PATCH_PADDING)
        patch_kernel: Sequence[int] = (3, 7, 7),
        patch_stride: Sequence[int] = (2, 4, 4),
        patch_padding: Sequence[int] = (1, 3, 3),
        # regularisation
        drop_path_rate: float = 0.0,
        head_dropout_rate: float = 0.0,
        attn_dropout_rate: float = 0.0,
    ):
        settings = mvit_block_settings(
            depth=depth,
            embed_dim=embed_dim,
            num_heads=num_heads,
            dim_mul=dim_mul,
            head_mul=head_mul,
            pool_q_stride=pool_q_stride,
            pool_kv_stride_adaptive=pool_kv_stride_adaptive,
            pool_kvq_kernel=pool_kvq_kernel,
        )
        super().__init__(
            spatial_size=(crop, crop),
            temporal_size=frames,
            block_setting=settings,
            residual_pool=False,
            residual_with_cls_embed=False,
            rel_pos_embed=False,
            proj_after_attn=False,
            dropout=head_dropout_rate,
            attention_dropout=attn_dropout_rate,
            stochastic_depth_prob=drop_path_rate,
            num_classes=num_classes,
            patch_embed_kernel=tuple(patch_kernel),
            patch_embed_stride=tuple(patch_stride),
            patch_embed_padding=tuple(patch_padding),
        )
        self.frames, self.crop, self.num_classes = frames, crop, num_classes
        self.block_settings = settings

    def get_classifier(self) -> torch.nn.Module:
        return self.head[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` -> pre-softmax logits ``(B, num_classes)``."""
        if (
            x.dim() != 5
            or x.shape[2] != self.frames
            or x.shape[3] != self.crop
            or x.shape[4] != self.crop
        ):
            raise ValueError(
                f"this MViT was built for (B, C, {self.frames}, {self.crop}, {self.crop}) input, got "
                f"{tuple(x.shape)}; build it with frames=/crop= matching the clips "
                "(position embeddings are resized when a checkpoint is loaded)"
            )
        return super().forward(x)


_MVIT_B_32x3 = dict(
    depth=24,
    embed_dim=96,
    num_heads=1,
    dim_mul=[[2, 2.0], [5, 2.0], [21, 2.0]],
    head_mul=[[2, 2.0], [5, 2.0], [21, 2.0]],
    pool_q_stride=[[2, 1, 2, 2], [5, 1, 2, 2], [21, 1, 2, 2]],
    pool_kv_stride_adaptive=[1, 8, 8],
    frames=32,
    crop=224,
    num_classes=400,
    drop_path_rate=0.3,
    head_dropout_rate=0.5,
)


@register_model
def mvit_b(**overrides) -> MViT:
    """MViT-B 32x3 (PySlowFast ``MVIT_B_32x3_CONV.yaml``): 24 blocks, width 96, 32 frames at 224 px."""
    return MViT(**{**_MVIT_B_32x3, **overrides})


@register_model
def mvit_tiny(**overrides) -> MViT:
    """Tiny MViT for CPU demos and tests: 4 blocks, width 16, 8 frames at 64 px, 11 classes."""
    tiny = dict(
        depth=4,
        embed_dim=16,
        num_heads=1,
        dim_mul=[[1, 2.0], [3, 2.0]],
        head_mul=[[1, 2.0], [3, 2.0]],
        pool_q_stride=[[1, 1, 2, 2], [3, 1, 2, 2]],
        frames=8,
        crop=64,
        num_classes=11,
        drop_path_rate=0.1,
        head_dropout_rate=0.0,
    )
    return MViT(**{**_MVIT_B_32x3, **tiny, **overrides})


# ---------------------------------------------------------------------------------------------
# PySlowFast checkpoints

_PYSLOWFAST_RULES = [
    (re.compile(r"^patch_embed\.proj\.(weight|bias)$"), r"conv_proj.\1"),
    (re.compile(r"^blocks\.(\d+)\.attn\.proj\.(weight|bias)$"), r"blocks.\1.attn.project.0.\2"),
    (
        re.compile(r"^blocks\.(\d+)\.attn\.pool_([qkv])\.weight$"),
        r"blocks.\1.attn.pool_\2.pool.weight",
    ),
    (
        re.compile(r"^blocks\.(\d+)\.attn\.norm_([qkv])\.(weight|bias)$"),
        r"blocks.\1.attn.pool_\2.norm_act.0.\3",
    ),
    (re.compile(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$"), r"blocks.\1.attn.qkv.\2"),
    (re.compile(r"^blocks\.(\d+)\.mlp\.fc1\.(weight|bias)$"), r"blocks.\1.mlp.0.\2"),
    (re.compile(r"^blocks\.(\d+)\.mlp\.fc2\.(weight|bias)$"), r"blocks.\1.mlp.3.\2"),
    (re.compile(r"^blocks\.(\d+)\.proj\.(weight|bias)$"), r"blocks.\1.project.\2"),
    (re.compile(r"^blocks\.(\d+)\.(norm1|norm2)\.(weight|bias)$"), r"blocks.\1.\2.\3"),
    (re.compile(r"^norm\.(weight|bias)$"), r"norm.\1"),
    (re.compile(r"^head\.projection\.(weight|bias)$"), r"head.1.\1"),
]
_PYSLOWFAST_POS = {
    "cls_token": "pos_encoding.class_token",
    "pos_embed_spatial": "pos_encoding.spatial_pos",
    "pos_embed_temporal": "pos_encoding.temporal_pos",
    "pos_embed_class": "pos_encoding.class_pos",
}
_SEPARATE_QKV = re.compile(r"^(blocks\.\d+\.attn)\.([qkv])\.(weight|bias)$")


def is_pyslowfast_mvit(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True when the keys are those of a PySlowFast MViT (``patch_embed.proj`` + ``blocks.N.attn`` + pos embeds)."""
    keys = set(state_dict)
    return (
        "patch_embed.proj.weight" in keys
        and any(k.startswith("blocks.0.attn.") for k in keys)
        and bool(keys & {"cls_token", "pos_embed_spatial", "pos_embed"})
    )


def convert_pyslowfast_mvit(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PySlowFast MViT state dict -> torchvision ``MViT`` keys (fused or separate q/k/v attention).

    Raises ``ValueError`` naming the keys that have no torchvision counterpart (e.g. a joint
    ``pos_embed`` or relative position tables, which MViT v1 in torchvision does not have).
    """
    out: dict[str, torch.Tensor] = {}
    separate: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    unknown = []
    for key, value in state_dict.items():
        if key in _PYSLOWFAST_POS:
            out[_PYSLOWFAST_POS[key]] = (
                value.reshape(value.shape[-2], value.shape[-1])
                if key in ("pos_embed_spatial", "pos_embed_temporal")
                else value.reshape(-1)
            )
            continue
        m = _SEPARATE_QKV.match(key)
        if m:
            separate.setdefault(f"{m[1]}.qkv.{m[3]}", {})[m[2]] = value
            continue
        for pattern, target in _PYSLOWFAST_RULES:
            if pattern.match(key):
                out[pattern.sub(target, key)] = value
                break
        else:
            unknown.append(key)
    for key, parts in separate.items():
        if set(parts) != {"q", "k", "v"}:
            unknown.append(f"{key} (only {sorted(parts)} of q/k/v present)")
            continue
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if unknown:
        raise ValueError(
            f"PySlowFast MViT keys with no torchvision MViT counterpart: {', '.join(unknown[:20])}"
        )
    return out


def resize_pos_embed(key: str, value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Resize a torchvision MViT position table to ``shape``.

    ``pos_encoding.temporal_pos`` ``(T', C)`` is interpolated linearly over time (a checkpoint trained
    at 16 frames used at 32); ``pos_encoding.spatial_pos`` ``(S', C)`` bicubically on its square grid.
    """
    if value.dim() != 2 or value.shape[1] != shape[1]:
        raise ValueError(f"{key}: cannot resize {tuple(value.shape)} to {tuple(shape)}")
    if key.endswith("temporal_pos"):
        table = value.t().unsqueeze(0)  # (1, C, T')
        return (
            F.interpolate(table, size=shape[0], mode="linear", align_corners=False)[0]
            .t()
            .contiguous()
        )
    if key.endswith("spatial_pos"):
        src, dst = round(value.shape[0] ** 0.5), round(shape[0] ** 0.5)
        if src * src != value.shape[0] or dst * dst != shape[0]:
            raise ValueError(
                f"{key}: spatial table {tuple(value.shape)} -> {tuple(shape)} is not a square grid"
            )
        grid = value.t().reshape(1, -1, src, src)
        grid = F.interpolate(grid, size=(dst, dst), mode="bicubic", align_corners=False)
        return grid.reshape(-1, dst * dst).t().contiguous()
    raise ValueError(f"{key} is not an MViT position table")
