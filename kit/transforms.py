"""Clip transforms: gamma correction, train and eval presets, test-time augmentation (TTA).

Presets take decoded frames, uint8 ``(T, H, W, 3)`` (numpy or torch), and return a normalised
float32 clip ``(C, T, H, W)``. Resizing, cropping and RandAugment run on uint8 tensors for the
whole clip at once: RandAugment samples timm's ops once per clip and applies them to every frame
(:mod:`kit.randaugment`), so that a clip stays one consistent clip.

Example::

    train = TrainPreset(crop=224, randaugment="rand-m7-n4-mstd0.5", random_erasing=0.25)
    clip = train(frames)                       # (3, T, 224, 224) float32
    test = EvalPreset(crop=224, crops=3, gamma=0.25)
    clips = test(frames)                       # (3 crops, 3, T, 224, 224)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from functools import lru_cache

import numpy as np
import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

log = logging.getLogger(__name__)

MEAN = (0.45, 0.45, 0.45)
STD = (0.225, 0.225, 0.225)


# ---------------------------------------------------------------- gamma


@lru_cache(maxsize=32)
def gamma_lut(gamma: float) -> np.ndarray:
    """256-entry uint8 lookup table of ``255 * (x / 255) ** gamma`` (gamma < 1 brightens)."""
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    x = np.arange(256, dtype=np.float64) / 255.0
    lut = np.round(255.0 * x**gamma).clip(0, 255).astype(np.uint8)
    lut.setflags(write=False)
    return lut


@lru_cache(maxsize=64)
def _lut16(lut: bytes) -> np.ndarray:
    # the 8-bit table applied to both bytes of every 16-bit word: half the lookups, 4x faster
    pairs = np.arange(65536, dtype=np.uint16).view(np.uint8)
    lut16 = np.take(np.frombuffer(lut, dtype=np.uint8), pairs).view(np.uint16)
    lut16.setflags(write=False)
    return lut16


def take_lut(frames: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """uint8 ``frames`` of any shape through a 256-entry uint8 table ``lut`` (a new array)."""
    frames = np.ascontiguousarray(frames)
    if frames.nbytes % 2:
        return np.take(lut, frames)
    words = frames.reshape(-1).view(np.uint16)
    table = _lut16(np.asarray(lut, dtype=np.uint8).tobytes())
    out = np.empty_like(words)
    # in chunks: np.take converts its indices to int64, a clip-sized temporary otherwise
    for start in range(0, len(words), _LUT_CHUNK):
        np.take(table, words[start : start + _LUT_CHUNK], out=out[start : start + _LUT_CHUNK])
    return out.view(np.uint8).reshape(frames.shape)


_LUT_CHUNK = 1 << 16


def _take_gamma(frames: np.ndarray, gamma: float) -> np.ndarray:
    return take_lut(frames, gamma_lut(gamma))


def apply_gamma(frames, gamma: float | None):
    """Gamma-correct uint8 frames of any shape through :func:`gamma_lut`; ``gamma=None`` is a no-op.

    Returns the same kind (numpy array or torch tensor) as given.
    """
    if gamma is None:
        return frames
    if isinstance(frames, torch.Tensor):
        if frames.dtype != torch.uint8:
            raise TypeError(f"gamma works on uint8 frames, got {frames.dtype}")
        return torch.from_numpy(_take_gamma(frames.cpu().numpy(), float(gamma)))
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise TypeError(f"gamma works on uint8 frames, got {frames.dtype}")
    return _take_gamma(frames, float(gamma))


# ---------------------------------------------------------------- helpers


def _to_tchw(frames) -> torch.Tensor:
    # decoded frames (T, H, W, 3) uint8 -> (T, 3, H, W) view; torchvision ops want channels before H, W
    t = (
        frames
        if isinstance(frames, torch.Tensor)
        else torch.from_numpy(np.ascontiguousarray(frames))
    )
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {t.dtype} {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2)


def normalize(
    clip_tchw: torch.Tensor,
    *,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 ``(T, C, H, W)`` -> float32 ``(C, T, H, W)`` with ``(x / 255 - mean) / std``.

    ``out``: a float32 ``(C, T, H, W)`` tensor to write into (e.g. a slot of a batch).
    """
    t, c, h, w = clip_tchw.shape
    if out is None:
        out = torch.empty((c, t, h, w), dtype=torch.float32)
    # one converting copy straight into the (C, T, H, W) layout, then two in-place passes
    out.copy_(clip_tchw.permute(1, 0, 2, 3))
    if len(set(std)) == 1 and len(set(mean)) == 1:
        return out.mul_(1.0 / (255.0 * std[0])).sub_(mean[0] / std[0])
    scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(-1, 1, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std, strict=True)]).view(-1, 1, 1, 1)
    return out.mul_(scale).sub_(shift)


