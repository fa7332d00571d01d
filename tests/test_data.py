import random

import numpy as np
import pytest
import torch

from kit import data
from kit.config import params_from_dict
from kit.data import (
    DataListError,
    DeviceLoader,
    VideoDataset,
    build_dataset,
    build_loader,
    check_data,
    collate,
    read_classes,
    read_list,
    write_list,
)
from kit.sampling import uniform_indices
from kit.transforms import EvalPreset, TrainPreset, empty_clip, normalize
from kit.video import VideoReadError, write_mp4

RAW = dict(mean=(0, 0, 0), std=(1, 1, 1))  # transforms that keep x / 255


def _params(root, **data_kw):
    d = {
        "root": str(root),
        "frames": 4,
        "crop": 32,
        "short_side": 40,
        "randaugment": None,
        "num_workers": 0,
    }
    d.update(data_kw)
    return params_from_dict({"run": "t", "data": d, "models": [{"name": "m"}]})


# ---------------------------------------------------------------- classes and lists


def test_read_classes(tiny_data_dir, tmp_path):
    assert read_classes(tiny_data_dir) == ["drink", "jump", "wave"]
    (tmp_path / "classes.txt").write_text("a\nb\na\n")
    with pytest.raises(DataListError, match=r"classes.txt:3: class 'a' repeats line 1"):
        read_classes(tmp_path)
    with pytest.raises(DataListError, match="not found"):
        read_classes(tmp_path / "nowhere")


def test_read_list_plain_and_pseudo(tmp_path):
    f = write_list(tmp_path / "a.csv", ["x/a.mp4", "x/b.mp4"], [2, -1])
    vl = read_list(f, 3)
    assert vl.paths == ["x/a.mp4", "x/b.mp4"] and vl.labels.tolist() == [2, -1] and vl.probs is None
    probs = np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]])
    f = write_list(tmp_path / "p.csv", ["a.mp4", "b.mp4"], [2, 0], probs=probs)
    assert f.read_text().splitlines()[0] == "a.mp4,2,0.1,0.2,0.7"
    vl = read_list(f, 3)
    assert vl.probs.dtype == np.float32 and np.allclose(vl.probs, probs)


@pytest.mark.parametrize(
    "text, message",
    [
        ("a.mp4,0\nb.mp4\n", r"bad.csv:2: expected 'path,label"),
        ("a.mp4,0\nb.mp4,two\n", r"bad.csv:2: label 'two' is not an integer"),
        ("a.mp4,0\n\nb.mp4,3\n", r"bad.csv:3: label 3 outside \[-1, 3\)"),
        ("a.mp4,-2\n", r"bad.csv:1: label -2 outside"),
        ("a.mp4,0,0.5,0.5\n", r"bad.csv:1: 2 probabilities for 3 classes"),
        ("a.mp4,0,0.2,0.3,0.5\nb.mp4,1\n", r"bad.csv:2: 2 columns where earlier lines have 5"),
        ("a.mp4,0,0.2,x,0.5\n", r"bad.csv:1: probabilities must be numbers"),
        ("a.mp4,0,0.2,nan,0.5\n", r"bad.csv:1: probabilities must be finite"),
    ],
)
def test_read_list_rejects_bad_lines_naming_file_and_line(tmp_path, text, message):
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(DataListError, match=message):
        read_list(f, 3)


def test_write_list_checks_lengths(tmp_path):
    with pytest.raises(ValueError, match="2 paths but 1 labels"):
        write_list(tmp_path / "x.csv", ["a", "b"], [0])


# ---------------------------------------------------------------- dataset


