"""RandAugment on whole clips: timm's policy, sampled once per clip and applied to every frame at once.

timm's :func:`~timm.data.auto_augment.rand_augment_transform` parses the spec
(``"rand-m7-n4-mstd0.5"``: magnitude 7, 4 layers, magnitude noise 0.5) and, per call, draws
which ops run, whether each fires (probability 0.5), its noisy magnitude and the op's arguments
(level functions, random sign). :class:`ClipRandAugment` keeps all of that timm's: each timm op's
PIL function is swapped for a recorder, so one call of timm's own ``RandAugment`` returns the
sampled plan. The plan is then applied to the uint8 clip ``(T, C, H, W)`` as a whole:

- pointwise ops (Invert, Posterize, Solarize, SolarizeAdd, Brightness and their variants): one
  256-entry table per channel, made by running timm's PIL function on a ramp image, so the
  result is bit-exact with timm frame by frame;
- geometric ops (Rotate, ShearX/Y): the op's PIL affine map (same coefficients, same fill colour),
  its input points computed once per clip, each frame resampled bilinearly with OpenCV's ``remap``,
  within one level of PIL's bilinear result; timm picks bilinear or bicubic at random, this always
  resamples bilinearly (6-7 ms for 32 x 224 x 224 on one core, against 9-10 ms with ``warpAffine``,
  15-20 ms for one float ``grid_sample`` over the clip and 27 ms for PIL frame by frame);
- translations (TranslateX/Y and the Rel variants): every output pixel blends the same two
  neighbours, so one OpenCV ``addWeighted`` over the whole clip (1-3 ms), within one level of PIL's
  bilinear result and equal to it for most pixels;
- Sharpness: PIL's 3 x 3 SMOOTH filter (bit-exact) and blend, rebuilt from OpenCV's ``filter2D``
  and ``addWeighted``, within one level of PIL's result (5 ms against PIL's 26 ms);
- ops on per-frame statistics: AutoContrast and Equalize (tables from each frame's histograms),
  Contrast (a table from each frame's mean grey level): PIL's arithmetic rebuilt in numpy, so
  bit-exact, applied with OpenCV's ``LUT``; Color: PIL's grey frame blended with OpenCV's
  ``addWeighted``, within one level as Sharpness (4-6 ms each, against 8-10 ms for PIL frame by frame);
- any other op timm may add: timm's PIL function frame by frame, with the same arguments.

Every op takes ``out=``: a uint8 ``(T, C, H, W)`` tensor stored ``(T, H, W, C)`` in memory
(a :func:`kit.transforms.empty_clip` slot of a batch, permuted) that receives its result, so the
last op of a clip writes straight into the clip's slot of the batch.

Example::

    ra = ClipRandAugment("rand-m7-n4-mstd0.5", {"translate_const": 100, "img_mean": (115, 115, 115)})
    clip = ra(clip)                           # uint8 (T, C, H, W) -> uint8 (T, C, H, W)
    ra(clip, out=slot)                        # the result in ``slot`` when an op fired
"""

from __future__ import annotations

import copy
import math
import random
from functools import lru_cache, partial

import cv2
import numpy as np
import torch

from kit.transforms import take_lut  # also sets OpenCV's thread count

POINTWISE_OPS = frozenset({
    "Invert", "Posterize", "PosterizeIncreasing", "PosterizeOriginal", "Solarize",
    "SolarizeIncreasing", "SolarizeAdd", "Brightness", "BrightnessIncreasing",
})
GEOMETRIC_OPS = frozenset({
    "Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel",
})
TRANSLATE_OPS = frozenset({"TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel"})
SHARPNESS_OPS = frozenset({"Sharpness", "SharpnessIncreasing"})
STATISTICS_OPS = frozenset({"AutoContrast", "Equalize", "Contrast", "ContrastIncreasing", "Color", "ColorIncreasing"})

# PIL's Image.blend truncates its float result, OpenCV's addWeighted rounds: added to addWeighted's sum,
# this shift by just under 1/2 turns the rounding into truncation (where the two sums agree to 1e-3)
TRUNCATE = -0.5 + 1e-3


