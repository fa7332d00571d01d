"""Clip transforms: gamma correction, train and eval presets, test-time augmentation (TTA).

Presets work in two parts, as timm's loader with its prefetcher does:

- ``preset(frames)`` runs in the data loader on one clip: decoded frames, uint8 ``(T, H, W, 3)``
  (numpy or torch), in; a uint8 clip ``(C, T, H, W)`` out, stored channels last (``(T, H, W, C)``
  in memory, as decoded; see :func:`empty_clip`). Gamma, resizing, cropping, flipping and
  RandAugment all run on uint8 for the whole clip at once: RandAugment samples timm's ops once per
  clip and applies them to every frame (:mod:`kit.randaugment`), so that a clip stays one
  consistent clip.
- ``preset.finish(videos)`` runs on a batch where the model runs (:class:`kit.data.DeviceLoader`):
  float32 conversion, mean/std normalisation and, in training, random erasing. A uint8 clip is a
  quarter of a float32 one through the workers' shared memory and the copy to the GPU, and the
  per-pixel float work is the GPU's.

Example::

    train = TrainPreset(crop=224, randaugment="rand-m7-n4-mstd0.5", random_erasing=0.25)
    clip = train(frames)                       # (3, T, 224, 224) uint8
    x = train.finish(clip[None])               # (1, 3, T, 224, 224) float32, normalised, erased
    test = EvalPreset(crop=224, crops=3, gamma=0.25)
    clips = test(frames)                       # (3 crops, 3, T, 224, 224) uint8
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from functools import lru_cache

import cv2
import numpy as np
import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

log = logging.getLogger(__name__)

# OpenCV (lookup tables here, RandAugment's warps and filters) runs one thread, as torch does in a
# loader worker: the workers are the parallelism. Set here, in the process that forks them: a
# worker that changed OpenCV's thread count after the fork would hang on the parent's thread pool.
cv2.setNumThreads(1)

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


def take_lut(frames: np.ndarray, lut: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 ``frames`` of any shape through a 256-entry uint8 table ``lut``, into ``out`` (a
    C-contiguous uint8 array of the same shape) or a new array.

    ``frames`` may be a strided view, such as a crop of decoded frames: it is then looked up frame
    by frame, without a contiguous copy first. OpenCV's ``LUT``: 1.2 ms for 32 frames of
    224 x 224 x 3 on one core, against 1.8 ms for numpy's ``take`` over 16-bit pairs of pixels and
    7.8 ms for a plain ``take``.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise TypeError(f"lookup tables (gamma, RandAugment) work on uint8 frames, got {frames.dtype}")
    if out is None:
        out = np.empty(frames.shape, dtype=np.uint8)
    elif out.shape != frames.shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(
            f"out must be a C-contiguous uint8 array of shape {frames.shape}, got {out.dtype} {out.shape}"
        )
    if frames.size == 0:
        return out
    table = np.ascontiguousarray(lut, dtype=np.uint8).reshape(256)
    item = frames.itemsize
    if (
        not frames.flags.c_contiguous and frames.ndim >= 3 and frames.shape[-1] <= 4
        and frames.strides[-1] == item and frames.strides[-2] == item * frames.shape[-1]
    ):
        # (H, W, C) images with strided rows (a crop), as OpenCV takes them: no contiguous copy
        for src, dst in zip(frames.reshape(-1, *frames.shape[-3:]), out.reshape(-1, *out.shape[-3:]), strict=True):
            cv2.LUT(src, table, dst=dst)
        return out
    # one single-channel row per leading index: the memory is continuous, OpenCV runs it as one line
    rows = frames.shape[0] if frames.ndim > 1 else 1
    cv2.LUT(np.ascontiguousarray(frames).reshape(rows, -1), table, dst=out.reshape(rows, -1))
    return out


def apply_gamma(frames, gamma: float | None):
    """Gamma-correct uint8 frames of any shape through :func:`gamma_lut`; ``gamma=None`` is a no-op.

    Returns the same kind (numpy array or torch tensor) as given.
    """
    if gamma is None:
        return frames
    if isinstance(frames, torch.Tensor):
        return torch.from_numpy(take_lut(frames.cpu().numpy(), gamma_lut(float(gamma))))
    return take_lut(np.asarray(frames), gamma_lut(float(gamma)))


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


def cthw_view(buffer: torch.Tensor) -> torch.Tensor:
    """The ``(..., C, T, H, W)`` view of a ``(..., T, H, W, C)`` tensor (no copy)."""
    n = buffer.ndim - 4
    return buffer.permute(*range(n), n + 3, n, n + 1, n + 2)


def empty_clip(shape: Sequence[int]) -> torch.Tensor:
    """An uninitialised uint8 clip (or stack of clips) of shape ``(..., C, T, H, W)``, stored channels
    last (``(..., T, H, W, C)`` in memory): a crop of decoded frames copies in row by row."""
    *lead, c, t, h, w = shape
    return cthw_view(torch.empty((*lead, t, h, w, c), dtype=torch.uint8))


def normalize(video: torch.Tensor, *, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> torch.Tensor:
    """uint8 ``(..., C, T, H, W)`` (any memory layout, any device) -> contiguous float32 of the same
    shape, ``(x / 255 - mean) / std`` per channel."""
    if video.dtype != torch.uint8 or video.ndim < 4:
        raise ValueError(f"normalize takes uint8 (..., C, T, H, W), got {video.dtype} {tuple(video.shape)}")
    # one converting copy into the contiguous layout, then two in-place passes
    out = torch.empty(video.shape, dtype=torch.float32, device=video.device).copy_(video)
    if len(set(std)) == 1 and len(set(mean)) == 1:
        return out.mul_(1.0 / (255.0 * std[0])).sub_(mean[0] / std[0])
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=out.device).view(-1, 1, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std, strict=True)], device=out.device).view(-1, 1, 1, 1)
    return out.mul_(scale).sub_(shift)


def _into(clip_tchw: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    # a uint8 (T, C, H, W) clip -> its (C, T, H, W) copy in ``out`` (a fresh channels-last clip when None)
    t, c, h, w = clip_tchw.shape
    if out is None:
        out = empty_clip((c, t, h, w))
    else:
        _check_out(out, (c, t, h, w))
    dst = _frames_view(out)
    if dst is not None and clip_tchw.dtype == out.dtype and clip_tchw.device.type == "cpu":
        # numpy copies on the calling thread: torch's copy_ of a clip wakes its thread pool, whose
        # threads then spin beside the decoder (0.7 ms a clip at demo size, 2 threads, 0 workers)
        np.copyto(dst, clip_tchw.permute(0, 2, 3, 1).numpy())
        return out
    return out.copy_(clip_tchw.permute(1, 0, 2, 3))


def _frames_view(out: torch.Tensor) -> np.ndarray | None:
    # the (T, H, W, C) numpy view of a CPU clip (C, T, H, W) stored as empty_clip makes it; else None
    thwc = out.permute(1, 2, 3, 0)
    return thwc.numpy() if thwc.is_contiguous() and out.device.type == "cpu" else None


def _check_out(out: torch.Tensor, shape: tuple[int, ...]) -> None:
    if out.dtype != torch.uint8 or tuple(out.shape) != tuple(shape):
        raise ValueError(f"out must be uint8 {tuple(shape)}, got {out.dtype} {tuple(out.shape)}")


def _resize_short(clip_tchw: torch.Tensor, short_side: int) -> torch.Tensor:
    h, w = clip_tchw.shape[-2:]
    if min(h, w) == short_side:
        return clip_tchw
    return TF.resize(clip_tchw, [short_side], antialias=True)


# ---------------------------------------------------------------- presets


class TrainPreset:
    """Training augmentation: uint8 ``(T, H, W, 3)`` -> uint8 ``(C, T, crop, crop)`` per clip in the
    loader, then :meth:`finish` on the batch.

    Per clip: gamma (optional), RandomResizedCrop (area ``scale``), horizontal flip with probability
    ``hflip``, timm RandAugment (``randaugment`` spec like ``"rand-m7-n4-mstd0.5"``, same ops for
    every frame, :class:`kit.randaugment.ClipRandAugment`). Per batch (:meth:`finish`):
    normalisation, then timm RandomErasing with probability ``random_erasing`` per clip (the same
    region in every frame). Crop and flip draw from torch's RNG, RandAugment from Python's ``random``
    and numpy's (DataLoader workers seed all three), erasing from Python's ``random`` and torch's
    where the batch is finished. ``chunk_frames`` (``data.chunk_frames``): how many frames at a time go
    through crop, flip and RandAugment (None: the whole clip), with the same result (:meth:`__call__`).
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
        chunk_frames: int | None = None,
    ):
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {tuple(scale)}")
        if chunk_frames is not None and chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1 or None, got {chunk_frames}")
        self.chunk_frames = chunk_frames
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
        self._erase = {}  # timm RandomErasing per device

    def __repr__(self) -> str:
        chunk = f", chunk_frames={self.chunk_frames}" if self.chunk_frames else ""
        return (
            f"TrainPreset(crop={self.crop}, scale={self.scale}, hflip={self.hflip}, "
            f"randaugment={self.randaugment!r}, random_erasing={self.random_erasing}, gamma={self.gamma}{chunk})"
        )

    def output_shape(self, frames: int) -> tuple[int, ...]:
        """Shape of the clip returned for ``frames`` input frames: ``(C, T, crop, crop)``."""
        return (len(self.mean), frames, self.crop, self.crop)

    def __call__(self, frames, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """``frames``: uint8 ``(T, H, W, 3)``. Returns uint8 ``(C, T, crop, crop)``, written into
        ``out`` when given (a uint8 tensor of :meth:`output_shape`, best made by :func:`empty_clip`).

        The crop, the flip and the RandAugment ops are drawn once per clip. With ``chunk_frames``, the
        frames go through them that many at a time, each part into its frames of ``out``: the result
        is the same (every step works frame by frame), and each step's buffers are a part's, not the
        clip's (a clip of 32 x 224 is 4.8 MB, a part of 8 frames 1.2 MB)."""
        clip = _to_tchw(apply_gamma(frames, self.gamma))
        t = clip.shape[0]
        if out is not None:
            _check_out(out, self.output_shape(t))
        box = RandomResizedCrop.get_params(clip, list(self.scale), list(self.ratio))
        flip = self.hflip > 0 and bool(torch.rand(()) < self.hflip)
        plan = self._ra.sample() if self._ra is not None else []
        step = self.chunk_frames or t
        if step >= t:
            return self._augment(clip, box, flip, plan, out)
        if out is None:
            out = empty_clip(self.output_shape(t))
        for t0 in range(0, t, step):
            self._augment(clip[t0 : t0 + step], box, flip, plan, out[:, t0 : t0 + step])
        return out

    def _augment(self, clip: torch.Tensor, box, flip: bool, plan: list, out: torch.Tensor | None) -> torch.Tensor:
        # frames (T, C, H, W) through the drawn crop, flip and RandAugment ops, into ``out`` (C, T, ...)
        top, left, h, w = box
        clip = TF.resized_crop(clip, top, left, h, w, [self.crop, self.crop], antialias=True)
        if flip:
            clip = clip.flip(-1)
        if plan:
            # the last op writes into the clip's slot, when it lies as an empty_clip does
            slot = out.transpose(0, 1) if out is not None and _frames_view(out) is not None else None
            clip = self._ra(clip, out=slot, plan=plan)
            if clip is slot:
                return out
        return _into(clip, out)

    def finish(self, videos: torch.Tensor) -> torch.Tensor:
        """uint8 ``(..., C, T, H, W)`` clips (on any device) -> normalised float32, randomly erased."""
        x = normalize(videos, mean=self.mean, std=self.std)
        if self.random_erasing > 0:
            from timm.data.random_erasing import RandomErasing

            device = str(x.device)
            if device not in self._erase:
                self._erase[device] = RandomErasing(probability=self.random_erasing, mode="pixel", device=device)
            c, t, h, w = x.shape[-4:]
            # frames of one clip share the erased rectangle: each clip is erased as one (C*T, H, W)
            # image, in place (timm's RandomErasing writes into its input)
            self._erase[device](x.view(-1, c * t, h, w))
        return x


class EvalPreset:
    """Evaluation transform: uint8 ``(T, H, W, 3)`` -> uint8 ``(C, T, crop, crop)`` for one crop, or
    ``(crops, C, T, crop, crop)`` for ``crops=3``; :meth:`finish` normalises a batch of them.

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
        """``frames``: uint8 ``(T, H, W, 3)``. Returns uint8 ``(C, T, crop, crop)`` or
        ``(crops, C, T, crop, crop)``, written into ``out`` when given (a uint8 tensor of
        :meth:`output_shape`, best made by :func:`empty_clip`)."""
        clip = _to_tchw(frames)
        if out is not None:
            _check_out(out, self.output_shape(clip.shape[0]))
        h, w = clip.shape[-2:]
        c = self.crop
        if min(h, w) == self.short_side and self.crops == 1:
            # no resize: gamma on the crop only (it is per pixel), looked up straight into the clip
            top, left = self.crop_boxes(h, w)[0]
            crop = clip.permute(0, 2, 3, 1)[:, top : top + c, left : left + c]
            if out is None:
                out = empty_clip(self.output_shape(clip.shape[0]))
            dst = _frames_view(out)
            if self.gamma is None or dst is None:
                return _into(_to_tchw(apply_gamma(crop, self.gamma)), out)
            take_lut(crop.numpy(), gamma_lut(float(self.gamma)), out=dst)
            return out
        clip = _resize_short(_to_tchw(apply_gamma(frames, self.gamma)), self.short_side)
        h, w = clip.shape[-2:]
        if out is None:
            out = empty_clip(self.output_shape(clip.shape[0]))
        slots = out.unsqueeze(0) if self.crops == 1 else out
        for slot, (top, left) in zip(slots, self.crop_boxes(h, w), strict=True):
            _into(clip[..., top : top + c, left : left + c], slot)
        return out

    def finish(self, videos: torch.Tensor) -> torch.Tensor:
        """uint8 ``(..., C, T, H, W)`` clips (on any device) -> normalised float32."""
        return normalize(videos, mean=self.mean, std=self.std)


def tta_combinations(*, views: int, crops: int) -> Iterator[tuple[int, int, int]]:
    """Every test-time augmentation ``(index, view, crop)``, view-major: ``index = view * crops + crop``.

    This is the order of the ``S = views * crops`` samples of an evaluation item ``(S, C, T, H, W)``.
    """
    if views < 1 or crops < 1:
        raise ValueError(f"views and crops must be >= 1, got views={views} crops={crops}")
    for view in range(views):
        for crop in range(crops):
            yield view * crops + crop, view, crop
