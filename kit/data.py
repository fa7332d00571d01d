"""Data directories, clip lists, the video dataset and its loaders.

A data directory holds ``classes.txt`` (line i = name of class i) and header-less CSV lists
``relative/path,label`` (label -1 = unlabelled); pseudo-label lists add the class probabilities,
``path,label,prob0,...,probK-1``. The standard lists are ``labeled.csv`` (normal light),
``unlabeled.csv`` (dark pool), ``val.csv`` (labelled dark clips held out) and ``test.csv``.

Example::

    ds = build_dataset(params, "val", train=False, views=2, crops=3)
    ds[0]["video"].shape                      # (6, 3, T, crop, crop) uint8: views x crops, view-major
    loader = build_loader(ds, batch_size=8, train=False, num_workers=2, seed=0, device="cuda")
    next(iter(loader))["video"]               # (8, 6, 3, T, crop, crop) float32 on the GPU, normalised

Command line: ``python -m kit.data check DATA_DIR [--lists a.csv b.csv]`` prints a report per
list and exits non-zero on problems.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
    default_collate,
)

from kit.sampling import SAMPLINGS, sample_indices
from kit.transforms import EvalPreset, TrainPreset, cthw_view, empty_clip
from kit.video import VideoReadError, open_video

log = logging.getLogger(__name__)

CLASSES_FILE = "classes.txt"
STANDARD_LISTS = ("labeled.csv", "unlabeled.csv", "val.csv", "test.csv")
SPLITS = ("labeled", "unlabeled", "val", "test")


class DataListError(ValueError):
    """A malformed ``classes.txt`` or clip list. The message names the file and line."""


# ---------------------------------------------------------------- classes and lists


def read_classes(data_dir) -> list[str]:
    """Class names from ``DATA_DIR/classes.txt`` (line i = class i); fails on blanks or duplicates."""
    path = Path(data_dir) / CLASSES_FILE
    if not path.is_file():
        raise DataListError(f"{path}: not found (a data directory needs {CLASSES_FILE})")
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = []
    for lineno, line in enumerate(lines, 1):
        name = line.strip()
        if not name:
            raise DataListError(f"{path}:{lineno}: empty class name")
        if name in names:
            raise DataListError(
                f"{path}:{lineno}: class {name!r} repeats line {names.index(name) + 1}"
            )
        names.append(name)
    if not names:
        raise DataListError(f"{path}: no classes")
    return names


@dataclass
class VideoList:
    """A clip list: ``paths`` as written, ``labels`` int64 ``(N,)``, ``probs`` float32 ``(N, K)`` or None."""

    paths: list[str]
    labels: np.ndarray
    probs: np.ndarray | None = None
    source: str | None = None

    def __len__(self) -> int:
        return len(self.paths)


def read_list(path, num_classes: int | None) -> VideoList:
    """Read a clip list ``path,label[,prob0..probK-1]``.

    Fails with :class:`DataListError` naming file and line on a malformed line, a label outside
    ``[-1, num_classes)``, or probabilities whose count is not ``num_classes`` (``None`` skips the
    range checks). Blank lines are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise DataListError(f"{path}: list not found")
    paths, labels, probs = [], [], []
    width = None
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        where = f"{path}:{lineno}"
        if len(fields) < 2 or not fields[0]:
            raise DataListError(f"{where}: expected 'path,label[,probs...]', got {line!r}")
        if width is None:
            width = len(fields)
        elif len(fields) != width:
            raise DataListError(f"{where}: {len(fields)} columns where earlier lines have {width}")
        try:
            label = int(fields[1])
        except ValueError:
            raise DataListError(f"{where}: label {fields[1]!r} is not an integer") from None
        if label < -1 or (num_classes is not None and label >= num_classes):
            raise DataListError(f"{where}: label {label} outside [-1, {num_classes}) in {line!r}")
        if len(fields) > 2:
            if num_classes is not None and len(fields) - 2 != num_classes:
                raise DataListError(
                    f"{where}: {len(fields) - 2} probabilities for {num_classes} classes"
                )
            try:
                p = [float(v) for v in fields[2:]]
            except ValueError:
                raise DataListError(
                    f"{where}: probabilities must be numbers, got {fields[2:]}"
                ) from None
            if not all(math.isfinite(v) and v >= 0 for v in p):
                raise DataListError(f"{where}: probabilities must be finite and >= 0, got {p}")
            probs.append(p)
        paths.append(fields[0])
        labels.append(label)
    if not paths:
        log.warning("%s: the list is empty", path)
    return VideoList(
        paths=paths,
        labels=np.asarray(labels, dtype=np.int64),
        probs=np.asarray(probs, dtype=np.float32) if probs else None,
        source=str(path),
    )