def _record(name: str, plan: list, *args, **kwargs) -> list:
    # stands in for a timm op's PIL function: the "image" is the plan, each op that fires appends itself
    resample = kwargs.get("resample")
    if name in GEOMETRIC_OPS and isinstance(resample, (list, tuple)):
        resample = random.choice(resample)  # what timm's _interpolation draws for these ops
    return plan + [(name, args, {**kwargs, "resample": resample})]


class ClipRandAugment:
    """timm RandAugment (``spec`` like ``"rand-m7-n4-mstd0.5"``, ``hparams`` as timm's) for a uint8
    clip ``(T, C, H, W)``: the same sampled ops and arguments for every frame. Draws from Python's
    ``random`` and numpy's global RNG, as timm does."""

    def __init__(self, spec: str, hparams: dict | None = None):
        from timm.data.auto_augment import rand_augment_transform

        self.spec = spec
        self.timm = rand_augment_transform(spec, dict(hparams or {}))
        self._sampler = copy.copy(self.timm)
        self._sampler.ops = []
        for op in self.timm.ops:
            rec = copy.copy(op)
            rec.aug_fn = partial(_record, op.name)
            self._sampler.ops.append(rec)
        self._pil = {op.name: op.aug_fn for op in self.timm.ops}

    def __repr__(self) -> str:
        return f"ClipRandAugment({self.spec!r})"

    def sample(self) -> list[tuple[str, tuple, dict]]:
        """The ops that fire on the next clip: ``(name, args, kwargs)`` as timm would call them."""
        return self._sampler([])

    def __call__(self, clip: torch.Tensor, *, out: torch.Tensor | None = None, plan: list | None = None) -> torch.Tensor:
        """uint8 ``(T, C, H, W)`` -> uint8 ``(T, C, H, W)``. With ``out`` (see the module's docstring),
        the last op that fires writes into it and ``out`` is returned; when none fires, ``clip`` is.
        ``plan``: the ops to run, as :meth:`sample` gives them (default: a new sample). Every op works
        frame by frame, so one plan run on the frames of a clip in parts gives the clip's result."""
        if clip.dtype != torch.uint8 or clip.ndim != 4:
            raise ValueError(f"clip must be uint8 (T, C, H, W), got {clip.dtype} {tuple(clip.shape)}")
        if out is not None:
            _out_frames(out, clip.shape)  # checked before any work
        plan = self.sample() if plan is None else plan
        for i, (name, args, kwargs) in enumerate(plan):
            clip = self.apply(clip, name, args, kwargs, out=out if i == len(plan) - 1 else None)
        return clip

    def apply(
        self, clip: torch.Tensor, name: str, args: tuple, kwargs: dict, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One sampled op on the whole clip (uint8 ``(T, C, H, W)``), into ``out`` when given."""
        fn = self._pil[name]
        if name in POINTWISE_OPS:
            return apply_lut(clip, pointwise_lut(fn, args, clip.shape[1]), out=out)
        if name in GEOMETRIC_OPS:
            h, w = clip.shape[-2:]
            coefficients = affine_coefficients(name, args, height=h, width=w)
            if name in TRANSLATE_OPS:
                vertical = name.startswith("TranslateY")
                offset = coefficients[5 if vertical else 2]
                return translate(clip, offset, vertical=vertical, fill=kwargs["fillcolor"], out=out)
            return pil_affine(clip, coefficients, kwargs["fillcolor"], out=out)
        if name in SHARPNESS_OPS:
            return sharpness(clip, *args, out=out)
        if name in STATISTICS_OPS:
            return _STATISTICS[name](clip, *args, out=out)
        fn = partial(fn, **{k: v for k, v in kwargs.items() if k != "resample"})
        return _per_frame_pil(clip, fn, args, out=out)


def _out_frames(out: torch.Tensor, shape) -> np.ndarray:
    """The ``(T, H, W, C)`` numpy view of ``out``, a uint8 ``(T, C, H, W)`` tensor of ``shape`` stored
    ``(T, H, W, C)``."""
    if out.dtype != torch.uint8 or tuple(out.shape) != tuple(shape) or out.device.type != "cpu":
        got = f"{out.dtype} {tuple(out.shape)} on {out.device}"
        raise ValueError(f"out must be a uint8 CPU tensor {tuple(shape)}, got {got}")
    frames = out.permute(0, 2, 3, 1)
    if not frames.is_contiguous():
        raise ValueError("out must be stored (T, H, W, C) in memory, as kit.transforms.empty_clip makes a clip")
    return frames.numpy()


def _target(frames: np.ndarray, out: torch.Tensor | None) -> np.ndarray:
    # where an op writes its (T, H, W, C) result: ``out``'s memory, or a new array like ``frames``
    if out is None:
        return np.empty_like(frames)
    t, h, w, ch = frames.shape
    return _out_frames(out, (t, ch, h, w))


def _result(dst: np.ndarray, out: torch.Tensor | None) -> torch.Tensor:
    # an op's (T, C, H, W) result: ``out`` itself when the op wrote there
    return out if out is not None else torch.from_numpy(dst).permute(0, 3, 1, 2)


# ---------------------------------------------------------------- pointwise ops


def pointwise_lut(fn, args: tuple, channels: int) -> np.ndarray:
    """``(channels, 256)`` uint8 table of a pointwise PIL op ``fn(img, *args)``, read off a ramp image."""
    from PIL import Image

    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # (1, 256, 3) RGB
    out = np.asarray(fn(Image.fromarray(ramp), *args))
    if out.shape != ramp.shape:
        raise ValueError(f"{fn.__name__} is not a pointwise RGB op (gave shape {out.shape})")
    return np.ascontiguousarray(out[0].T[:channels])


def apply_lut(clip: torch.Tensor, lut: np.ndarray, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 ``(T, C, H, W)`` through a per-channel ``(C, 256)`` uint8 table; keeps the memory layout
    (or writes into ``out``)."""
    if all(np.array_equal(lut[0], lut[c]) for c in range(1, len(lut))):
        # one table: the op is pointwise, run it over the memory as it lies (channels last after a resize)
        if out is not None:
            take_lut(clip.permute(0, 2, 3, 1).numpy(), lut[0], out=_out_frames(out, clip.shape))
            return out
        last = not clip.is_contiguous() and clip.is_contiguous(memory_format=torch.channels_last)
        frames = (clip.permute(0, 2, 3, 1) if last else clip.contiguous()).numpy()
        result = torch.from_numpy(take_lut(frames, lut[0]))
        return result.permute(0, 3, 1, 2) if last else result
    t, ch, h, w = clip.shape
    frames = _hwc_frames(clip)  # OpenCV takes a table per channel for channels-last pixels
    table = np.ascontiguousarray(np.asarray(lut, dtype=np.uint8).T.reshape(1, 256, ch))
    dst = _target(frames, out)
    cv2.LUT(frames.reshape(t * h, w, ch), table, dst=dst.reshape(t * h, w, ch))
    return _result(dst, out)


def _hwc_frames(clip: torch.Tensor) -> np.ndarray:
    # uint8 (T, C, H, W) -> contiguous numpy (T, H, W, C): a view of a channels-last clip
    return np.ascontiguousarray(clip.permute(0, 2, 3, 1).numpy())


# ---------------------------------------------------------------- geometric ops


def affine_coefficients(name: str, args: tuple, *, height: int, width: int) -> tuple[float, ...]:
    """PIL ``Image.AFFINE`` data ``(a, b, c, d, e, f)`` of timm's geometric op ``name``: the output
    pixel at ``(x, y)`` shows the input at ``(a x + b y + c, d x + e y + f)``."""
    (v,) = args
    if name == "ShearX":
        return (1.0, v, 0.0, 0.0, 1.0, 0.0)
    if name == "ShearY":
        return (1.0, 0.0, 0.0, v, 1.0, 0.0)
    if name in ("TranslateX", "TranslateXRel"):
        return (1.0, 0.0, v * width if name.endswith("Rel") else v, 0.0, 1.0, 0.0)
    if name in ("TranslateY", "TranslateYRel"):
        return (1.0, 0.0, 0.0, 0.0, 1.0, v * height if name.endswith("Rel") else v)
    if name == "Rotate":
        # PIL's Image.rotate (no expand): about the centre, counter-clockwise for v > 0
        a = -math.radians(v)
        cos, sin = round(math.cos(a), 15), round(math.sin(a), 15)
        cx, cy = width / 2.0, height / 2.0
        return (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)
    raise ValueError(f"{name} is not a geometric op")


def pil_affine(clip: torch.Tensor, coefficients, fill, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """PIL's bilinear ``Image.transform(size, AFFINE, coefficients, fillcolor=fill)`` on every frame of
    a uint8 clip ``(T, C, H, W)``: input points outside the frame take ``fill`` (one value per
    channel), inside it edge pixels repeat, as in PIL. Within one level of PIL's result.

    The input point of every output pixel is computed once for the clip (OpenCV's fixed-point
    ``convertMaps``) and each frame is resampled with ``remap``: 6-7 ms for 32 x 224 x 224 on one core,
    against 9-10 ms for ``warpAffine``, which recomputes the points for every frame."""
    t, ch, h, w = clip.shape
    points, weights, outside = _affine_maps(tuple(float(v) for v in coefficients), h, w)
    fill_frame = np.empty((h, w, ch), dtype=np.uint8)
    fill_frame[:] = [int(v) for v in fill][:ch]
    frames = _hwc_frames(clip)
    target = _target(frames, out)
    for src, dst in zip(frames, target, strict=True):
        cv2.remap(src, points, weights, cv2.INTER_LINEAR, dst=dst, borderMode=cv2.BORDER_REPLICATE)
        cv2.copyTo(fill_frame, outside, dst)  # in place: the fill where ``outside`` is set
    return _result(target, out)


@lru_cache(maxsize=4)
def _affine_maps(coefficients: tuple[float, ...], h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # remap's fixed-point input points and weights of every output pixel, and the mask of those that
    # fall outside the frame; kept for the next frames of the same clip (read only)
    a, b, c, d, e, f = coefficients
    # PIL maps the output's pixel centres (x + 0.5, y + 0.5) to continuous input coordinates and
    # samples between input pixel centres, which sit at index + 0.5
    y, x = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    xin, yin = a * x + b * y + c, d * x + e * y + f
    outside = (~((xin >= 0) & (xin < w) & (yin >= 0) & (yin < h))).astype(np.uint8)
    points, weights = cv2.convertMaps((xin - 0.5).astype(np.float32), (yin - 0.5).astype(np.float32), cv2.CV_16SC2)
    for m in (points, weights, outside):
        m.setflags(write=False)
    return points, weights, outside


def translate(
    clip: torch.Tensor, offset: float, *, vertical: bool, fill, out: torch.Tensor | None = None
) -> torch.Tensor:
    """PIL's bilinear ``Image.transform(size, AFFINE, (1, 0, offset, 0, 1, 0), fillcolor=fill)`` (with
    ``vertical``: ``(1, 0, 0, 0, 1, offset)``) on every frame of a uint8 clip ``(T, C, H, W)``. Every
    output pixel blends the same two neighbours along the shifted axis with the same weights, so the
    whole clip is one ``addWeighted`` and a few slice copies (1-3 ms for 32 x 224 x 224 on one core,
    against 6-10 ms for a warp); PIL's result truncated, within one level as in :func:`sharpness`."""
    frames = _hwc_frames(clip)
    t, h, w, ch = frames.shape
    # (rows, n, unit): the shifted axis in the middle, each of its positions a run of ``unit`` values
    shape = (t, h, w * ch) if vertical else (t * h, w, ch)
    src = frames.reshape(shape)
    target = _target(frames, out)
    dst = target.reshape(shape)
    n, unit = shape[1], shape[2]
    fill_run = np.tile(np.array([int(v) for v in fill][:ch], dtype=np.uint8), unit // ch)
    pos = np.arange(n) + 0.5 + offset  # PIL's input coordinate of each output pixel's centre
    inside = np.flatnonzero((pos >= 0) & (pos < n))
    if inside.size == 0:
        dst[:] = fill_run
        return _result(target, out)
    lo, hi = int(inside[0]), int(inside[-1]) + 1
    k = math.floor(offset)
    weight = offset - k  # of the input pixel at x + k + 1; 1 - weight for x + k
    start, stop = max(lo, -k), min(hi, n - 1 - k)  # both neighbours inside the frame
    dst[:, :lo] = fill_run
    dst[:, hi:] = fill_run
    dst[:, lo:start] = src[:, :1]  # PIL repeats the edge pixels
    dst[:, stop:hi] = src[:, n - 1:]
    if stop > start:
        flat_src, flat_dst = src.reshape(len(src), -1), dst.reshape(len(dst), -1)
        cv2.addWeighted(
            flat_src[:, (start + k) * unit:(stop + k) * unit], 1.0 - weight,
            flat_src[:, (start + k + 1) * unit:(stop + k + 1) * unit], weight,
            TRUNCATE, dst=flat_dst[:, start * unit:stop * unit],
        )
    return _result(target, out)


# ---------------------------------------------------------------- Sharpness

_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13  # PIL's ImageFilter.SMOOTH


def sharpness(clip: torch.Tensor, factor: float, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """PIL's ``ImageEnhance.Sharpness(frame).enhance(factor)`` on every frame of a uint8 clip
    ``(T, C, H, W)``: the SMOOTH-filtered frame (border pixels kept, as PIL's) blended towards the
    frame by ``factor`` and truncated to uint8, as PIL's ``Image.blend`` does. Within one level of
    PIL's result: PIL truncates its float32 ``smooth + factor * (frame - smooth)``, and where that
    lands a rounding error below a whole number the two differ by one."""
    frames = _hwc_frames(clip)
    target = _target(frames, out)
    for src, dst in zip(frames, target, strict=True):
        smooth = cv2.filter2D(src, -1, _SMOOTH, borderType=cv2.BORDER_REPLICATE)
        smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1] = src[0], src[-1], src[:, 0], src[:, -1]
        cv2.addWeighted(smooth, 1.0 - factor, src, factor, TRUNCATE, dst=dst)  # smooth + factor * (src - smooth)
    return _result(target, out)


# ---------------------------------------------------------------- ops on per-frame statistics


def _histograms(frames: np.ndarray) -> np.ndarray:
    """``(T, C, 256)`` int64 counts of every frame's channels (PIL's ``histogram()``, frame by frame)."""
    t, _, _, ch = frames.shape
    out = np.empty((t, ch, 256), dtype=np.int64)
    for i, frame in enumerate(frames):
        for c in range(ch):
            out[i, c] = cv2.calcHist([frame], [c], None, [256], [0, 256]).reshape(256)
    return out


def _frame_tables(frames: np.ndarray, tables: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
    """Every frame of uint8 ``(T, H, W, C)`` through its own tables: ``(T, C, 256)`` (one per channel)
    or ``(T, 256)`` (one for all channels). Returns the ``(T, C, H, W)`` clip (``out`` when given)."""
    target = _target(frames, out)
    ch = frames.shape[-1]
    tables = np.clip(tables, 0, 255).astype(np.uint8)
    if tables.ndim == 3:  # OpenCV takes a table per channel as one (1, 256, C) array
        tables = np.ascontiguousarray(tables.transpose(0, 2, 1).reshape(len(tables), 1, 256, ch))
    for src, dst, table in zip(frames, target, tables, strict=True):
        cv2.LUT(src, table, dst=dst)
    return _result(target, out)


def _identity_where(flat: np.ndarray, table: np.ndarray) -> np.ndarray:
    # rows of ``table`` (..., 256) where ``flat`` is set become the identity table
    return np.where(flat[..., None], np.arange(256), table)


def auto_contrast(clip: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """PIL's ``ImageOps.autocontrast(frame)`` on every frame of a uint8 clip ``(T, C, H, W)``, bit-exact:
    per frame and channel, the darkest level maps to 0 and the brightest to 255, as PIL computes it
    (``int(i * scale + offset)`` in double precision, clipped)."""
    frames = _hwc_frames(clip)
    hist = _histograms(frames) > 0
    lo = hist.argmax(axis=-1)
    hi = 255 - hist[..., ::-1].argmax(axis=-1)
    flat = hi <= lo
    scale = 255.0 / np.where(flat, 1, hi - lo)
    offset = -lo * scale
    table = np.trunc(np.arange(256) * scale[..., None] + offset[..., None])
    return _frame_tables(frames, _identity_where(flat, table), out)


def equalize(clip: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """PIL's ``ImageOps.equalize(frame)`` on every frame of a uint8 clip ``(T, C, H, W)``, bit-exact: per
    frame and channel, level ``i`` maps to ``(step // 2 + pixels below i) // step``, ``step`` being the
    pixels below the brightest level over 255 (identity for a frame of one level or a zero step)."""
    frames = _hwc_frames(clip)
    hist = _histograms(frames)
    last = 255 - (hist[..., ::-1] > 0).argmax(axis=-1)  # brightest level present
    top = np.take_along_axis(hist, last[..., None], axis=-1)[..., 0]
    step = (hist.sum(axis=-1) - top) // 255
    flat = ((hist > 0).sum(axis=-1) <= 1) | (step == 0)
    step = np.where(flat, 1, step)
    below = np.cumsum(hist, axis=-1) - hist  # pixels below each level
    table = (step[..., None] // 2 + below) // step[..., None]
    return _frame_tables(frames, _identity_where(flat, table), out)


def _luma(frames: np.ndarray) -> np.ndarray:
    """PIL's ``convert("L")`` of every frame of uint8 ``(T, H, W, 3)``: ``(T, H, W)``. The conversion is
    per pixel, so the frames go through as one tall image."""
    from PIL import Image

    t, h, w, ch = frames.shape
    return np.asarray(Image.fromarray(frames.reshape(t * h, w, ch)).convert("L")).reshape(t, h, w)


def _blend_table(base: np.ndarray, factor: float) -> np.ndarray:
    """PIL's ``Image.blend(base, image, factor)`` for every level of ``image``: ``(..., 256)``, computed
    in float32 and truncated as PIL's C code does (``base`` is a level per row)."""
    alpha = np.float32(factor)
    base = np.asarray(base, dtype=np.float32)[..., None]
    value = base + alpha * (np.arange(256, dtype=np.float32) - base)
    return np.trunc(value)  # negative ones are clipped to 0 later, as PIL does


def contrast(clip: torch.Tensor, factor: float, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """PIL's ``ImageEnhance.Contrast(frame).enhance(factor)`` on every frame of a uint8 clip
    ``(T, C, H, W)``, bit-exact: each frame blended with its mean grey level (rounded as PIL does)."""
    frames = _hwc_frames(clip)
    luma = _luma(frames)
    n = luma[0].size
    means = [int(int(frame.sum(dtype=np.int64)) / n + 0.5) for frame in luma]
    return _frame_tables(frames, _blend_table(np.array(means), factor), out)


def color(clip: torch.Tensor, factor: float, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """PIL's ``ImageEnhance.Color(frame).enhance(factor)`` on every frame of a uint8 clip ``(T, C, H, W)``:
    PIL's grey frame blended towards the frame by ``factor``, with OpenCV's ``addWeighted``. Within one
    level of PIL's result, as :func:`sharpness`."""
    frames = _hwc_frames(clip)
    t, h, w, ch = frames.shape
    grey = cv2.cvtColor(_luma(frames).reshape(t * h, w), cv2.COLOR_GRAY2RGB)
    target = _target(frames, out)
    # grey + factor * (frame - grey)
    blend = target.reshape(t * h, w, ch)
    cv2.addWeighted(grey, 1.0 - factor, frames.reshape(t * h, w, ch), factor, TRUNCATE, dst=blend)
    return _result(target, out)


_STATISTICS = {
    "AutoContrast": auto_contrast, "Equalize": equalize, "Contrast": contrast, "ContrastIncreasing": contrast,
    "Color": color, "ColorIncreasing": color,
}


# ---------------------------------------------------------------- other ops


def _per_frame_pil(clip: torch.Tensor, fn, args: tuple, *, out: torch.Tensor | None = None) -> torch.Tensor:
    from PIL import Image

    frames = clip.permute(0, 2, 3, 1).numpy()
    target = _target(frames, out)
    for i, frame in enumerate(frames):
        target[i] = np.asarray(fn(Image.fromarray(frame), *args))
    return _result(target, out)
