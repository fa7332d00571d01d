"""SlowFast (ResNet-3D, two pathways) with PySlowFast's state-dict names.

A slow pathway sees few frames with many channels, a fast pathway sees all frames with
``1 / beta_inv`` of the channels; after the stem and res2-res4 a time-strided lateral conv feeds
fast features into the slow pathway. The module names (``s1.pathway0_stem.conv``,
``s2.pathway1_res0.branch2.a_bn``, ``s1_fuse.conv_f2s``, ``head.projection``) are PySlowFast's, so
an official ``.pyth`` checkpoint (``model_state``) loads strictly.

Unlike PySlowFast, the model takes ONE ``(B, C, T, H, W)`` tensor and splits the pathways itself
(exactly as PySlowFast's ``PackPathway``), and the head always returns pre-softmax logits
(PySlowFast applies softmax in eval mode, which the reference then softmaxed again).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from kit.models._registry import register_model

logger = logging.getLogger(__name__)

# Temporal kernel of (stem, res2, res3, res4, res5) for (slow, fast): PySlowFast's "slowfast" basis.
TEMPORAL_KERNELS = ((1, 5), (1, 3), (1, 3), (3, 3), (3, 3))
STAGE_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
SPATIAL_STRIDES = (1, 2, 2, 2)
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


def slow_frame_indices(num_frames: int, *, alpha: int) -> torch.Tensor:
    """Frame indices of the slow pathway, ``(num_frames // alpha,)`` int64.

    PySlowFast's ``PackPathway``: ``linspace(0, T - 1, T // alpha)`` truncated toward zero, so
    T = 16, alpha = 4 gives 0, 5, 10, 15 (not 0, 4, 8, 12).
    """
    if num_frames < alpha or num_frames % alpha:
        raise ValueError(
            f"SlowFast needs a frame count divisible by alpha={alpha}, got T={num_frames}"
        )
    return torch.linspace(0, num_frames - 1, num_frames // alpha).long()


def pack_pathway(video: torch.Tensor, *, alpha: int) -> list[torch.Tensor]:
    """Split a clip batch ``(B, C, T, H, W)`` into ``[slow (B, C, T // alpha, H, W), fast (B, C, T, H, W)]``."""
    if video.dim() != 5:
        raise ValueError(f"SlowFast takes a (B, C, T, H, W) tensor, got shape {tuple(video.shape)}")
    index = slow_frame_indices(video.shape[2], alpha=alpha).to(video.device)
    return [torch.index_select(video, 2, index), video]


def _bn(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class ResNetBasicStem(nn.Module):
    """Conv (kt, 7, 7) stride (1, 2, 2), BN, ReLU, max-pool (1, 3, 3) stride (1, 2, 2)."""

    def __init__(self, dim_in: int, dim_out: int, *, temporal_kernel: int):
        super().__init__()
        self.conv = nn.Conv3d(
            dim_in, dim_out, (temporal_kernel, 7, 7), stride=(1, 2, 2),
            padding=(temporal_kernel // 2, 3, 3), bias=False,
        )
        self.bn = _bn(dim_out)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.relu(self.bn(self.conv(x))))


class VideoModelStem(nn.Module):
    """One ``ResNetBasicStem`` per pathway, named ``pathway{i}_stem``."""

    def __init__(self, dims_in: Sequence[int], dims_out: Sequence[int], *, temporal_kernels: Sequence[int]):
        super().__init__()
        for i, (d_in, d_out, kt) in enumerate(zip(dims_in, dims_out, temporal_kernels, strict=True)):
            self.add_module(f"pathway{i}_stem", ResNetBasicStem(d_in, d_out, temporal_kernel=kt))
        self.num_pathways = len(dims_in)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        return [getattr(self, f"pathway{i}_stem")(x[i]) for i in range(self.num_pathways)]


class FuseFastToSlow(nn.Module):
    """Lateral connection: ``[slow, ReLU(BN(conv_f2s(fast)))]`` concatenated on channels; fast unchanged."""

    def __init__(self, dim_fast: int, *, channel_ratio: int, kernel_size: int, alpha: int):
        super().__init__()
        self.conv_f2s = nn.Conv3d(
            dim_fast, dim_fast * channel_ratio, (kernel_size, 1, 1), stride=(alpha, 1, 1),
            padding=(kernel_size // 2, 0, 0), bias=False,
        )
        self.bn = _bn(dim_fast * channel_ratio)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        slow, fast = x
        fused = self.relu(self.bn(self.conv_f2s(fast)))
        # slow channels first: checkpoints depend on this order
        return [torch.cat([slow, fused], 1), fast]


class BottleneckTransform(nn.Module):
    """Conv (kt, 1, 1), BN, ReLU, conv (1, 3, 3) carrying the stride, BN, ReLU, conv 1x1x1, BN."""

    def __init__(self, dim_in: int, dim_out: int, dim_inner: int, *, temporal_kernel: int, stride: int):
        super().__init__()
        self.a = nn.Conv3d(
            dim_in, dim_inner, (temporal_kernel, 1, 1), padding=(temporal_kernel // 2, 0, 0), bias=False
        )
        self.a_bn = _bn(dim_inner)
        self.a_relu = nn.ReLU(inplace=True)
        self.b = nn.Conv3d(
            dim_inner, dim_inner, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False
        )
        self.b_bn = _bn(dim_inner)
        self.b_relu = nn.ReLU(inplace=True)
        self.c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.c_bn = _bn(dim_out)
        self.c_bn.transform_final_bn = True  # zero-initialised so every block starts as identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a_relu(self.a_bn(self.a(x)))
        x = self.b_relu(self.b_bn(self.b(x)))
        return self.c_bn(self.c(x))


class ResBlock(nn.Module):
    """``ReLU(shortcut(x) + branch2(x))``; the shortcut is a strided 1x1x1 conv + BN when shapes change."""

    def __init__(self, dim_in: int, dim_out: int, dim_inner: int, *, temporal_kernel: int, stride: int):
        super().__init__()
        if dim_in != dim_out or stride != 1:
            self.branch1 = nn.Conv3d(dim_in, dim_out, 1, stride=(1, stride, stride), bias=False)
            self.branch1_bn = _bn(dim_out)
        self.branch2 = BottleneckTransform(
            dim_in, dim_out, dim_inner, temporal_kernel=temporal_kernel, stride=stride
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.branch1_bn(self.branch1(x)) if hasattr(self, "branch1") else x
        return self.relu(shortcut + self.branch2(x))


class ResStage(nn.Module):
    """``num_blocks`` bottleneck blocks per pathway, named ``pathway{i}_res{j}``.

    In pathway i the first ``num_block_temp_kernel[i]`` blocks use ``temporal_kernels[i]``, the
    rest use 1 (PySlowFast's ``NUM_BLOCK_TEMP_KERNEL``, e.g. R101_50_50 vs R101_101_101).
    """

    def __init__(
        self,
        *,
        dims_in: Sequence[int],
        dims_out: Sequence[int],
        dims_inner: Sequence[int],
        temporal_kernels: Sequence[int],
        num_blocks: int,
        num_block_temp_kernel: Sequence[int],
        stride: int,
    ):
        super().__init__()
        self.num_pathways = len(dims_in)
        self.num_blocks = num_blocks
        for p in range(self.num_pathways):
            for j in range(num_blocks):
                kt = temporal_kernels[p] if j < num_block_temp_kernel[p] else 1
                block = ResBlock(
                    dims_in[p] if j == 0 else dims_out[p], dims_out[p], dims_inner[p],
                    temporal_kernel=kt, stride=stride if j == 0 else 1,
                )
                self.add_module(f"pathway{p}_res{j}", block)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for p in range(self.num_pathways):
            y = x[p]
            for j in range(self.num_blocks):
                y = getattr(self, f"pathway{p}_res{j}")(y)
            out.append(y)
        return out


class SlowFastHead(nn.Module):
    """Global average pool of each pathway, concat ``[slow, fast]``, dropout, ``projection`` -> logits.

    PySlowFast pools with a stride-1 ``AvgPool3d`` of kernel ``pool_kernels`` (sized for
    ``frames`` x ``crop``); on that input size it is exactly this global average. On larger inputs
    PySlowFast averages softmax over the leftover positions; here the features are averaged, so
    any frame count or crop gives ``(B, num_classes)`` logits.
    """

    def __init__(self, dims_in: Sequence[int], num_classes: int, *, dropout: float, pool_kernels):
        super().__init__()
        self.pool_kernels = [tuple(k) for k in pool_kernels]  # PySlowFast's, kept for reference
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.projection = nn.Linear(sum(dims_in), num_classes)

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        pooled = [pathway.mean(dim=(2, 3, 4)) for pathway in x]
        return self.projection(self.dropout(torch.cat(pooled, 1)))


class SlowFast(nn.Module):
    """SlowFast ResNet-3D, PySlowFast state-dict names; ``(B, C, T, H, W)`` -> logits ``(B, num_classes)``.

    Example::

        model = SlowFast(stage_depths=(3, 4, 6, 3), width_per_group=8, num_classes=11)
        logits = model(torch.randn(2, 3, 16, 64, 64))  # (2, 11)
    """

    def __init__(
        self,
        *,
        stage_depths: Sequence[int] = STAGE_DEPTHS[50],
        num_classes: int = 400,
        in_chans: int = 3,
        # widths
        width_per_group: int = 64,
        beta_inv: int = 8,
        # pathways and lateral connections
        alpha: int = 4,
        fusion_conv_channel_ratio: int = 2,
        fusion_kernel_size: int = 7,
        num_block_temp_kernel: Sequence[Sequence[int]] | None = None,
        # nominal input (PySlowFast's head pool sizes) and head
        frames: int = 32,
        crop: int = 224,
        dropout: float = 0.5,
    ):
        super().__init__()
        stage_depths = tuple(int(d) for d in stage_depths)
        _check_arch(
            stage_depths=stage_depths, width_per_group=width_per_group, beta_inv=beta_inv,
            alpha=alpha, fusion_conv_channel_ratio=fusion_conv_channel_ratio,
            fusion_kernel_size=fusion_kernel_size, frames=frames, crop=crop, dropout=dropout,
            num_classes=num_classes,
        )
        if num_block_temp_kernel is None:
            num_block_temp_kernel = [[d, d] for d in stage_depths]
        num_block_temp_kernel = _check_temp_kernel_blocks(num_block_temp_kernel, stage_depths)
        self.alpha = alpha
        self.beta_inv = beta_inv
        self.input_size = (frames, crop, crop)
        self.num_classes = num_classes
        self.grad_checkpointing = False

        w = width_per_group
        ratio = fusion_conv_channel_ratio

        def fuse(dim_fast: int) -> FuseFastToSlow:
            return FuseFastToSlow(dim_fast, channel_ratio=ratio, kernel_size=fusion_kernel_size, alpha=alpha)

        self.s1 = VideoModelStem([in_chans, in_chans], [w, w // beta_inv], temporal_kernels=TEMPORAL_KERNELS[0])
        self.s1_fuse = fuse(w // beta_inv)
        # slow input of the next stage = slow output + fused fast channels (fast * ratio)
        slow_in, fast_in = w + w // beta_inv * ratio, w // beta_inv
        for k in range(4):
            dim_out = w * 4 * 2**k
            dim_inner = w * 2**k
            stage = ResStage(
                dims_in=[slow_in, fast_in],
                dims_out=[dim_out, dim_out // beta_inv],
                dims_inner=[dim_inner, dim_inner // beta_inv],
                temporal_kernels=TEMPORAL_KERNELS[k + 1],
                num_blocks=stage_depths[k],
                num_block_temp_kernel=num_block_temp_kernel[k],
                stride=SPATIAL_STRIDES[k],
            )
            self.add_module(f"s{k + 2}", stage)
            if k < 3:  # no lateral connection after res5
                self.add_module(f"s{k + 2}_fuse", fuse(dim_out // beta_inv))
                slow_in, fast_in = dim_out + dim_out // beta_inv * ratio, dim_out // beta_inv
            else:
                slow_in, fast_in = dim_out, dim_out // beta_inv
        # PySlowFast's max-pool after res2 has kernel 1 for SlowFast (an identity), so it is omitted
        self.head = SlowFastHead(
            [slow_in, fast_in], num_classes, dropout=dropout,
            pool_kernels=[(frames // alpha, crop // 32, crop // 32), (frames, crop // 32, crop // 32)],
        )
        self._stage_names = ["s1", "s1_fuse", "s2", "s2_fuse", "s3", "s3_fuse", "s4", "s4_fuse", "s5"]
        _init_weights(self)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage in the backward pass instead of storing its activations.

        BN running statistics then see every training batch twice (forward and recompute);
        Adapt BN re-estimates them from scratch anyway.
        """
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Linear:
        """The final Linear layer (``head.projection``), e.g. for dropping a checkpoint's head."""
        return self.head.projection

    def forward_pathways(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        """Features ``[slow (B, Cs, T/alpha, h, w), fast (B, Cf, T, h, w)]`` from the split input."""
        for name in self._stage_names:
            stage = getattr(self, name)
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = list(checkpoint(lambda s, f, m=stage: tuple(m([s, f])), *x, use_reentrant=False))
            else:
                x = stage(x)
        return x

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` (pre-softmax, also in eval) from clips ``(B, C, T, H, W)``."""
        return self.head(self.forward_pathways(pack_pathway(video, alpha=self.alpha)))


def _check_arch(
    *, stage_depths, width_per_group, beta_inv, alpha, fusion_conv_channel_ratio,
    fusion_kernel_size, frames, crop, dropout, num_classes,
) -> None:
    def positive_int(name, value):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"SlowFast: {name} must be a positive int, got {value!r}")

    if len(stage_depths) != 4:
        raise ValueError(f"SlowFast: stage_depths needs 4 entries (res2..res5), got {list(stage_depths)}")
    for name, value in [
        ("width_per_group", width_per_group), ("beta_inv", beta_inv), ("alpha", alpha),
        ("fusion_conv_channel_ratio", fusion_conv_channel_ratio),
        ("fusion_kernel_size", fusion_kernel_size), ("frames", frames), ("crop", crop),
        ("num_classes", num_classes), *((f"stage_depths[{i}]", d) for i, d in enumerate(stage_depths)),
    ]:
        positive_int(name, value)
    if width_per_group % beta_inv:
        raise ValueError(
            f"SlowFast: width_per_group={width_per_group} must be a multiple of beta_inv={beta_inv} "
            f"(the fast pathway has width_per_group / beta_inv channels)"
        )
    if fusion_kernel_size % 2 == 0:
        raise ValueError(
            f"SlowFast: fusion_kernel_size must be odd (padding k // 2 keeps T / alpha frames), got {fusion_kernel_size}"
        )
    if frames % alpha:
        raise ValueError(f"SlowFast: frames={frames} must be divisible by alpha={alpha}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"SlowFast: dropout must be in [0, 1), got {dropout!r}")


def _check_temp_kernel_blocks(value, stage_depths) -> list[list[int]]:
    rows = [list(row) for row in value]
    if len(rows) != 4 or any(len(row) != 2 for row in rows):
        raise ValueError(
            f"SlowFast: num_block_temp_kernel must be 4 rows (res2..res5) of [slow, fast], got {value!r}"
        )
    for k, (row, depth) in enumerate(zip(rows, stage_depths, strict=True)):
        if any(isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= depth for n in row):
            raise ValueError(
                f"SlowFast: num_block_temp_kernel[{k}]={row} must be ints in [0, {depth}] "
                f"(res{k + 2} has {depth} blocks)"
            )
    return rows


def _init_weights(model: nn.Module) -> None:
    # PySlowFast's init: MSRA convs, BN 1/0 with the last BN of each block zeroed, head N(0, 0.01)
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.constant_(m.weight, 0.0 if getattr(m, "transform_final_bn", False) else 1.0)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)


def _build(depth: int, defaults: dict, overrides: dict) -> SlowFast:
    args = {**defaults, **overrides}
    logger.debug("building SlowFast-R%d with %s", depth, args)
    return SlowFast(stage_depths=STAGE_DEPTHS[depth], **args)


@register_model
def slowfast_r50(**overrides) -> SlowFast:
    """SlowFast-R50, PySlowFast's ``SLOWFAST_8x8_R50`` (32 frames, alpha 4, fusion kernel 7).

    Overrides: ``width_per_group``, ``alpha``, ``beta_inv``, ``fusion_conv_channel_ratio``,
    ``fusion_kernel_size``, ``num_block_temp_kernel``, ``num_classes``, ``frames``, ``crop``,
    ``dropout``, ``in_chans``. There is no stochastic depth (``drop_path_rate`` is refused).
    """
    defaults = dict(fusion_kernel_size=7, num_block_temp_kernel=[[3, 3], [4, 4], [6, 6], [3, 3]])
    return _build(50, defaults, overrides)


@register_model
def slowfast_r101(**overrides) -> SlowFast:
    """SlowFast-R101, PySlowFast's ``SLOWFAST_8x8_R101_101_101`` (fusion kernel 5, temporal kernels in all res4 blocks).

    ``num_block_temp_kernel=[[3, 3], [4, 4], [6, 6], [3, 3]]`` gives the ``R101_50_50`` variant.
    Overrides as for ``slowfast_r50``.
    """
    defaults = dict(fusion_kernel_size=5, num_block_temp_kernel=[[3, 3], [4, 4], [23, 23], [3, 3]])
    return _build(101, defaults, overrides)


@register_model
def slowfast_tiny(**overrides) -> SlowFast:
    """A narrow SlowFast (one block per stage, width 8: fast stem 1 channel) for CPU tests and the demo.

    Built for 8-16 frames at 32-64 px (with T = 8 the slow pathway has 2 frames).
    Overrides as for ``slowfast_r50``.
    """
    args = dict(width_per_group=8, frames=8, crop=64, fusion_kernel_size=7, num_block_temp_kernel=None)
    args.update(overrides)
    logger.debug("building slowfast_tiny with %s", args)
    return SlowFast(stage_depths=(1, 1, 1, 1), **args)
