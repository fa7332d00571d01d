"""Synthetic dark-video data set: motion classes in normal light and in the dark.

Each clip shows one textured object on a textured, slowly drifting background. The class is the
object's motion, so one frame does not tell it: every class draws positions, sizes, shapes,
colours and textures from the same ranges. All classes are invariant under a horizontal flip
(no "moves left" / "moves right" pair), so flip augmentation keeps labels valid; opposite
directions in time (rise/fall, grow/shrink) need temporal order.

``labeled.csv`` holds normal-light clips. ``unlabeled.csv``, ``val.csv`` and ``test.csv`` hold
dark clips: ARID-like exposure (mean brightness about 0.05 of full scale), shot noise, read
noise and a colour cast, encoded at a high quality (crf 12) because default H.264 quality
crushes dark noise into blocks. ``hidden_labels.csv`` keeps the true labels of the unlabelled
pool and the test clips so that pseudo-label accuracy can be measured.

Example::

    python -m kit.synth --out data/synth --clips-per-class 40 --seed 0 --size 64 --frames 48
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kit.video import write_mp4

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2

CLASSES = {
    "rise": "the object moves up",
    "fall": "the object moves down",
    "grow": "the object grows",
    "shrink": "the object shrinks",
    "sway": "the object swings left and right (1-2 cycles)",
    "bounce": "the object bounces off an invisible floor (1-2 bounces)",
    "spin": "the object rotates in place (either direction)",
    "still": "the object stays where it is",
}
SHAPES = ("disk", "square", "triangle", "cross", "bar")
SPLIT_IDS = {"labeled": 0, "unlabeled": 1, "val": 2, "test": 3}


@dataclass
class SynthSettings:
    """Generator settings, written to ``synth.json``."""

    clips_per_class: int = 40  # labelled normal-light clips per class
    pool_per_class: int | None = None  # dark unlabelled clips per class; None = clips_per_class
    val_per_class: int | None = None  # dark labelled held-out clips per class; None = half
    test_per_class: int | None = None  # dark test clips per class; None = half
    num_classes: int = len(CLASSES)  # the first N classes of CLASSES
    seed: int = 0
    size: int = 64  # frame side, pixels
    frames: int = 48  # frames per clip
    fps: int = 25
    dark_brightness: float = 0.05  # target mean of dark clips, 0..1 (ARID: about 0.05)
    photons: float = 100.0  # photons a pixel of mean dark brightness collects: shot noise
    read_noise: tuple[float, float] = (0.02, 0.04)  # range of the read-noise sigma of dark clips
    bright_noise: float = 0.01  # sensor noise sigma of normal-light clips
    crf_bright: int = 18
    crf_dark: int = 12  # dark noise survives encoding only at high quality
    version: int = GENERATOR_VERSION

    def counts(self) -> dict[str, int]:
        c = self.clips_per_class
        return {
            "labeled": c,
            "unlabeled": self.pool_per_class if self.pool_per_class is not None else c,
            "val": self.val_per_class if self.val_per_class is not None else max(1, c // 2),
            "test": self.test_per_class if self.test_per_class is not None else max(1, c // 2),
        }


# ---------------------------------------------------------------- rendering


def _ease(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # motion progress 0 -> 1 over a random sub-interval of the clip: varied speeds and timing
    a, b = rng.uniform(0.0, 0.25), rng.uniform(0.75, 1.0)
    return np.clip((t - a) / (b - a), 0.0, 1.0)


def _trajectory(name: str, t: np.ndarray, rng: np.random.Generator, size: int):
    """Object centre (x, y), scale and angle per frame, each ``(T,)``."""
    n = len(t)
    s0 = rng.uniform(0.14, 0.22) * size
    scale = np.full(n, s0)
    angle = np.full(n, rng.uniform(0, 2 * np.pi))
    drift = rng.uniform(-0.08, 0.08) * size * (t - 0.5)  # small sideways drift, symmetric in sign
    x = np.full(n, rng.uniform(0.3, 0.7) * size) + drift
    y = np.full(n, rng.uniform(0.3, 0.7) * size)
    p = _ease(t, rng)
    if name in ("rise", "fall"):
        d = rng.uniform(0.25, 0.45) * size
        y0 = rng.uniform(0.5, 0.75) * size if name == "rise" else rng.uniform(0.25, 0.5) * size
        y = y0 - d * p if name == "rise" else y0 + d * p
    elif name in ("grow", "shrink"):
        small, big = rng.uniform(0.08, 0.12) * size, rng.uniform(0.24, 0.32) * size
        scale = small + (big - small) * (p if name == "grow" else 1 - p)
    elif name == "sway":
        amp, cycles, ph = (
            rng.uniform(0.15, 0.25) * size,
            rng.uniform(1.0, 1.5),
            rng.uniform(0, 2 * np.pi),
        )
        x = 0.5 * size + rng.uniform(-0.05, 0.05) * size + amp * np.sin(2 * np.pi * cycles * t + ph)
    elif name == "bounce":
        amp, cycles, ph = (
            rng.uniform(0.2, 0.35) * size,
            rng.uniform(1.0, 1.5),
            rng.uniform(0, np.pi),
        )
        floor = rng.uniform(0.65, 0.78) * size
        y = floor - amp * np.abs(np.sin(np.pi * cycles * t + ph))
    elif name == "spin":
        turns = rng.uniform(0.5, 1.0) * rng.choice([-1.0, 1.0])
        angle = angle + 2 * np.pi * turns * p
    elif name == "still":
        pass
    else:
        raise ValueError(f"unknown synthetic class {name!r}")
    return x, y, scale, angle


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if shape == "disk":
        return u**2 + v**2 < 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.85
    if shape == "triangle":
        return (v < 0.7) & (np.abs(u) < 0.6 * (0.7 - v)) & (v > -1.0)
    if shape == "cross":
        return ((np.abs(u) < 0.35) & (np.abs(v) < 1.0)) | ((np.abs(v) < 0.35) & (np.abs(u) < 1.0))
    if shape == "bar":
        return (u / 1.1) ** 2 + (v / 0.45) ** 2 < 1.0
    raise ValueError(f"unknown shape {shape!r}")


def _colour(rng: np.random.Generator, lum: float) -> np.ndarray:
    c = rng.uniform(0.2, 1.0, size=3)
    return np.clip(c * lum / c.mean(), 0.0, 1.0)


def render_clip(
    name: str, rng: np.random.Generator, *, size: int = 64, frames: int = 48
) -> np.ndarray:
    """One normal-light clip of class ``name``: float32 ``(T, H, W, 3)`` in ``[0, 1]``."""
    t = np.linspace(0.0, 1.0, frames, dtype=np.float32)[:, None, None]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy, xx = yy[None], xx[None]

    # background: two colours blended by drifting gratings, plus a fixed fine grain
    bg_lum = rng.uniform(0.25, 0.6)
    obj_lum = bg_lum + rng.choice([-1, 1]) * rng.uniform(0.25, 0.4)
    if not 0.08 <= obj_lum <= 0.95:
        obj_lum = bg_lum - (obj_lum - bg_lum)
    c1, c2 = (_colour(rng, bg_lum * f).astype(np.float32) for f in (1.2, 0.8))
    blend = np.zeros((frames, size, size), np.float32)
    vel = rng.uniform(-1, 1, size=2) * rng.uniform(0, 6)  # camera drift in pixels over the clip
    for _ in range(2):
        k = (rng.uniform(0.05, 0.35) * rng.choice([-1, 1], size=2)).astype(np.float32)
        ph = np.float32(rng.uniform(0, 2 * np.pi) + k[0] * vel[0] * t + k[1] * vel[1] * t)
        blend += np.sin(k[0] * xx + k[1] * yy + ph)
    blend = (0.5 + 0.12 * blend)[..., None]
    grain = rng.normal(0, 0.04, size=(1, size, size, 1)).astype(np.float32)
    video = c1 + (c2 - c1) * blend + grain

    # object: a shape with stripes in its own coordinates, so that rotation and scale show
    shape = SHAPES[rng.integers(len(SHAPES))]
    cx, cy, sc, ang = (
        a.astype(np.float32)[:, None, None] for a in _trajectory(name, t[:, 0, 0], rng, size)
    )
    dx, dy = (xx - cx) / sc, (yy - cy) / sc
    cos, sin = np.cos(ang), np.sin(ang)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    mask = _shape_mask(shape, u, v)[..., None]
    stripes = 0.8 + 0.2 * np.sign(
        np.sin(np.float32(rng.uniform(2.5, 4.5)) * u + np.float32(rng.uniform(0, 2 * np.pi)))
    )
    obj = _colour(rng, obj_lum).astype(np.float32) * stripes[..., None]
    video = np.where(mask, obj, video)
    return np.clip(video, 0.0, 1.0, out=video)


def to_bright(video: np.ndarray, rng: np.random.Generator, settings: SynthSettings) -> np.ndarray:
    """Normal-light capture: exposure jitter and mild sensor noise; uint8 ``(T, H, W, 3)``."""
    x = video * np.float32(rng.uniform(0.85, 1.1) * 255)
    x += rng.standard_normal(size=video.shape, dtype=np.float32) * np.float32(
        settings.bright_noise * 255
    )
    return (np.clip(x, 0, 255) + 0.5).astype(np.uint8)


def to_dark(video: np.ndarray, rng: np.random.Generator, settings: SynthSettings) -> np.ndarray:
    """Dark capture: low exposure, colour cast, shot and read noise; uint8 ``(T, H, W, 3)``.

    Shot noise uses the Gaussian approximation (variance = signal / photons at full scale),
    much cheaper than Poisson draws and close to them at ~100 photons.
    """
    target = settings.dark_brightness * rng.uniform(0.7, 1.3)
    # reddish cast like ARID's channel means (0.051, 0.045, 0.044), varied per clip
    cast = np.array([1.12, 0.98, 0.92]) * np.exp(rng.normal(0, 0.1, size=3))
    x = video * (cast * target / max(float(video.mean()), 1e-3)).astype(np.float32)
    read = np.float32(rng.uniform(*settings.read_noise))
    full_scale = np.float32(settings.photons / settings.dark_brightness)  # photons at brightness 1
    sigma = np.sqrt(x / full_scale + read * read)
    x += sigma * rng.standard_normal(size=video.shape, dtype=np.float32)
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------- writing


def _clip_seed(seed: int, split: str, label: int, i: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[split], label, i]))


def clip_frames(settings: SynthSettings, split: str, label: int, i: int) -> np.ndarray:
    """The uint8 frames ``(T, H, W, 3)`` of clip ``i`` of class ``label`` in ``split``, as encoded.

    A pure function of its arguments: the same settings give the same frames in any process.
    """
    names = list(CLASSES)[: settings.num_classes]
    rng = _clip_seed(settings.seed, split, label, i)
    video = render_clip(names[label], rng, size=settings.size, frames=settings.frames)
    return to_bright(video, rng, settings) if split == "labeled" else to_dark(video, rng, settings)


def _make_one(job) -> str:
    out_dir, rel, split, label, i, settings = job
    frames = clip_frames(settings, split, label, i)
    crf = settings.crf_bright if split == "labeled" else settings.crf_dark
    write_mp4(Path(out_dir) / rel, frames, fps=settings.fps, crf=crf, threads=1)
    return rel


def _plan(settings: SynthSettings) -> dict[str, list[tuple[str, int, int]]]:
    """Per split: (relative path, label, index within class), in list order."""
    names = list(CLASSES)[: settings.num_classes]
    plan = {}
    for split, n in settings.counts().items():
        entries = [(label, i) for label in range(len(names)) for i in range(n)]
        if split == "labeled":
            plan[split] = [(f"labeled/{names[y]}/{names[y]}_{i:03d}.mp4", y, i) for y, i in entries]
        else:
            # anonymous names in shuffled order: a dark clip's path must not give its label away
            order = np.random.default_rng([settings.seed, SPLIT_IDS[split], 999]).permutation(
                len(entries)
            )
            plan[split] = [
                (f"{split}/{split[0]}{k:05d}.mp4", *entries[j]) for k, j in enumerate(order)
            ]
    return plan


def generate(
    out_dir,
    *,
    clips_per_class: int = 40,
    seed: int = 0,
    size: int = 64,
    frames: int = 48,
    num_classes: int = len(CLASSES),
    pool_per_class: int | None = None,
    val_per_class: int | None = None,
    test_per_class: int | None = None,
    workers: int | None = None,
    **dark,
) -> Path:
    """Write the synthetic data set to ``out_dir`` and return it.

    Writes ``classes.txt``, ``labeled.csv`` (normal light), ``unlabeled.csv`` (label -1),
    ``val.csv`` (labelled), ``test.csv`` (label -1), ``hidden_labels.csv`` (true labels of the
    unlabelled pool and the test clips), ``synth.json`` and ``README.txt``. ``dark`` overrides
    other :class:`SynthSettings` fields (``dark_brightness``, ``photons``, ``read_noise``, ...).
    Deterministic for a seed: the same frames (:func:`clip_frames`) and the same bytes, with any
    number of ``workers`` (encoding processes; default: CPUs, at most 4). The workers are
    spawned, so a script that calls this needs the ``if __name__ == "__main__":`` guard.
    """
    if size % 2 or size == 48:
        raise ValueError(
            f"size must be even and not 48 (decord cannot decode 48-wide frames), got {size}"
        )
    if not 2 <= num_classes <= len(CLASSES):
        raise ValueError(f"num_classes must be in [2, {len(CLASSES)}], got {num_classes}")
    settings = SynthSettings(
        clips_per_class=clips_per_class,
        pool_per_class=pool_per_class,
        val_per_class=val_per_class,
        test_per_class=test_per_class,
        num_classes=num_classes,
        seed=seed,
        size=size,
        frames=frames,
        **dark,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = _plan(settings)
    jobs = [
        (str(out), rel, split, y, i, settings) for split, rows in plan.items() for rel, y, i in rows
    ]
    workers = workers or min(os.cpu_count() or 1, 4)
    start = time.perf_counter()
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_make_one, jobs, chunksize=8):
                pass
    else:
        for job in jobs:
            _make_one(job)
    log.info("wrote %d clips to %s in %.1f s", len(jobs), out, time.perf_counter() - start)

    from kit.data import write_list

    names = list(CLASSES)[:num_classes]
    (out / "classes.txt").write_text("".join(n + "\n" for n in names))
    for split, rows in plan.items():
        hide = split in ("unlabeled", "test")
        write_list(
            out / f"{split}.csv", [r for r, _, _ in rows], [-1 if hide else y for _, y, _ in rows]
        )
    hidden = plan["unlabeled"] + plan["test"]
    write_list(out / "hidden_labels.csv", [r for r, _, _ in hidden], [y for _, y, _ in hidden])
    (out / "synth.json").write_text(
        json.dumps({**asdict(settings), "counts": settings.counts(), "classes": names}, indent=1)
    )
    (out / "README.txt").write_text(_readme(settings, names))
    return out


def stale(out_dir, **wanted) -> str | None:
    """Why the synthetic set in ``out_dir`` differs from what ``generate(out_dir, **wanted)`` writes, or None.

    Compares the generator version and the settings given in ``wanted`` with ``synth.json``;
    a folder without ``synth.json`` was not written by this generator and is never called stale.
    """
    path = Path(out_dir) / "synth.json"
    if not path.exists():
        return None
    written = json.loads(path.read_text())
    if written.get("version") != GENERATOR_VERSION:
        return f"{path} was written by generator version {written.get('version')}, this is version {GENERATOR_VERSION}"
    diffs = [f"{k}: {written.get(k)!r} != {v!r}" for k, v in wanted.items() if written.get(k) != v]
    return f"{path} has other settings ({'; '.join(diffs)})" if diffs else None


def regenerate(out_dir, **kwargs) -> Path:
    """(Re)write the set in ``out_dir``.

    A set this generator wrote (``synth.json``) is replaced whole: the new one is written beside
    it and swapped in, so an interrupted run leaves the old set intact. Any other folder is
    written into as :func:`generate` does; nothing of it is removed.
    """
    out = Path(out_dir)
    if not (out / "synth.json").exists():
        return generate(out, **kwargs)
    fresh = out.with_name(out.name + ".generating")
    if fresh.exists():
        shutil.rmtree(fresh)
    generate(fresh, **kwargs)
    old = out.with_name(out.name + ".replaced")
    if out.exists():
        out.rename(old)
    fresh.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def _readme(settings: SynthSettings, names: list[str]) -> str:
    c = settings.counts()
    lines = [
        "Synthetic dark-video data set written by `python -m kit.synth` (settings in synth.json).",
        "",
        f"{len(names)} motion classes, {settings.frames} frames of {settings.size}x{settings.size} px at {settings.fps} fps:",
        *[f"  {k}: {n} - {CLASSES[n]}" for k, n in enumerate(names)],
        "",
        f"labeled.csv    normal light, {c['labeled']} clips per class (crf {settings.crf_bright})",
        f"unlabeled.csv  dark pool, {c['unlabeled']} per class, labels hidden (-1)",
        f"val.csv        dark, labelled, held out: {c['val']} per class",
        f"test.csv       dark, {c['test']} per class, labels hidden (-1)",
        "hidden_labels.csv  true labels of unlabeled.csv and test.csv (for pseudo-label accuracy)",
        "",
        f"Dark clips: mean brightness about {settings.dark_brightness} of full scale, shot noise of "
        f"{settings.photons:g} photons at that brightness, read noise sigma {settings.read_noise[0]}-{settings.read_noise[1]}, "
        f"reddish colour cast, H.264 crf {settings.crf_dark}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kit.synth", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="data directory to write")
    parser.add_argument("--clips-per-class", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--num-classes", type=int, default=len(CLASSES))
    parser.add_argument(
        "--workers", type=int, default=None, help="encoding processes (default: CPUs, max 4)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    out = generate(
        args.out,
        clips_per_class=args.clips_per_class,
        seed=args.seed,
        size=args.size,
        frames=args.frames,
        num_classes=args.num_classes,
        workers=args.workers,
    )
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