def test_eval_item_has_the_frames_of_uniform_sampling(tmp_path):
    # frame i is a flat grey of 10 + 10 i: the decoded clip tells which frames were read
    root = tmp_path / "d"
    levels = 10 + 10 * np.arange(20)
    write_mp4(
        root / "v.mp4",
        np.broadcast_to(levels[:, None, None, None], (20, 64, 64, 3)).astype(np.uint8),
    )
    write_list(root / "l.csv", ["v.mp4"], [0])
    ds = VideoDataset(
        root,
        "l.csv",
        frames=4,
        transform=EvalPreset(crop=64, short_side=64, **RAW),
        train=False,
        views=2,
    )
    item = ds[0]
    assert set(item) == {"video", "label", "index"} and item["label"] == 0 and item["index"] == 0
    assert item["video"].shape == (2, 3, 4, 64, 64)
    for v in range(2):
        got = item["video"][v].float().mean(dim=(0, 2, 3))
        want = levels[uniform_indices(20, 4, train=False, views=2, view=v)]
        assert np.allclose(got.numpy(), want, atol=3), (v, got, want)


def test_dataset_shapes_train_eval_and_probs(tiny_data_dir):
    train = VideoDataset(
        tiny_data_dir,
        "labeled.csv",
        frames=4,
        transform=TrainPreset(crop=32),
        train=True,
        num_samples=2,
    )
    item = train[3]
    assert item["video"].shape == (2, 3, 4, 32, 32) and item["video"].dtype == torch.uint8
    assert item["label"] == 1 and item["index"] == 3
    ev = VideoDataset(
        tiny_data_dir,
        "val.csv",
        frames=4,
        transform=EvalPreset(crop=32, crops=3),
        train=False,
        views=2,
    )
    assert ev[0]["video"].shape == (6, 3, 4, 32, 32)
    one = VideoDataset(
        tiny_data_dir, "val.csv", frames=4, transform=EvalPreset(crop=32), train=False
    )
    assert one[0]["video"].shape == (3, 4, 32, 32)
    vl = read_list(tiny_data_dir / "unlabeled.csv", 3)
    probs = np.full((len(vl), 3), 1 / 3)
    write_list(tiny_data_dir / "pseudo.csv", vl.paths, [0] * len(vl), probs=probs)
    ps = VideoDataset(
        tiny_data_dir, "pseudo.csv", frames=4, transform=TrainPreset(crop=32), train=True
    )
    it = ps[1]
    assert it["probs"].shape == (3,) and it["probs"].dtype == torch.float32
    batch = collate([ps[0], ps[1]])
    assert batch["video"].shape == (2, 3, 4, 32, 32) and batch["probs"].shape == (2, 3)
    assert (
        batch["label"].dtype == torch.int64
        and batch["index"].tolist() == [0, 1]
        and batch["bad"] == []
    )


def test_dataset_checks_labels_against_classes(tiny_data_dir):
    (tiny_data_dir / "wrong.csv").write_text("labeled/drink_0.mp4,7\n")
    with pytest.raises(DataListError, match=r"wrong.csv:1: label 7"):
        VideoDataset(
            tiny_data_dir, "wrong.csv", frames=4, transform=EvalPreset(crop=32), train=False
        )


def test_dataset_rejects_unknown_sampling(tiny_data_dir):
    with pytest.raises(ValueError, match="sampling"):
        VideoDataset(
            tiny_data_dir,
            "val.csv",
            frames=4,
            transform=EvalPreset(crop=32),
            train=False,
            sampling="tsn",
        )


def test_dense_sampling_dataset(tiny_data_dir):
    ds = VideoDataset(
        tiny_data_dir,
        "val.csv",
        frames=4,
        transform=EvalPreset(crop=32),
        train=False,
        sampling="dense",
        stride=3,
    )
    assert ds[0]["video"].shape == (3, 4, 32, 32)


