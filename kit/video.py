"""Reading and writing video files: decord for reading, PyAV (libx264) for writing."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class VideoReadError(RuntimeError):
    """A video file is missing, empty or cannot be decoded. The message names the file."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def open_video(path, *, num_threads: int = 1):
    """Open ``path`` with decord, raising :class:`VideoReadError` on any failure."""
    import decord

    p = Path(path)
    if not p.exists():
        raise VideoReadError(p, "file not found")
    if p.stat().st_size == 0:
        raise VideoReadError(p, "file is empty")
    try:
        vr = decord.VideoReader(str(p), num_threads=num_threads)
    except Exception as exc:  # decord raises its own DECORDError or RuntimeError
        raise VideoReadError(p, f"cannot be decoded ({exc.__class__.__name__}: {str(exc)[:200]})") from exc
    if len(vr) == 0:
        raise VideoReadError(p, "has no frames")
    return vr


def num_frames(path) -> int:
    """Number of frames in ``path``."""
    return len(open_video(path))


def read_frames(path, indices) -> np.ndarray:
    """Decode the frames at ``indices`` of ``path``: uint8 array ``(T, H, W, 3)``, in the given order."""
    vr = open_video(path)
    indices = np.asarray(indices, dtype=np.int64)
    order = np.argsort(indices, kind="stable")
    try:
        frames = vr.get_batch(indices[order].tolist()).asnumpy()
    except Exception as exc:
        raise VideoReadError(path, f"decoding frames failed ({exc.__class__.__name__}: {str(exc)[:200]})") from exc
    out = np.empty_like(frames)
    out[order] = frames
    return out


# BT.601 limited-range RGB -> Y, Cb, Cr (rows), the conversion decoders assume for untagged H.264
_RGB_TO_YUV = np.array(
    [[65.738, 129.057, 25.064], [-37.945, -74.494, 112.439], [112.439, -94.154, -18.285]], dtype=np.float32
) / 256.0


def _rgb_to_yuv420p(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(T, H, W, 3)`` -> planar yuv420p ``(T, H * 3 // 2, W)``, the whole clip at once."""
    t, h, w, _ = frames.shape
    rgb = frames.astype(np.float32)
    y = rgb @ _RGB_TO_YUV[0] + 16.0
    small = rgb.reshape(t, h // 2, 2, w // 2, 2, 3).mean(axis=(2, 4))  # 2x2 chroma subsampling
    cb = small @ _RGB_TO_YUV[1] + 128.0
    cr = small @ _RGB_TO_YUV[2] + 128.0
    planes = [y.reshape(t, -1), cb.reshape(t, -1), cr.reshape(t, -1)]
    out = np.concatenate(planes, axis=1) + 0.5
    return np.clip(out, 0, 255).astype(np.uint8).reshape(t, h * 3 // 2, w)


def write_mp4(path, frames: np.ndarray, *, fps: int = 25, crf: int = 18, threads: int | None = None) -> Path:
    """Write uint8 frames ``(T, H, W, 3)`` (RGB) as an H.264 mp4. H and W must be even.

    ``threads``: encoder threads (None = libx264's choice); 1 suits many encodes in parallel processes.
    The same frames give the same bytes.
    """
    import av

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 needs even frame sizes, got {h}x{w}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        # x264's macroblock-tree rate control gave different bytes from run to run under CPU load
        options = {"crf": str(crf), "preset": "veryfast", "x264-params": "no-mbtree=1"}
        if threads is not None:
            options["threads"] = str(threads)
        stream.options = options
        # own yuv420p conversion (one numpy pass, no per-frame swscale context) and explicit
        # timestamps: with PyAV's implicit ones the bytes varied from run to run
        for i, plane in enumerate(_rgb_to_yuv420p(frames)):
            vf = av.VideoFrame.from_ndarray(plane, format="yuv420p")
            vf.pts = i
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
