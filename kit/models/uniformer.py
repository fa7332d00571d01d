"""Video UniFormer (Li et al., 2022) with the official state-dict key names.

Stages 1-2 are conv blocks (``CBlock``: BatchNorm3d + depthwise 5x5x5 "attention"), stages 3-4
are global spatiotemporal self-attention blocks (``SABlock``). Keys match the official
``video_classification`` checkpoints (``patch_embed1.proj.weight``, ``blocks3.0.attn.qkv.weight``,
``norm.running_mean``, ``head.weight``), so they load without renaming. There is no position
embedding table, so any even frame count runs with the same weights.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch.utils.checkpoint import checkpoint

from ._registry import register_model

logger = logging.getLogger(__name__)

ATTN_IMPLS = ("sdpa", "plain")


class Attention(nn.Module):
    """Multi-head self-attention over tokens ``(B, N, C)``; ``impl`` picks SDPA or plain softmax."""

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        qkv_bias: bool,
        qk_scale: float | None,
        attn_drop: float,
        proj_drop: float,
        impl: str = "sdpa",
    ):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = (
            self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        )
        q, k, v = qkv.unbind(0)
        drop = self.attn_drop if self.training else 0.0
        if self.impl == "sdpa":
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=self.scale)
        elif self.impl == "plain":
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            x = F.dropout(attn, p=drop) @ v
        else:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {self.impl!r}")
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class CMlp(nn.Module):
    """Point-wise MLP on ``(B, C, T, H, W)`` as 1x1x1 convs (keys ``fc1``/``fc2`` as official)."""

    def __init__(self, dim: int, hidden: int, *, drop: float):
        super().__init__()
        self.fc1 = nn.Conv3d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv3d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class CBlock(nn.Module):
    """Local block: depthwise 3x3x3 position conv, BN, 1x1x1 -> depthwise 5x5x5 -> 1x1x1, BN + conv MLP."""

    def __init__(self, dim: int, *, mlp_ratio: float, drop: float, drop_path: float):
        super().__init__()
        self.pos_embed = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm3d(dim)
        self.conv1 = nn.Conv3d(dim, dim, 1)
        self.conv2 = nn.Conv3d(dim, dim, 1)
        self.attn = nn.Conv3d(dim, dim, 5, padding=2, groups=dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.BatchNorm3d(dim)
        self.mlp = CMlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.drop_path(self.conv2(self.attn(self.conv1(self.norm1(x)))))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SABlock(nn.Module):
    """Global block: depthwise 3x3x3 position conv, then pre-norm self-attention over all T*H*W tokens."""

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop: float,
        attn_drop: float,
        drop_path: float,
        attn_impl: str,
    ):
        super().__init__()
        self.pos_embed = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            attn_drop=attn_drop,
            proj_drop=drop,
            impl=attn_impl,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        B, C, T, H, W = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x.transpose(1, 2).reshape(B, C, T, H, W)


class PatchEmbed(nn.Module):
    """Strided Conv3d then LayerNorm (eps 1e-5, as official) over channels; ``(B, C, T, H, W)`` in and out."""

    def __init__(
        self, in_chans: int, embed_dim: int, *, kernel: tuple, stride: tuple, padding: tuple
    ):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3).contiguous()


class Uniformer(nn.Module):
    """Video UniFormer: ``(B, C, T, H, W)`` float -> logits ``(B, num_classes)``.

    ``std=True`` is the official flag for the later patch embeddings: kernel (3,2,2) with temporal
    stride 1 instead of kernel (1,2,2); the stage-1 embedding always halves T. ``attn_impl``
    chooses ``F.scaled_dot_product_attention`` ("sdpa") or the explicit softmax(QK^T)V ("plain").
    """

    def __init__(
        self,
        *,
        depth: Sequence[int] = (5, 8, 20, 7),
        embed_dim: Sequence[int] = (64, 128, 320, 512),
        head_dim: int = 64,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        num_classes: int = 400,
        in_chans: int = 3,
        std: bool = False,
        # regularisation
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        # implementation
        attn_impl: str = "sdpa",
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        if len(depth) != 4 or len(embed_dim) != 4:
            raise ValueError(
                f"depth and embed_dim need 4 stages, got depth={list(depth)} embed_dim={list(embed_dim)}"
            )
        for dim in embed_dim[2:]:
            if dim % head_dim:
                raise ValueError(
                    f"head_dim={head_dim} does not divide attention-stage width {dim} "
                    f"(embed_dim={list(embed_dim)})"
                )
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
        self.num_classes = num_classes
        self.num_features = embed_dim[-1]
        self.grad_checkpointing = grad_checkpointing
        self.checkpoint_num: list[int] = list(depth)

        later = (
            dict(kernel=(3, 2, 2), stride=(1, 2, 2), padding=(1, 0, 0))
            if std
            else dict(kernel=(1, 2, 2), stride=(1, 2, 2), padding=(0, 0, 0))
        )
        self.patch_embed1 = PatchEmbed(
            in_chans, embed_dim[0], kernel=(3, 4, 4), stride=(2, 4, 4), padding=(1, 0, 0)
        )
        self.patch_embed2 = PatchEmbed(embed_dim[0], embed_dim[1], **later)
        self.patch_embed3 = PatchEmbed(embed_dim[1], embed_dim[2], **later)
        self.patch_embed4 = PatchEmbed(embed_dim[2], embed_dim[3], **later)
        self.pos_drop = nn.Dropout(drop_rate)

        # stochastic depth grows linearly over all blocks of all stages
        n = sum(depth)
        dpr = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        starts = [sum(depth[:i]) for i in range(4)]
        self.blocks1 = nn.ModuleList(
            CBlock(embed_dim[0], mlp_ratio=mlp_ratio, drop=drop_rate, drop_path=dpr[starts[0] + i])
            for i in range(depth[0])
        )
        self.blocks2 = nn.ModuleList(
            CBlock(embed_dim[1], mlp_ratio=mlp_ratio, drop=drop_rate, drop_path=dpr[starts[1] + i])
            for i in range(depth[1])
        )
        sa = dict(
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            drop=drop_rate,
            attn_drop=attn_drop_rate,
            attn_impl=attn_impl,
        )
        self.blocks3 = nn.ModuleList(
            SABlock(
                embed_dim[2], num_heads=embed_dim[2] // head_dim, drop_path=dpr[starts[2] + i], **sa
            )
            for i in range(depth[2])
        )
        self.blocks4 = nn.ModuleList(
            SABlock(
                embed_dim[3], num_heads=embed_dim[3] // head_dim, drop_path=dpr[starts[3] + i], **sa
            )
            for i in range(depth[3])
        )
        self.norm = nn.BatchNorm3d(embed_dim[-1])
        self.head = nn.Linear(embed_dim[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    def set_attn_impl(self, impl: str) -> None:
        """Switch every attention block to ``"sdpa"`` or ``"plain"`` (same weights)."""
        if impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {impl!r}")
        for m in self.modules():
            if isinstance(m, Attention):
                m.impl = impl

    def set_grad_checkpointing(
        self, enable: bool = True, *, checkpoint_num: Sequence[int] | None = None
    ) -> None:
        """Recompute block activations in backward; ``checkpoint_num[s]`` = blocks of stage s to checkpoint."""
        self.grad_checkpointing = enable
        stages = [self.blocks1, self.blocks2, self.blocks3, self.blocks4]
        self.checkpoint_num = (
            [len(s) for s in stages] if checkpoint_num is None else list(checkpoint_num)
        )

    def get_classifier(self) -> nn.Module:
        return self.head

    def _run_stage(self, blocks: nn.ModuleList, x: torch.Tensor, stage: int) -> torch.Tensor:
        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for i, blk in enumerate(blocks):
            if use_ckpt and i < self.checkpoint_num[stage]:
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` -> final feature map ``(B, embed_dim[-1], T/2, H/32, W/32)`` after the last BN."""
        x = self.pos_drop(self.patch_embed1(x))
        x = self._run_stage(self.blocks1, x, 0)
        x = self._run_stage(self.blocks2, self.patch_embed2(x), 1)
        x = self._run_stage(self.blocks3, self.patch_embed3(x), 2)
        x = self._run_stage(self.blocks4, self.patch_embed4(x), 3)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` -> logits ``(B, num_classes)`` (global average pool, then ``head``)."""
        if x.dim() != 5:
            raise ValueError(f"UniFormer expects (B, C, T, H, W), got shape {tuple(x.shape)}")
        return self.head(self.forward_features(x).flatten(2).mean(-1))


def _init_weights(m: nn.Module) -> None:
    # official init: Linear trunc-normal(0.02) with zero bias, LayerNorm (1, 0); convs keep PyTorch's default
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _build(defaults: dict, overrides: dict) -> Uniformer:
    return Uniformer(**{**defaults, **overrides})


@register_model
def uniformer_s(**overrides) -> Uniformer:
    """UniFormer-S: depth [3,4,8,3], widths [64,128,320,512], head_dim 64."""
    return _build(dict(depth=[3, 4, 8, 3], embed_dim=[64, 128, 320, 512], head_dim=64), overrides)


@register_model
def uniformer_b(**overrides) -> Uniformer:
    """UniFormer-B: depth [5,8,20,7], widths [64,128,320,512], head_dim 64 (the method's main model)."""
    return _build(dict(depth=[5, 8, 20, 7], embed_dim=[64, 128, 320, 512], head_dim=64), overrides)


@register_model
def uniformer_tiny(**overrides) -> Uniformer:
    """Tiny UniFormer for CPU demos and tests: depth [1,1,2,1], widths [32,64,96,128], head_dim 32, 11 classes."""
    return _build(
        dict(depth=[1, 1, 2, 1], embed_dim=[32, 64, 96, 128], head_dim=32, num_classes=11),
        overrides,
    )
