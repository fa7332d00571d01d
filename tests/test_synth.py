import hashlib
import json

import numpy as np
import pytest

from kit import synth
from kit.data import check_data, read_classes, read_list
from kit.video import num_frames, read_frames

SMALL = dict(
    clips_per_class=2,
    pool_per_class=2,
    val_per_class=1,
    test_per_class=1,
    size=64,
    frames=16,
    workers=1,
)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    return synth.generate(tmp_path_factory.mktemp("synth") / "a", seed=0, **SMALL)


def _digest(root):
    return {
        p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.mp4"))
    }


def test_lists_follow_the_data_contract(synth_dir):
    classes = read_classes(synth_dir)
    k = len(classes)
    assert classes == list(synth.CLASSES) and k >= 6
    lab = read_list(synth_dir / "labeled.csv", k)
    assert np.bincount(lab.labels, minlength=k).tolist() == [2] * k
    pool, val, test = (read_list(synth_dir / f"{s}.csv", k) for s in ("unlabeled", "val", "test"))
    assert len(pool) == 2 * k and set(pool.labels.tolist()) == {-1}
    assert len(test) == k and set(test.labels.tolist()) == {-1}
    assert np.bincount(val.labels, minlength=k).tolist() == [1] * k
    hidden = read_list(synth_dir / "hidden_labels.csv", k)
    assert hidden.paths == pool.paths + test.paths and hidden.labels.min() >= 0
    assert np.bincount(hidden.labels, minlength=k).tolist() == [3] * k
    # the dark clips' names do not give their class away
    assert not any(c in p for p in pool.paths + val.paths + test.paths for c in classes)
    meta = json.loads((synth_dir / "synth.json").read_text())
    assert meta["seed"] == 0 and meta["counts"] == {
        "labeled": 2,
        "unlabeled": 2,
        "val": 1,
        "test": 1,
    }
    assert "hidden_labels.csv" in (synth_dir / "README.txt").read_text()


def test_clips_decode_and_dark_lists_are_dark(synth_dir):
    report = check_data(synth_dir, max_clips=8)
    assert report.ok, report.problems
    rows = {r["list"]: r for r in report.rows}
    assert rows["labeled.csv"]["frames_min"] == rows["test.csv"]["frames_max"] == 16
    assert rows["val.csv"]["resolution"] == "64x64"
    assert rows["labeled.csv"]["brightness"] > 0.25
    for name in ("unlabeled.csv", "val.csv", "test.csv"):
        assert 0.02 < rows[name]["brightness"] < 0.09, (name, rows[name]["brightness"])


def test_dark_clips_are_noisy_and_colour_cast(synth_dir):
    val = read_list(synth_dir / "val.csv", None)
    frames = (
        np.stack([read_frames(synth_dir / p, range(16)) for p in val.paths]).astype(np.float64)
        / 255
    )
    # frame-to-frame change of a pixel is sensor noise (the scene moves little): at least read-noise level
    assert np.std(np.diff(frames, axis=2)) > 0.02
    channel_means = frames.mean(axis=(0, 1, 2, 3))
    assert channel_means[0] > channel_means[2]  # reddish on average, like ARID


def test_clip_frames_are_a_pure_function():
    settings = synth.SynthSettings(frames=8, seed=3)
    for split in ("labeled", "val"):
        a, b = synth.clip_frames(settings, split, 2, 5), synth.clip_frames(settings, split, 2, 5)
        assert a.dtype == np.uint8 and a.shape == (8, 64, 64, 3) and np.array_equal(a, b)
    other = synth.clip_frames(synth.SynthSettings(frames=8, seed=4), "val", 2, 5)
    assert not np.array_equal(a, other)


def _assert_same_clips(a, b):
    # the encoder's input is bit-exact (test above); libx264 output can differ in a few bytes when
    # float rounding of the colour conversion differs between processes, so compare decoded frames
    assert set(_digest(a)) == set(_digest(b))
    for rel in _digest(a):
        fa = read_frames(a / rel, range(num_frames(a / rel))).astype(np.float32)
        fb = read_frames(b / rel, range(num_frames(b / rel))).astype(np.float32)
        assert fa.shape == fb.shape, rel
        assert np.abs(fa - fb).mean() < 0.5, rel
    for name in ("labeled.csv", "unlabeled.csv", "val.csv", "test.csv", "hidden_labels.csv"):
        assert (a / name).read_text() == (b / name).read_text()


def test_same_seed_same_clips_other_seed_differs(synth_dir, tmp_path):
    again = synth.generate(tmp_path / "b", seed=0, **SMALL)
    _assert_same_clips(again, synth_dir)
    none = {"pool_per_class": 0, "test_per_class": 0, "val_per_class": 0}
    other = _digest(synth.generate(tmp_path / "c", seed=1, **{**SMALL, **none}))
    first = _digest(synth_dir)
    assert set(other) < set(first) and all(first[p] != other[p] for p in other)


def test_parallel_workers_write_the_same_clips(synth_dir, tmp_path):
    par = synth.generate(tmp_path / "p", seed=0, **{**SMALL, "workers": 2})
    _assert_same_clips(par, synth_dir)


def test_motion_tells_rise_from_fall():
    # the object's centre moves up for rise and down for fall (temporal order is the class)
    for name, sign in (("rise", -1), ("fall", 1)):
        for seed in range(5):
            t = np.linspace(0, 1, 16)
            x, y, scale, angle = synth._trajectory(name, t, np.random.default_rng(seed), 64)
            assert sign * (y[-1] - y[0]) > 10


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="48"):
        synth.generate(tmp_path, size=48)
    with pytest.raises(ValueError, match="num_classes"):
        synth.generate(tmp_path, num_classes=9)


def test_cli_writes_a_data_dir(tmp_path, capsys):
    out = tmp_path / "cli"
    assert (
        synth.main(
            [
                "--out",
                str(out),
                "--clips-per-class",
                "1",
                "--frames",
                "8",
                "--num-classes",
                "6",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    assert read_classes(out) == list(synth.CLASSES)[:6]
    assert len(read_list(out / "labeled.csv", 6)) == 6
    assert "wrote" in capsys.readouterr().out


def test_a_stale_set_is_found_and_replaced_whole(tmp_path):
    out = synth.generate(tmp_path / "s", seed=0, **SMALL)
    settings = dict(seed=0, **{k: v for k, v in SMALL.items() if k != "workers"})
    assert synth.stale(out, **settings) is None
    assert "seed: 0 != 1" in synth.stale(out, **{**settings, "seed": 1})
    meta = json.loads((out / "synth.json").read_text())
    (out / "synth.json").write_text(json.dumps({**meta, "version": 0}))
    assert "generator version 0" in synth.stale(out, **settings)
    (out / "stray.txt").write_text("x")
    synth.regenerate(out, **settings)
    assert synth.stale(out, **settings) is None and not (out / "stray.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    assert synth.stale(tmp_path / "nothing", **settings) is None


def test_regenerate_never_removes_a_folder_it_did_not_write(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    synth.regenerate(mine, seed=0, **{k: v for k, v in SMALL.items() if k != "workers"})
    assert (mine / "notes.txt").read_text() == "keep" and (mine / "classes.txt").exists()
