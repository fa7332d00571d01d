import numpy as np
import pytest

from kit.sampling import dense_indices, sample_indices, uniform_indices


def test_uniform_test_indices_are_segment_midpoints():
    # 100 frames in 4 segments of 25: the middle of each
    assert uniform_indices(100, 4, train=False).tolist() == [12, 37, 62, 87]


def test_uniform_test_views_take_points_k_over_v_plus_1():
    # 2 views: points 1/3 and 2/3 of each 25-frame segment
    assert uniform_indices(100, 4, train=False, views=2, view=0).tolist() == [8, 33, 58, 83]
    assert uniform_indices(100, 4, train=False, views=2, view=1).tolist() == [16, 41, 66, 91]
    # 3 views of 32 frames in 8 segments of 4 frames: offsets 1, 2, 3
    for v, off in enumerate([1, 2, 3]):
        assert uniform_indices(32, 8, train=False, views=3, view=v).tolist() == list(
            range(off, 32, 4)
        )


def test_uniform_short_clip_repeats_frames():
    # 3 frames, 8 wanted: segments of 0.375 frames, midpoints floor to repeated frames
    assert uniform_indices(3, 8, train=False).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert uniform_indices(1, 4, train=True, rng=np.random.default_rng(0)).tolist() == [0, 0, 0, 0]


def test_uniform_train_takes_one_random_frame_per_segment():
    rng = np.random.default_rng(0)
    draws = np.stack([uniform_indices(100, 4, train=True, rng=rng) for _ in range(2000)])
    for i in range(4):
        seg = draws[:, i]
        assert (
            seg.min() == 25 * i and seg.max() == 25 * i + 24
        )  # the whole segment, nothing outside
    a = uniform_indices(100, 4, train=True, rng=np.random.default_rng(5))
    b = uniform_indices(100, 4, train=True, rng=np.random.default_rng(5))
    assert a.tolist() == b.tolist() and a.dtype == np.int64


def test_uniform_train_short_clip_stays_in_range():
    rng = np.random.default_rng(1)
    for n in (1, 2, 5, 7):
        idx = uniform_indices(n, 8, train=True, rng=rng)
        assert idx.min() >= 0 and idx.max() < n and np.all(np.diff(idx) >= 0)


def test_dense_test_window_is_centred():
    # window of 4 frames 2 apart spans 7 frames; free range 93, centre start round(46.5) = 46
    assert dense_indices(100, 4, stride=2, train=False).tolist() == [46, 48, 50, 52]
    assert dense_indices(100, 4, stride=2, train=False, views=3, view=0).tolist() == [
        23,
        25,
        27,
        29,
    ]
    assert dense_indices(100, 4, stride=2, train=False, views=3, view=2).tolist() == [
        70,
        72,
        74,
        76,
    ]


def test_dense_short_clip_repeats_last_frame():
    assert dense_indices(5, 4, stride=2, train=False).tolist() == [0, 2, 4, 4]
    assert dense_indices(5, 4, stride=2, train=True, rng=np.random.default_rng(0)).tolist() == [
        0,
        2,
        4,
        4,
    ]


def test_dense_train_random_start_within_video():
    rng = np.random.default_rng(0)
    starts = {int(dense_indices(20, 4, stride=3, train=True, rng=rng)[0]) for _ in range(500)}
    assert starts == set(range(0, 20 - 10 + 1))  # span 10: every start 0..10


def test_sample_indices_dispatches_and_rejects_unknown():
    assert sample_indices(100, 4, train=False).tolist() == [12, 37, 62, 87]
    assert sample_indices(100, 4, sampling="dense", stride=2, train=False).tolist() == [
        46,
        48,
        50,
        52,
    ]
    with pytest.raises(ValueError, match="sampling"):
        sample_indices(100, 4, sampling="random", train=False)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_frames_in_video=0, frames=4),
        dict(num_frames_in_video=10, frames=0),
        dict(num_frames_in_video=10, frames=4, views=2, view=2),
    ],
)
def test_bad_arguments_fail(kwargs):
    with pytest.raises(ValueError):
        uniform_indices(train=False, **kwargs)