def _resize_short(clip_tchw: torch.Tensor, short_side: int) -> torch.Tensor:
    h, w = clip_tchw.shape[-2:]
    if min(h, w) == short_side:
        return clip_tchw
    return TF.resize(clip_tchw, [short_side], antialias=True)


# ---------------------------------------------------------------- presets


class TrainPreset:
    """Training augmentation of one clip: uint8 ``(T, H, W, 3)`` -> float32 ``(C, T, crop, crop)``.

    Gamma (optional), RandomResizedCrop (area ``scale``), horizontal flip with probability
    ``hflip``, timm RandAugment (``randaugment`` spec like ``"rand-m7-n4-mstd0.5"``, same ops for
    every frame, :class:`kit.randaugment.ClipRandAugment`), normalisation, timm RandomErasing with probability ``random_erasing`` (same
    region in every frame). Crop and flip draw from torch's RNG, RandAugment from Python's ``random``
    and numpy's, erasing from Python's ``random``: DataLoader workers seed all three.
    """

    def __init__(
        self,
        *,
        crop: int,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        randaugment: str | None = None,
        random_erasing: float = 0.0,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
        gamma: float | None = None,
    ):
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {tuple(scale)}")
        self.crop = int(crop)
        self.scale = tuple(float(s) for s in scale)
        self.ratio = tuple(float(r) for r in ratio)
        self.hflip = float(hflip)
        self.mean, self.std = tuple(mean), tuple(std)
        self.gamma = gamma
        self.randaugment = randaugment
        self._ra = None
        if randaugment:
            from kit.randaugment import ClipRandAugment

            hparams = {
                "translate_const": int(self.crop * 0.45),
                "img_mean": tuple(int(round(255 * m)) for m in self.mean),
            }
            self._ra = ClipRandAugment(randaugment, hparams)
        self.random_erasing = float(random_erasing)
        self._erase = None
        if self.random_erasing > 0:
            from timm.data.random_erasing import RandomErasing

            self._erase = RandomErasing(probability=self.random_erasing, mode="pixel", device="cpu")

    def __repr__(self) -> str:
        return (
            f"TrainPreset(crop={self.crop}, scale={self.scale}, hflip={self.hflip}, "
            f"randaugment={self.randaugment!r}, random_erasing={self.random_erasing}, gamma={self.gamma})"
        )

    def output_shape(self, frames: int) -> tuple[int, ...]:
        """Shape of the clip returned for ``frames`` input frames: ``(C, T, crop, crop)``."""
        return (len(self.mean), frames, self.crop, self.crop)

    def __call__(self, frames, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """``frames``: uint8 ``(T, H, W, 3)``. Returns float32 ``(C, T, crop, crop)``, written into
        ``out`` when given (a tensor of :meth:`output_shape`)."""
        clip = _to_tchw(apply_gamma(frames, self.gamma))
        top, left, h, w = RandomResizedCrop.get_params(clip, list(self.scale), list(self.ratio))
        clip = TF.resized_crop(clip, top, left, h, w, [self.crop, self.crop], antialias=True)
        if self.hflip > 0 and torch.rand(()) < self.hflip:
            clip = clip.flip(-1)
        if self._ra is not None:
            clip = self._ra(clip)
        x = normalize(clip, mean=self.mean, std=self.std, out=out)
        if self._erase is not None:
            c, t, hh, ww = x.shape
            # frames of one clip share the erased rectangle: erase the (C*T, H, W) stack at once,
            # in place (timm's RandomErasing writes into its input)
            self._erase(x.view(c * t, hh, ww))
        return x


class EvalPreset:
    """Evaluation transform: uint8 ``(T, H, W, 3)`` -> float32 ``(C, T, crop, crop)`` for one crop,
    or ``(crops, C, T, crop, crop)`` for ``crops=3``.

    Gamma (optional), resize of the short side to ``short_side`` (default ``crop * 8 / 7``
    rounded), then the centre crop, or 3 crops along the long side (left/centre/right for
    landscape frames, top/centre/bottom for portrait ones).
    """

    def __init__(
        self,
        *,
        crop: int,
        short_side: int | None = None,
        crops: int = 1,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
        gamma: float | None = None,
    ):
        if crops not in (1, 3):
            raise ValueError(f"crops must be 1 (centre) or 3 (left/centre/right), got {crops}")
        self.crop = int(crop)
        self.short_side = int(short_side) if short_side is not None else int(round(crop * 8 / 7))
        if self.short_side < self.crop:
            raise ValueError(f"short_side {self.short_side} is smaller than crop {self.crop}")
        self.crops = crops
        self.mean, self.std = tuple(mean), tuple(std)
        self.gamma = gamma

    def __repr__(self) -> str:
        return (
            f"EvalPreset(crop={self.crop}, short_side={self.short_side}, crops={self.crops}, "
            f"gamma={self.gamma})"
        )

    def crop_boxes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(top, left) of each crop in a frame of the resized size, in output order."""
        c = self.crop
        ct, cl = (height - c) // 2, (width - c) // 2
        if self.crops == 1:
            return [(ct, cl)]
        if width >= height:
            return [(ct, 0), (ct, cl), (ct, width - c)]
        return [(0, cl), (ct, cl), (height - c, cl)]

    def output_shape(self, frames: int) -> tuple[int, ...]:
        """Shape of the clip returned for ``frames`` input frames: ``(C, T, crop, crop)`` or
        ``(crops, C, T, crop, crop)``."""
        one = (len(self.mean), frames, self.crop, self.crop)
        return one if self.crops == 1 else (self.crops, *one)

    def __call__(self, frames, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """``frames``: uint8 ``(T, H, W, 3)``. Returns ``(C, T, crop, crop)`` or ``(crops, C, T, crop, crop)``,
        written into ``out`` when given (a float32 tensor of :meth:`output_shape`)."""
        clip = _to_tchw(frames)
        h, w = clip.shape[-2:]
        c = self.crop
        if min(h, w) == self.short_side and self.crops == 1:
            # no resize: gamma on the crop only (it is per pixel)
            top, left = self.crop_boxes(h, w)[0]
            clip = _to_tchw(apply_gamma(frames[:, top : top + c, left : left + c], self.gamma))
            return normalize(clip, mean=self.mean, std=self.std, out=out)
        clip = _resize_short(_to_tchw(apply_gamma(frames, self.gamma)), self.short_side)
        h, w = clip.shape[-2:]
        if out is None:
            out = torch.empty(self.output_shape(clip.shape[0]), dtype=torch.float32)
        slots = out.unsqueeze(0) if self.crops == 1 else out
        for slot, (top, left) in zip(slots, self.crop_boxes(h, w), strict=True):
            normalize(clip[..., top : top + c, left : left + c], mean=self.mean, std=self.std, out=slot)
        return out


def tta_combinations(*, views: int, crops: int) -> Iterator[tuple[int, int, int]]:
    """Every test-time augmentation ``(index, view, crop)``, view-major: ``index = view * crops + crop``.

    This is the order of the ``S = views * crops`` samples of an evaluation item ``(S, C, T, H, W)``.
    """
    if views < 1 or crops < 1:
        raise ValueError(f"views and crops must be >= 1, got views={views} crops={crops}")
    for view in range(views):
        for crop in range(crops):
            yield view * crops + crop, view, crop