def _bad_dir(tiny_data_dir):
    (tiny_data_dir / "empty.mp4").write_bytes(b"")
    (tiny_data_dir / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    lines = ["labeled/drink_0.mp4,0", "missing.mp4,0", "empty.mp4,1", "corrupt.mp4,2"]
    (tiny_data_dir / "bad.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "i, reason", [(1, "file not found"), (2, "file is empty"), (3, "cannot be decoded")]
)
def test_bad_video_raises_naming_the_file(tiny_data_dir, i, reason):
    _bad_dir(tiny_data_dir)
    ds = VideoDataset(
        tiny_data_dir, "bad.csv", frames=4, transform=EvalPreset(crop=32), train=False
    )
    name = ds.paths[i]
    with pytest.raises(VideoReadError, match=reason) as info:
        ds[i]
    assert info.value.path.endswith(name)


def test_bad_videos_skipped_and_listed(tiny_data_dir, caplog):
    _bad_dir(tiny_data_dir)
    ds = VideoDataset(
        tiny_data_dir,
        "bad.csv",
        frames=4,
        transform=EvalPreset(crop=32),
        train=False,
        skip_bad_videos=True,
    )
    items = [ds[i] for i in range(4)]
    assert items[1] == {"bad": "missing.mp4", "index": 1}
    assert "missing.mp4" in caplog.text and "corrupt.mp4" in caplog.text
    batch = collate(items)
    assert batch["video"].shape == (1, 3, 4, 32, 32) and batch["index"].tolist() == [0]
    assert batch["bad"] == ["missing.mp4", "empty.mp4", "corrupt.mp4"]
    none = collate(items[1:])
    assert none["video"] is None and none["label"].shape == (0,) and len(none["bad"]) == 3
    loader = build_loader(ds, batch_size=2, train=False)
    batches = list(loader)
    assert [b["bad"] for b in batches] == [["missing.mp4"], ["empty.mp4", "corrupt.mp4"]]
    assert batches[1]["video"] is None


# ---------------------------------------------------------------- params and loaders


def test_build_dataset_from_params(tiny_data_dir):
    params = _params(tiny_data_dir, num_samples=2)
    train = build_dataset(params, "labeled", train=True)
    assert isinstance(train.transform, TrainPreset) and train.transform.gamma is None
    assert train.transform.chunk_frames is None
    assert train[0]["video"].shape == (2, 3, 4, 32, 32)
    parts = build_dataset(_params(tiny_data_dir, num_samples=2, chunk_frames=3), "labeled", train=True)
    assert parts.transform.chunk_frames == 3 and parts[0]["video"].shape == (2, 3, 4, 32, 32)
    val = build_dataset(params, "val", train=False, views=2, crops=3)
    assert val.transform.gamma == params.eval.gamma == 0.25 and val.transform.short_side == 40
    assert val[0]["video"].shape == (6, 3, 4, 32, 32)
    off = build_dataset(params, str(tiny_data_dir / "unlabeled.csv"), train=False, gamma=None)
    assert off.transform.gamma is None and len(off) == 3
    dark, bright = off[0]["video"], build_dataset(params, "unlabeled", train=False)[0]["video"]
    assert bright.float().mean() > dark.float().mean() + 30  # gamma 0.25 lifts a dark clip
    with pytest.raises(ValueError, match="params.data.test is null"):
        build_dataset(_params(tiny_data_dir, test=None), "test", train=False)


def test_build_loader_is_seeded_and_drops_last_in_training(tiny_data_dir):
    params = _params(tiny_data_dir)
    ds = build_dataset(params, "labeled", train=True)

    def order(seed):
        return [b["index"].tolist() for b in build_loader(ds, batch_size=4, train=True, seed=seed)]

    assert order(0) == order(0) and order(0) != order(1)
    assert [len(b) for b in order(0)] == [4]  # 6 clips, batch 4: the last partial batch is dropped
    ev = build_loader(build_dataset(params, "labeled", train=False), batch_size=4, train=False)
    assert [b["index"].tolist() for b in ev] == [[0, 1, 2, 3], [4, 5]]


def test_build_loader_with_workers_reproduces_clips(tiny_data_dir):
    ds = build_dataset(_params(tiny_data_dir), "labeled", train=True)

    def run():
        # workers draw crops, flips and RandAugment from the loader's seed; random erasing, where
        # the batch is finished, from the process's RNGs
        random.seed(0)
        torch.manual_seed(0)
        loader = build_loader(ds, batch_size=3, train=True, num_workers=2, seed=3)
        assert loader.persistent_workers
        return torch.cat([b["video"] for b in loader])

    first = run()
    assert first.dtype == torch.float32 and torch.equal(first, run())


# ---------------------------------------------------------------- check


def test_check_reports_lists_and_brightness(tiny_data_dir, capsys):
    report = check_data(tiny_data_dir)
    assert report.ok, report.problems
    rows = {r["list"]: r for r in report.rows}
    assert list(rows) == ["labeled.csv", "unlabeled.csv", "val.csv", "test.csv"]
    assert rows["labeled.csv"]["clips"] == 6 and rows["labeled.csv"]["per_class"] == {
        "drink": 2,
        "jump": 2,
        "wave": 2,
    }
    assert rows["unlabeled.csv"]["unlabelled"] == 3
    assert rows["labeled.csv"]["frames_min"] == 16 and rows["val.csv"]["resolution"] == "64x64"
    assert rows["labeled.csv"]["brightness"] > 0.3 and rows["val.csv"]["brightness"] < 0.1
    assert report.table()[0]["drink"] == 2
    summary = report.summary()
    assert list(summary.index) == list(rows) and summary.loc["val.csv", "clips"] == 3
    assert "drink" not in summary.columns
    counts = report.class_counts()
    assert counts.loc["labeled.csv"].tolist() == [2, 2, 2] and counts.loc["val.csv"].sum() == 3
    assert data.main(["check", str(tiny_data_dir)]) == 0
    out = capsys.readouterr().out
    assert "unlabeled.csv" in out and "OK" in out


def test_check_fails_on_problems(tiny_data_dir, capsys):
    _bad_dir(tiny_data_dir)
    report = check_data(tiny_data_dir, lists=["bad.csv", "labeled.csv"])
    assert not report.ok
    assert len(report.rows[0]["unreadable"]) == 3
    assert any("missing.mp4: file not found" in p for p in report.problems)
    assert any("corrupt.mp4" in p for p in report.problems)
    (tiny_data_dir / "unlabeled.csv").unlink()
    (tiny_data_dir / "val.csv").write_text("x.mp4,9\n")
    assert data.main(["check", str(tiny_data_dir)]) == 1
    out = capsys.readouterr().out
    assert "unlabeled.csv: standard list missing" in out and "val.csv:1: label 9" in out


def test_sample_clips_is_seeded(tiny_data_dir):
    a = data.sample_clips(tiny_data_dir, ["labeled.csv", "unlabeled.csv"], per_list=2, seed=0)
    assert len(a) == 4 and a == data.sample_clips(
        tiny_data_dir, ["labeled.csv", "unlabeled.csv"], per_list=2, seed=0
    )
    assert all(p.startswith("labeled/") for p in a[:2]) and all(
        p.startswith("unlabeled/") for p in a[2:]
    )
    assert len(data.sample_clips(tiny_data_dir, ["val.csv"], per_list=10)) == 3


# ---------------------------------------------------------------- batches written in place


@pytest.mark.parametrize(
    "train, kw",
    [
        (True, dict(transform=TrainPreset(crop=32), num_samples=2)),
        (False, dict(transform=EvalPreset(crop=32, crops=3), views=2)),
        (False, dict(transform=EvalPreset(crop=32, short_side=64, gamma=0.25))),
    ],
)
def test_batch_written_in_place_equals_stacked_items(tiny_data_dir, train, kw):
    ds = VideoDataset(tiny_data_dir, "labeled.csv", frames=4, train=train, **kw)
    torch.manual_seed(0)
    items = ds.__getitems__([0, 2, 5])
    assert [it["video"].shape for it in items] == [ds.item_shape()] * 3
    batch = collate(items)
    assert batch["video"].data_ptr() == items[0]["video"].data_ptr()  # no stacking copy
    assert batch["video"].shape == (3, *ds.item_shape()) and batch["index"].tolist() == [0, 2, 5]
    if not train:  # deterministic: the same as one item at a time, stacked
        assert torch.equal(batch["video"], torch.stack([ds[i]["video"] for i in (0, 2, 5)]))


def test_in_place_batch_with_a_bad_clip_falls_back_to_stacking(tiny_data_dir):
    _bad_dir(tiny_data_dir)
    ds = VideoDataset(tiny_data_dir, "bad.csv", frames=4, transform=EvalPreset(crop=32), train=False,
                      skip_bad_videos=True)
    batch = collate(ds.__getitems__([0, 1]))
    assert batch["video"].shape == (1, 3, 4, 32, 32) and batch["bad"] == ["missing.mp4"]
    assert torch.equal(batch["video"][0], ds[0]["video"])


def test_collate_copies_tensors_that_are_not_slots_of_one_batch():
    base = torch.arange(24.0).view(2, 3, 4)
    same = collate([{"video": base[0], "label": 0, "index": 0}, {"video": base[1], "label": 0, "index": 1}])
    assert same["video"].data_ptr() == base.data_ptr() and torch.equal(same["video"], base)
    part = collate([{"video": base[1], "label": 0, "index": 1}])  # a slot, but not the whole storage
    assert part["video"].data_ptr() != base.data_ptr() and torch.equal(part["video"][0], base[1])
    apart = [torch.ones(3, 4), torch.zeros(3, 4)]
    assert torch.equal(collate([{"video": v, "label": 0, "index": 0} for v in apart])["video"], torch.stack(apart))


def test_transform_without_output_shape_is_stacked(tiny_data_dir):
    plain = EvalPreset(crop=32)

    def transform(frames):  # a plain callable, as a user may pass
        return plain(frames)

    ds = VideoDataset(tiny_data_dir, "val.csv", frames=4, transform=transform, train=False)
    assert ds.item_shape() is None
    batch = collate(ds.__getitems__([0, 1]))
    assert batch["video"].shape == (2, 3, 4, 32, 32)


def test_loader_with_workers_gives_the_in_place_batches(tiny_data_dir):
    ds = build_dataset(_params(tiny_data_dir), "labeled", train=False)
    single = torch.stack([ds[i]["video"] for i in range(len(ds))])
    loader = build_loader(ds, batch_size=4, train=False, num_workers=2)
    raw = [b["video"] for b in loader.loader]  # the DataLoader's uint8 batches, channels last
    assert all(b.dtype == torch.uint8 and b.stride() == empty_clip(b.shape).stride() for b in raw)
    assert torch.equal(torch.cat(raw), single)
    got = torch.cat([b["video"] for b in loader])  # finished: float32, normalised
    assert torch.allclose(got, ds.transform.finish(single))



def test_device_loader_finishes_batches_and_exposes_the_data_loader(tiny_data_dir):
    _bad_dir(tiny_data_dir)
    write_list(tiny_data_dir / "half.csv", ["labeled/drink_0.mp4", "missing.mp4"], [0, 0])
    preset = TrainPreset(crop=32, random_erasing=1.0)
    ds = VideoDataset(tiny_data_dir, "half.csv", frames=4, transform=preset, train=True, skip_bad_videos=True)
    loader = build_loader(ds, batch_size=2, train=True)
    assert isinstance(loader, DeviceLoader) and loader.device == torch.device("cpu")
    assert loader.dataset is ds and loader.batch_size == 2 and len(loader) == len(loader.loader) == 1
    assert loader.finish == preset.finish and not loader.pin_memory  # pinned only for CUDA
    torch.manual_seed(0)
    random.seed(0)
    (batch,) = list(loader)
    assert batch["bad"] == ["missing.mp4"] and batch["video"].dtype == torch.float32
    assert batch["video"].shape == (1, 3, 4, 32, 32)
    # the same draws: the DataLoader's uint8 batch, finished (normalised, then erased)
    torch.manual_seed(0)
    random.seed(0)
    (raw,) = list(loader.loader)
    assert raw["video"].dtype == torch.uint8
    assert torch.equal(batch["video"], preset.finish(raw["video"]))
    assert not torch.equal(batch["video"], normalize(raw["video"]))  # erased
    # an all-bad batch passes through with video None; finish=None only moves the video
    write_list(tiny_data_dir / "none.csv", ["missing.mp4", "empty.mp4"], [0, 1])
    only_bad = VideoDataset(tiny_data_dir, "none.csv", frames=4, transform=EvalPreset(crop=32), train=False,
                            skip_bad_videos=True)
    assert [b["video"] for b in build_loader(only_bad, batch_size=2, train=False)] == [None]
    good = VideoDataset(tiny_data_dir, "labeled.csv", frames=4, transform=EvalPreset(crop=32), train=False)
    plain = DeviceLoader(build_loader(good, batch_size=2, train=False).loader, "cpu")
    assert next(iter(plain))["video"].dtype == torch.uint8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_loader_finishes_on_the_gpu(tiny_data_dir):
    ds = build_dataset(_params(tiny_data_dir), "labeled", train=False)
    loader = build_loader(ds, batch_size=4, train=False, num_workers=2, device="cuda")
    assert loader.pin_memory
    batches = list(loader)
    assert all(b["video"].is_cuda and b["video"].dtype == torch.float32 for b in batches)
    on_cpu = torch.cat([b["video"] for b in build_loader(ds, batch_size=4, train=False)])
    assert torch.allclose(torch.cat([b["video"] for b in batches]).cpu(), on_cpu, atol=1e-6)


# ---------------------------------------------------------------- freed memory kept by decoding processes

CHURN = """
import ctypes, resource, sys, torch
import kit.data
# glibc's start-up policy, pinned: blocks from 128 KiB up are mapped on their own and a free top of
# the heap over 128 KiB is handed back. Left alone, glibc raises both thresholds the first time a
# large mapped block is freed, which the imports before this line may or may not have done.
mallopt = ctypes.CDLL(None).mallopt
assert mallopt(kit.data.M_MMAP_THRESHOLD, 128 << 10) == 1 and mallopt(kit.data.M_TRIM_THRESHOLD, 128 << 10) == 1
if sys.argv[1] == "keep":
    kit.data._kept = None
    assert kit.data.keep_freed_memory()
def churn():  # three clip-sized buffers, as a clip's decode, crop and RandAugment leave behind
    bufs = [torch.ones(5 << 20, dtype=torch.uint8) for _ in range(3)]
    del bufs
for _ in range(3):
    churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not data.keep_freed_memory(), reason="glibc's mallopt is not available")
def test_freed_clip_buffers_are_reused_instead_of_faulted_in_again():
    import subprocess
    import sys

    faults = {
        mode: int(subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True).stdout)
        for mode in ("default", "keep")
    }
    assert faults["default"] > 20 * 3 * 10  # the buffers were handed back: every clip faults them in
    assert faults["keep"] < faults["default"] / 20


def _kept_in_child():
    return data.keep_freed_memory(), data._kept, __import__("os").getpid()


def test_each_decoding_process_keeps_freed_memory_once(tiny_data_dir, monkeypatch):
    import multiprocessing
    import os

    seen = []
    real = data.keep_freed_memory
    monkeypatch.setattr(data, "_kept", None)
    monkeypatch.setattr(data, "keep_freed_memory", lambda: seen.append(data._kept) or real())
    ds = VideoDataset(tiny_data_dir, "labeled.csv", frames=4, transform=EvalPreset(crop=32), train=False)
    ds[0], ds[1]
    ok = real()
    assert seen == [None, (os.getpid(), ok)]  # set by the first clip, then only looked up
    if "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(1) as pool:
            child_ok, kept, pid = pool.apply(_kept_in_child)
        assert pid != os.getpid() and kept == (pid, ok) and child_ok == ok  # a forked worker sets its own
    monkeypatch.setattr(data, "KEEP_FREED_BYTES", None)
    assert real() is False  # switched off: glibc's own policy


def test_keep_freed_memory_without_glibc_reports_false(monkeypatch):
    import ctypes

    class NoLibc:  # as CDLL(None) behaves where there is no POSIX C library to open
        def __init__(self, name):
            raise TypeError("expected str, bytes or os.PathLike object, not NoneType")

    monkeypatch.setattr(data, "_kept", None)
    monkeypatch.setattr(ctypes, "CDLL", NoLibc)
    assert data.keep_freed_memory() is False
    assert data.keep_freed_memory() is False  # remembered for the process