def write_list(path, paths, labels, *, probs=None) -> Path:
    """Write a clip list: ``path,label`` lines, or ``path,label,prob0..probK-1`` with ``probs (N, K)``."""
    path = Path(path)
    labels = np.asarray(labels, dtype=np.int64)
    if len(paths) != len(labels):
        raise ValueError(f"{path}: {len(paths)} paths but {len(labels)} labels")
    if probs is not None:
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or len(probs) != len(paths):
            raise ValueError(f"{path}: probs must be (N={len(paths)}, K), got {probs.shape}")
    lines = []
    for i, (p, y) in enumerate(zip(paths, labels, strict=True)):
        if "," in str(p) or "\n" in str(p):
            raise ValueError(f"{path}: clip path {p!r} contains a comma or newline")
        row = [str(p), str(int(y))]
        if probs is not None:
            row += [f"{v:.6g}" for v in probs[i]]
        lines.append(",".join(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def resolve_list(root, list_file) -> Path:
    """A list named relative to the data directory, or any existing path."""
    p = Path(list_file)
    if p.is_absolute() or (not (Path(root) / p).exists() and p.exists()):
        return p
    return Path(root) / p


# ---------------------------------------------------------------- dataset


class VideoDataset(Dataset):
    """Clips of a list, decoded with decord and transformed.

    ``dataset[i]`` is ``{"video": uint8, "label": int, "index": i}`` (+ ``"probs": (K,)`` for
    pseudo lists). ``video`` is ``(C, T, H, W)``, or ``(S, C, T, H, W)`` when one clip yields S
    samples: ``num_samples`` augmented copies in training, or ``views * crops`` at evaluation
    (view-major, see :func:`kit.transforms.tta_combinations`). The transform's ``finish`` turns a
    batch of them into the model's float input (:class:`DeviceLoader`). With ``skip_bad_videos`` a clip
    that cannot be read yields ``{"bad": path_as_listed, "index": i}`` instead of raising
    :class:`kit.video.VideoReadError`.
    """

    def __init__(
        self,
        root,
        list_file,
        *,
        frames: int,
        transform,
        train: bool,
        sampling: str = "uniform",
        stride: int = 2,
        views: int = 1,
        num_samples: int = 1,
        num_classes: int | None = None,
        skip_bad_videos: bool = False,
    ):
        self.root = Path(root)
        if num_classes is None and (self.root / CLASSES_FILE).is_file():
            num_classes = len(read_classes(self.root))
        self.num_classes = num_classes
        self.list = read_list(resolve_list(self.root, list_file), num_classes)
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        self.frames, self.sampling, self.stride = frames, sampling, stride
        self.transform, self.train = transform, train
        if train and views != 1:
            raise ValueError(f"training samples one temporal view per clip, got views={views}")
        self.views = views
        self.num_samples = num_samples if train else 1
        self.skip_bad_videos = skip_bad_videos

    @property
    def paths(self) -> list[str]:
        return self.list.paths

    @property
    def labels(self) -> np.ndarray:
        return self.list.labels

    def __len__(self) -> int:
        return len(self.list)

    def __repr__(self) -> str:
        return (
            f"VideoDataset({self.list.source}, clips={len(self)}, frames={self.frames}, "
            f"sampling={self.sampling}, train={self.train}, views={self.views}, "
            f"num_samples={self.num_samples}, transform={self.transform!r})"
        )

    def _decode_views(self, path: Path) -> list[np.ndarray]:
        keep_freed_memory()  # once in each process that decodes: a worker, or the main process
        # one reader per item, opened here so that each worker process owns its own
        vr = open_video(path, num_threads=1)
        n = len(vr)
        rng = None
        if self.train:
            # derive from torch's RNG, which DataLoader seeds per worker from the loader's generator
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        per_view = [
            sample_indices(
                n,
                self.frames,
                sampling=self.sampling,
                stride=self.stride,
                train=self.train,
                rng=rng,
                views=self.views,
                view=v,
            )
            for v in range(self.views)
        ]
        wanted = np.unique(np.concatenate(per_view))
        try:
            batch = vr.get_batch(wanted.tolist()).asnumpy()
        except Exception as exc:  # decord raises DECORDError or RuntimeError mid-stream
            raise VideoReadError(
                path, f"decoding frames failed ({exc.__class__.__name__}: {str(exc)[:200]})"
            ) from exc
        if len(per_view) == 1 and np.array_equal(per_view[0], wanted):
            return [batch]  # the usual eval case: sorted, no repeats, nothing to reorder
        return [batch[np.searchsorted(wanted, idx)] for idx in per_view]

    def item_shape(self) -> tuple[int, ...] | None:
        """Shape of ``dataset[i]["video"]``, or None when the transform does not tell it."""
        shape = getattr(self.transform, "output_shape", None)
        if shape is None:
            return None
        one = tuple(shape(self.frames))
        if self.train:
            return one if self.num_samples == 1 else (self.num_samples, *one)
        if len(one) == 5:  # (crops, C, T, H, W) per view
            crops, one = one[0], one[1:]
        else:
            crops = 1
        samples = self.views * crops
        return one if samples == 1 else (samples, *one)

    def __getitem__(self, i: int) -> dict:
        return self._item(i, None)

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """The items of one batch, their videos transformed straight into consecutive slots of
        one uint8 batch tensor (in shared memory inside a DataLoader worker): :func:`collate` then
        takes that tensor as it is instead of stacking a copy."""
        shape = self.item_shape()
        if shape is None:
            return [self._item(i, None) for i in indices]
        batch = _empty_batch((len(indices), *shape))
        return [self._item(i, slot) for i, slot in zip(indices, batch, strict=True)]

    def _item(self, i: int, out: torch.Tensor | None) -> dict:
        rel = self.list.paths[i]
        try:
            views = self._decode_views(self.root / rel)
        except VideoReadError as exc:
            if not self.skip_bad_videos:
                raise
            log.warning("skipping bad video (item %d): %s", i, exc)
            return {"bad": rel, "index": i}
        if out is None and (shape := self.item_shape()) is not None:
            out = empty_clip(shape)
        item = {
            "video": self._transform(views) if out is None else self._transform_into(views, out),
            "label": int(self.list.labels[i]),
            "index": i,
        }
        if self.list.probs is not None:
            item["probs"] = torch.from_numpy(self.list.probs[i])
        return item

    def _transform_into(self, views: list[np.ndarray], out: torch.Tensor) -> torch.Tensor:
        # out (S, ...) is view-major (see tta_combinations): one slot per sample, or per view
        # holding its crops
        slots = out.view(-1, *self.transform.output_shape(self.frames))
        if self.train:
            for slot in slots:
                self.transform(views[0], out=slot)
        else:
            for frames, slot in zip(views, slots, strict=True):
                self.transform(frames, out=slot)
        return out

    def _transform(self, views: list[np.ndarray]) -> torch.Tensor:
        # a transform without output_shape: stack what it returns
        if self.train:
            samples = [self.transform(views[0]) for _ in range(self.num_samples)]
        else:
            samples = []
            for frames in views:
                out = self.transform(frames)
                samples.extend(out.unbind(0) if out.ndim == 5 else [out])
        return samples[0] if len(samples) == 1 else torch.stack(samples)


# glibc's mallopt parameters (malloc.h), and the values keep_freed_memory sets (KEEP_FREED_BYTES = None:
# glibc's own policy, in the processes that have not decoded yet)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BYTES: int | None = 64 << 20
HEAP_BLOCK_BYTES = 32 << 20  # glibc's largest M_MMAP_THRESHOLD on 64-bit
_kept: tuple[int, bool] | None = None  # (process, result) of keep_freed_memory's last run


def keep_freed_memory() -> bool:
    """Have glibc keep up to :data:`KEEP_FREED_BYTES` of freed memory for this process's next
    allocations, instead of handing it back to the kernel. Returns whether it is set: False where
    there is no glibc, or with ``KEEP_FREED_BYTES = None``.

    A clip goes through several buffers the size of the whole clip (decoded frames, the crop, each
    RandAugment op's result: 4.8 MB at 32 x 224), freed once the clip is in its batch. By default
    glibc gives the top of its heap back to the kernel once more than twice the largest block freed
    so far lies free there, so the next clip's buffers came back as fresh pages, each faulted in and
    zeroed by the kernel. Train loader at 32 x 224, 0 workers, on a 2-core CPU: 400-500 page faults
    and 2.8-4.2 ms of system time a clip before, 4-42 and 1.7-2.6 ms once kept (``python -m
    bench.hotspots loader --train --workers 2`` prints the counts of both processes); in six paired
    runs of that loader alone, 4% more clips/s. Blocks below :data:`HEAP_BLOCK_BYTES` come from the
    heap: setting the trim threshold alone would freeze glibc's adaptive mmap threshold at 128 KiB.

    :class:`VideoDataset` calls it once in each process that decodes (DataLoader workers, or the main
    process with ``num_workers=0``); it changes that process's allocator only.
    """
    global _kept
    if KEEP_FREED_BYTES is None:
        return False
    pid = os.getpid()
    if _kept is None or _kept[0] != pid:
        try:
            mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
            # glibc's mallopt returns 1 on success (musl's stub returns 0)
            ok = mallopt(M_MMAP_THRESHOLD, HEAP_BLOCK_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES) == 1
        except (OSError, AttributeError, TypeError):  # no C library by that name (CDLL(None) off POSIX)
            ok = False
        _kept = (pid, ok)
    return _kept[1]


def _empty_batch(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 batch of clips ``(B, ..., C, T, H, W)`` stored channels last (see
    :func:`kit.transforms.empty_clip`); inside a DataLoader worker in shared memory, as
    default_collate allocates, so it crosses to the main process without another copy."""
    if torch.utils.data.get_worker_info() is None:
        return empty_clip(shape)
    *lead, c, t, h, w = shape
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return cthw_view(torch.empty(0, dtype=torch.uint8).set_(storage, 0, (*lead, t, h, w, c)))


def _is_dense(t: torch.Tensor) -> bool:
    # its elements fill one block of memory without gaps, in some order of its dimensions
    order = sorted(range(t.ndim), key=lambda d: t.stride(d), reverse=True)
    return t.permute(*order).is_contiguous()


def _slots_of_one_batch(videos: list[torch.Tensor]) -> torch.Tensor | None:
    """The batch tensor whose consecutive slots ``videos`` are (as :meth:`VideoDataset.__getitems__`
    writes them), or None."""
    first = videos[0]
    n = first.numel()
    storage = first.untyped_storage()
    if storage.nbytes() != len(videos) * n * first.element_size() or not _is_dense(first):
        return None
    for k, v in enumerate(videos):
        if (
            v.untyped_storage().data_ptr() != storage.data_ptr()
            or v.storage_offset() != k * n
            or v.shape != first.shape
            or v.stride() != first.stride()
            or v.dtype != first.dtype
        ):
            return None
    return torch.empty(0, dtype=first.dtype).set_(storage, 0, (len(videos), *first.shape), (n, *first.stride()))


def collate(items: list[dict]) -> dict:
    """Stack dataset items: ``video (B, ...)``, ``label (B,)`` and ``index (B,)`` int64,
    ``probs (B, K)`` when present, ``bad``: paths of skipped clips. ``video`` is None when every
    item was bad."""
    good = [it for it in items if "bad" not in it]
    out: dict = {"bad": [it["bad"] for it in items if "bad" in it]}
    if not good:
        out.update(
            video=None,
            label=torch.empty(0, dtype=torch.int64),
            index=torch.empty(0, dtype=torch.int64),
        )
        return out
    videos = [it["video"] for it in good]
    # VideoDataset.__getitems__ wrote the batch in place; otherwise default_collate stacks
    # straight into shared memory inside workers: one copy less per batch
    batch = _slots_of_one_batch(videos)
    out["video"] = batch if batch is not None else default_collate(videos)
    out["label"] = torch.tensor([it["label"] for it in good], dtype=torch.int64)
    out["index"] = torch.tensor([it["index"] for it in good], dtype=torch.int64)
    if "probs" in good[0]:
        out["probs"] = default_collate([it["probs"] for it in good])
    return out


# ---------------------------------------------------------------- building from params

_FROM_PARAMS = object()  # sentinel: gamma not given


def build_dataset(
    params, split: str, *, train: bool, gamma=_FROM_PARAMS, views: int = 1, crops: int = 1
) -> VideoDataset:
    """A :class:`VideoDataset` for ``split`` built from ``params`` (:class:`kit.config.Params`).

    ``split``: ``"labeled"``, ``"unlabeled"``, ``"val"``, ``"test"`` (list names from
    ``params.data``) or a path to a list (e.g. a pseudo-label list in the run's outputs); the
    clip paths in any list are relative to ``params.data.root``. ``train=True``: random sampling and
    :class:`~kit.transforms.TrainPreset`; otherwise :class:`~kit.transforms.EvalPreset` with
    ``views`` x ``crops``. ``gamma``: when not given, None (off) for training and
    ``params.eval.gamma`` for evaluation; pass it explicitly for Adapt BN and pseudo-labelling.
    """
    d = params.data
    if split in SPLITS:
        list_file = getattr(d, split)
        if list_file is None:
            raise ValueError(f"params.data.{split} is null: no {split} list in this run")
    else:
        list_file = split
    if gamma is _FROM_PARAMS:
        gamma = None if train else params.eval.gamma
    num_classes = len(read_classes(d.root))
    if train:
        transform = TrainPreset(
            crop=d.crop,
            scale=d.train_scale,
            hflip=d.hflip,
            randaugment=d.randaugment,
            random_erasing=d.random_erasing,
            mean=d.mean,
            std=d.std,
            gamma=gamma,
            chunk_frames=d.chunk_frames,
        )
    else:
        transform = EvalPreset(
            crop=d.crop, short_side=d.short_side, crops=crops, mean=d.mean, std=d.std, gamma=gamma
        )
    return VideoDataset(
        d.root,
        list_file,
        frames=d.frames,
        transform=transform,
        train=train,
        sampling=d.sampling,
        stride=d.stride,
        views=1 if train else views,
        num_samples=d.num_samples if train else 1,
        num_classes=num_classes,
        skip_bad_videos=d.skip_bad_videos,
    )


def build_loader(
    dataset,
    *,
    batch_size: int,
    train: bool,
    num_workers: int = 0,
    seed: int = 0,
    distributed: bool | None = None,
    drop_last: bool | None = None,
    device: str | torch.device = "cpu",
    pin_memory: bool | None = None,
) -> DeviceLoader:
    """A :class:`DeviceLoader` over a DataLoader with :func:`collate`: batches arrive on ``device``
    as the model's float input. Shuffled with a seeded generator in training, in list order
    otherwise; a :class:`DistributedSampler` when ``torch.distributed`` is initialised
    (``distributed=None``: detect; call ``loader.sampler.set_epoch(epoch)`` each epoch).
    ``drop_last`` defaults to True in training when the data holds more than one batch, so that
    BatchNorm never sees a batch of one clip. ``pin_memory`` defaults to True for a CUDA ``device``.
    """
    device = torch.device(device)
    if distributed is None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    generator = torch.Generator().manual_seed(seed)
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=train, seed=seed, drop_last=False)
    elif train:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    if drop_last is None:
        drop_last = train and len(sampler) > batch_size
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        generator=generator,
        persistent_workers=num_workers > 0,
        drop_last=drop_last,
        pin_memory=device.type == "cuda" if pin_memory is None else pin_memory,
    )
    return DeviceLoader(loader, device, getattr(getattr(dataset, "transform", None), "finish", None))


def check_finished(video: torch.Tensor) -> torch.Tensor:
    """``video`` itself, when it is the model's float input; a clear error for the dataset's raw uint8 clips."""
    if not video.is_floating_point():
        raise TypeError(
            f"the batch holds {video.dtype} clips, not the model's float input: build the loader with "
            "kit.data.build_loader, which finishes each batch (float32, mean/std) where the model runs"
        )
    return video


class DeviceLoader:
    """Batches of a DataLoader moved to ``device`` and finished there: each batch's uint8 ``video``
    goes through ``finish`` (the transform's :meth:`~kit.transforms.TrainPreset.finish`: float
    conversion, mean/std, random erasing in training) on ``device``, as timm's PrefetchLoader
    does. Workers and the host-to-device copy carry a quarter of float32's bytes, and the per-pixel
    float work runs on the GPU. Everything else (``dataset``, ``sampler``, ``batch_size``,
    ``num_workers``, ...) is the DataLoader's; ``finish=None`` only moves the video.
    """

    def __init__(self, loader: DataLoader, device: str | torch.device, finish=None):
        self.loader, self.device, self.finish = loader, torch.device(device), finish

    def __iter__(self):
        for batch in self.loader:
            video = batch.get("video") if isinstance(batch, dict) else None
            if video is not None:
                video = video.to(self.device, non_blocking=True)
                batch["video"] = self.finish(video) if self.finish is not None else video
            yield batch

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):
        if name in ("loader", "device", "finish"):  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __repr__(self) -> str:
        return f"DeviceLoader({self.loader.dataset!r}, device={self.device}, batch_size={self.loader.batch_size})"


# ---------------------------------------------------------------- check


@dataclass
class DataCheck:
    """Report of :func:`check_data`: one row per list, and the problems found."""

    data_dir: str
    classes: list[str]
    rows: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self):
        """One row per list (pandas DataFrame): clips, labelled, unreadable, frames, resolution, brightness."""
        import pandas as pd

        rows = [{k: v for k, v in r.items() if k not in self.classes} for r in self.table()]
        return pd.DataFrame(rows).set_index("list") if rows else pd.DataFrame()

    def class_counts(self):
        """Clips per class (columns) of each list (rows), as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame({r["list"]: r["per_class"] for r in self.rows}).T

    def table(self) -> list[dict]:
        """Rows with per-class counts as one column per class (for a DataFrame)."""
        out = []
        for row in self.rows:
            flat = {k: v for k, v in row.items() if k not in ("per_class", "unreadable")}
            flat["unreadable"] = len(row["unreadable"])
            flat.update(row["per_class"])
            out.append(flat)
        return out


def _default_lists(root: Path) -> list[str]:
    found = sorted(p.name for p in root.glob("*.csv"))
    return [n for n in STANDARD_LISTS if n in found] + [n for n in found if n not in STANDARD_LISTS]


def check_data(data_dir, *, lists=None, max_clips: int = 20, frames_per_clip: int = 4) -> DataCheck:
    """Check a data directory: classes, lists, files; decode ``frames_per_clip`` frames of up to
    ``max_clips`` clips per list (evenly spread) for frame counts, resolution and brightness.

    Every listed file is checked for existence and size; only the sampled ones are decoded.
    Brightness is the mean pixel value on a 0..1 scale (ARID's dark clips: about 0.05).
    """
    root = Path(data_dir)
    try:
        classes = read_classes(root)
    except DataListError as exc:
        return DataCheck(str(root), [], problems=[str(exc)])
    report = DataCheck(str(root), classes)
    if lists is None:
        lists = _default_lists(root)
        for required in STANDARD_LISTS[:2]:
            if required not in lists:
                report.problems.append(f"{root / required}: standard list missing")
    for name in lists:
        try:
            vl = read_list(resolve_list(root, name), len(classes))
        except DataListError as exc:
            report.problems.append(str(exc))
            continue
        unreadable = []
        for p in vl.paths:
            f = root / p
            if not f.is_file():
                unreadable.append(f"{p}: file not found")
            elif f.stat().st_size == 0:
                unreadable.append(f"{p}: file is empty")
        bad = {u.split(": ")[0] for u in unreadable}
        sample = (
            [
                vl.paths[int(i)]
                for i in np.unique(np.linspace(0, len(vl) - 1, min(max_clips, len(vl))).round())
            ]
            if len(vl)
            else []
        )
        counts, sizes, means = [], set(), []
        for p in sample:
            if p in bad:
                continue
            try:
                vr = open_video(root / p, num_threads=1)
                idx = sample_indices(len(vr), frames_per_clip, train=False)
                frames = vr.get_batch(np.unique(idx).tolist()).asnumpy()
            except Exception as exc:  # any decode failure is what the check reports
                unreadable.append(f"{p}: {exc}")
                continue
            counts.append(len(vr))
            sizes.add(f"{frames.shape[2]}x{frames.shape[1]}")
            means.append(frames.mean() / 255.0)
        labels = vl.labels
        row = {
            "list": name,
            "clips": len(vl),
            "labelled": int((labels >= 0).sum()),
            "unlabelled": int((labels < 0).sum()),
            "pseudo_probs": vl.probs is not None,
            "per_class": {c: int((labels == k).sum()) for k, c in enumerate(classes)},
            "unreadable": unreadable,
            "decoded": len(counts),
            "frames_min": min(counts) if counts else None,
            "frames_max": max(counts) if counts else None,
            "resolution": ", ".join(sorted(sizes)),
            "brightness": round(float(np.mean(means)), 4) if means else None,
        }
        report.rows.append(row)
        for u in unreadable:
            report.problems.append(f"{name}: {u}")
        if not len(vl):
            report.problems.append(f"{name}: the list is empty")
        if name == STANDARD_LISTS[0]:
            empty = [c for c, n in row["per_class"].items() if n == 0]
            if empty:
                report.notes.append(f"{name}: no labelled clips for classes {empty}")
    return report


def sample_clips(data_dir, lists, *, per_list: int = 2, seed: int = 0) -> list[str]:
    """``per_list`` clip paths drawn at random (seeded) from each list, in list order."""
    rng = np.random.default_rng(seed)
    out = []
    for name in lists:
        vl = read_list(resolve_list(data_dir, name), None)
        pick = rng.choice(len(vl), size=min(per_list, len(vl)), replace=False) if len(vl) else []
        out += [vl.paths[int(i)] for i in sorted(pick)]
    return out


def format_check(report: DataCheck) -> str:
    """A plain-text rendering of :class:`DataCheck` for the terminal."""
    cols = [
        "list",
        "clips",
        "labelled",
        "unlabelled",
        "unreadable",
        "decoded",
        "frames_min",
        "frames_max",
        "resolution",
        "brightness",
    ]
    table = report.table()
    lines = [f"data directory {report.data_dir}: {len(report.classes)} classes"]
    if table:
        widths = {c: max(len(c), *(len(str(r[c])) for r in table)) for c in cols}
        lines.append("  ".join(c.ljust(widths[c]) for c in cols))
        lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in table]
        lines.append("per class:")
        for row in report.rows:
            lines.append(
                f"  {row['list']}: " + ", ".join(f"{c}={n}" for c, n in row["per_class"].items())
            )
    lines += [f"note: {n}" for n in report.notes]
    lines += [f"PROBLEM: {p}" for p in report.problems]
    lines.append("OK" if report.ok else f"{len(report.problems)} problem(s)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kit.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="report on a data directory; exit 1 on problems")
    check.add_argument("data_dir")
    check.add_argument(
        "--lists", nargs="+", help="lists to check (default: every *.csv in DATA_DIR)"
    )
    check.add_argument("--max-clips", type=int, default=20, help="clips decoded per list")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    from kit.ug2 import add_cli as add_prepare_ug2

    add_prepare_ug2(sub)  # prepare-ug2: the real challenge data (kit/ug2.py)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "check":
        report = check_data(args.data_dir, lists=args.lists, max_clips=args.max_clips)
        if args.json:
            print(json.dumps(report.__dict__, indent=1))
        else:
            print(format_check(report))
        return 0 if report.ok else 1
    if args.command == "prepare-ug2":
        return args.func(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
