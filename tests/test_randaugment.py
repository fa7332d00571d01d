"""kit.randaugment: timm's RandAugment sampled once per clip and applied to every frame at once."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import auto_augment as timm_aa

from kit import randaugment
from kit.randaugment import (
    GEOMETRIC_OPS,
    POINTWISE_OPS,
    STATISTICS_OPS,
    ClipRandAugment,
    affine_coefficients,
    apply_lut,
    auto_contrast,
    color,
    contrast,
    equalize,
    pil_affine,
    pointwise_lut,
    sharpness,
    translate,
)

FILL = (115, 115, 115)
HPARAMS = {"translate_const": 20, "img_mean": FILL}


def _frame(h=48, w=64, seed=0) -> np.ndarray:
    # smooth gradients plus noise: bilinear resampling differs from PIL's only by rounding
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 3, y * 4, (x + y) * 2], axis=-1) % 256 + rng.integers(0, 20, (h, w, 3))
    return img.clip(0, 255).astype(np.uint8)


def _clip(frames) -> torch.Tensor:
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)  # (T, C, H, W), channels last


def _hwc(clip: torch.Tensor, i: int) -> np.ndarray:
    return clip[i].permute(1, 2, 0).numpy()


def test_timm_parses_the_spec_and_its_op_set_is_kept():
    ra = ClipRandAugment("rand-m7-n4-mstd0.5", HPARAMS)
    assert ra.timm.num_layers == 4
    assert [op.name for op in ra.timm.ops] == timm_aa._RAND_TRANSFORMS
    assert all(op.magnitude == 7 and op.magnitude_std == 0.5 and op.prob == 0.5 for op in ra.timm.ops)
    assert set(timm_aa._RAND_TRANSFORMS) - POINTWISE_OPS - GEOMETRIC_OPS == {
        "AutoContrast", "Equalize", "Color", "Contrast",  # per-frame statistics, rebuilt
        "Sharpness",  # PIL's filter and blend, rebuilt with OpenCV: within one level
    }
    assert set(timm_aa._RAND_TRANSFORMS) & STATISTICS_OPS == {"AutoContrast", "Equalize", "Color", "Contrast"}
    assert STATISTICS_OPS == set(randaugment._STATISTICS)  # each of them has its rebuild


def test_sampled_plan_follows_timm_layers_and_magnitudes():
    ra = ClipRandAugment("rand-m9-n3-mstd0.5", HPARAMS)
    random.seed(0)
    np.random.seed(0)
    plans = [ra.sample() for _ in range(300)]
    assert all(len(p) <= 3 for p in plans)
    fired = sum(len(p) for p in plans) / (3 * len(plans))
    assert 0.4 < fired < 0.6  # each chosen layer fires with probability 0.5
    rotations = [abs(args[0]) for p in plans for name, args, _ in p if name == "Rotate"]
    assert rotations and max(rotations) <= 30 and 20 < np.mean(rotations) < 34  # 9/10 * 30 degrees, noisy
    assert all(kw["fillcolor"] == FILL for p in plans for _, _, kw in p)


@pytest.mark.parametrize("name, args", [("Invert", ()), ("Posterize", (2,)), ("Solarize", (100,)),
                                        ("SolarizeAdd", (50,)), ("Brightness", (1.37,))])
def test_pointwise_ops_are_bit_exact_with_timm_on_every_frame(name, args):
    frames = [_frame(seed=s) for s in range(3)]
    clip = _clip(frames)
    fn = timm_aa.NAME_TO_OP[name]
    out = apply_lut(clip, pointwise_lut(fn, args, 3))
    assert out.dtype == torch.uint8 and out.shape == clip.shape
    for i, frame in enumerate(frames):
        assert np.array_equal(_hwc(out, i), np.asarray(fn(Image.fromarray(frame), *args)))
    planar = apply_lut(clip.contiguous(), pointwise_lut(fn, args, 3))  # any memory layout
    assert torch.equal(planar, out)


def test_per_channel_tables_go_to_their_channels():
    clip = _clip([_frame(seed=s) for s in range(2)])
    lut = np.stack([np.arange(256), 255 - np.arange(256), np.arange(256) // 2]).astype(np.uint8)
    for layout in (clip, clip.contiguous()):
        out = apply_lut(layout, lut)
        for c in range(3):
            assert torch.equal(out[:, c], torch.from_numpy(lut[c])[clip[:, c].long()])


def test_sharpness_matches_pil_within_one_level_on_every_frame():
    frames = [_frame(seed=s) for s in range(3)]
    frames[1][:10] = np.random.default_rng(5).integers(0, 256, (10, 64, 3))  # noise: large extrapolations
    factors = [0.1, 0.5, 0.7, 1.0, 1.37, 1.9, *np.random.default_rng(6).uniform(0.1, 1.9, 20)]
    off = total = 0
    for factor in factors:
        out = sharpness(_clip(frames), float(factor))
        assert out.dtype == torch.uint8 and out.shape == (3, 3, 48, 64)
        for i, frame in enumerate(frames):
            ref = np.asarray(timm_aa.NAME_TO_OP["Sharpness"](Image.fromarray(frame), float(factor)))
            diff = np.abs(_hwc(out, i).astype(int) - ref)
            assert diff.max() <= 1, (factor, i)
            if factor == 1.0:  # the frame itself
                assert np.array_equal(_hwc(out, i), frame)
            off, total = off + np.count_nonzero(diff), total + diff.size
    assert off <= 0.001 * total, off / total


@pytest.mark.parametrize("name, args", [("ShearX", (0.2,)), ("ShearY", (-0.25,)), ("TranslateXRel", (0.3,)),
                                        ("TranslateYRel", (-0.2,)), ("TranslateX", (7.5,)), ("Rotate", (20.0,)),
                                        ("Rotate", (-13.0,))])
def test_geometric_ops_match_timm_bilinear_within_one_level(name, args):
    frames = [_frame(seed=s) for s in range(2)]
    clip = _clip(frames)
    out = pil_affine(clip, affine_coefficients(name, args, height=48, width=64), FILL)
    assert out.dtype == torch.uint8 and out.shape == clip.shape
    fn = timm_aa.NAME_TO_OP[name]
    for i, frame in enumerate(frames):
        ref = np.asarray(fn(Image.fromarray(frame), *args, fillcolor=FILL, resample=Image.BILINEAR))
        diff = np.abs(ref.astype(int) - _hwc(out, i).astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.6, (name, diff.max(), diff.mean())


@pytest.mark.parametrize("name", ["TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel"])
def test_translations_match_timm_bilinear_within_one_level(name):
    frames = [_frame(seed=s) for s in range(2)]
    clip = _clip(frames)
    vertical = name.startswith("TranslateY")
    fn = timm_aa.NAME_TO_OP[name]
    values = (0.3, -0.2, 0.45, -0.45, 0.01, 0.0, 1.0) if name.endswith("Rel") else (7.5, -7.25, 0.3, 2.5, -3.0, 100.0)
    off = total = 0
    for v in values:  # fractional, whole, edge-repeating and all-fill (100 px) shifts
        offset = affine_coefficients(name, (v,), height=48, width=64)[5 if vertical else 2]
        out = translate(clip, offset, vertical=vertical, fill=FILL)
        assert out.dtype == torch.uint8 and out.shape == clip.shape
        for i, frame in enumerate(frames):
            ref = np.asarray(fn(Image.fromarray(frame), v, fillcolor=FILL, resample=Image.BILINEAR))
            diff = np.abs(ref.astype(int) - _hwc(out, i).astype(int))
            assert diff.max() <= 1, (name, v, i)
            if v in (0.0, 1.0, 7.5, -3.0, 100.0):  # a whole-pixel or half-pixel shift: exactly PIL's
                assert diff.max() == 0, (name, v, i)
            off, total = off + np.count_nonzero(diff), total + diff.size
    assert off <= 0.05 * total, off / total  # warpAffine's 1/32 weights put 20-50 % of pixels one level off


def _statistics_frames() -> list[np.ndarray]:
    # the corner cases of PIL's per-frame tables: full and narrow ranges, one level, two skewed
    # levels, only 0 and 255, one odd pixel, all near white
    rng = np.random.default_rng(3)
    one_level, two_levels, odd_pixel = (np.full((48, 64, 3), v, np.uint8) for v in (77, 10, 0))
    two_levels[:3] = 200
    odd_pixel[0, 0] = 5
    return [_frame(), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
            rng.integers(30, 60, (48, 64, 3), dtype=np.uint8), one_level, two_levels,
            rng.integers(0, 2, (48, 64, 3), dtype=np.uint8) * 255, odd_pixel,
            rng.integers(250, 256, (48, 64, 3), dtype=np.uint8)]


@pytest.mark.parametrize("name, args", [("AutoContrast", ()), ("Equalize", ())]
                         + [("Contrast", (f,)) for f in (0.0, 0.1, 0.37, 1.0, 1.3, 1.77, 1.9)])
def test_auto_contrast_equalize_and_contrast_are_bit_exact_with_timm(name, args):
    frames = _statistics_frames()
    op = {"AutoContrast": auto_contrast, "Equalize": equalize, "Contrast": contrast}[name]
    out = op(_clip(frames), *args)
    for i, frame in enumerate(frames):
        assert np.array_equal(_hwc(out, i), np.asarray(timm_aa.NAME_TO_OP[name](Image.fromarray(frame), *args))), i


def test_color_matches_timm_within_one_level():
    frames = _statistics_frames()
    off = total = 0
    for factor in (0.0, 0.1, 0.37, 0.5, 1.0, 1.3, 1.77, 1.9):
        out = color(_clip(frames), factor)
        for i, frame in enumerate(frames):
            ref = np.asarray(timm_aa.NAME_TO_OP["Color"](Image.fromarray(frame), factor))
            diff = np.abs(ref.astype(int) - _hwc(out, i).astype(int))
            assert diff.max() <= 1, (factor, i)
            if factor in (0.0, 1.0):  # the grey frame or the frame itself
                assert diff.max() == 0, (factor, i)
            off, total = off + np.count_nonzero(diff), total + diff.size
    assert off <= 0.001 * total, off / total


def test_every_op_applies_the_same_to_every_frame():
    ra = ClipRandAugment("rand-m9-n4-mstd0.5", HPARAMS)
    still = _clip([_frame()] * 4)
    for name in timm_aa._RAND_TRANSFORMS:
        op = next(op for op in ra.timm.ops if op.name == name)
        random.seed(1)
        args = op.level_fn(9, op.hparams) if op.level_fn else ()
        out = ra.apply(still, name, args, {"fillcolor": FILL, "resample": Image.BILINEAR})
        assert out.dtype == torch.uint8 and out.shape == still.shape, name
        assert all(torch.equal(out[0], out[i]) for i in range(1, 4)), name
        if name in {"AutoContrast", "Equalize", "Contrast"}:  # bit-exact rebuilds
            ref = timm_aa.NAME_TO_OP[name](Image.fromarray(_frame()), *args)
            assert np.array_equal(_hwc(out, 0), np.asarray(ref)), name


@pytest.mark.parametrize("spec", ["rand-m9-n4-mstd0.5", "rand-m9-n3-t3a"])
def test_every_op_writes_the_same_result_into_out(spec):
    ra = ClipRandAugment(spec, HPARAMS)
    frames = [_frame(seed=s) for s in range(3)]
    for name in [op.name for op in ra.timm.ops]:
        op = next(op for op in ra.timm.ops if op.name == name)
        random.seed(3)
        args = op.level_fn(9, op.hparams) if op.level_fn else ()
        kwargs = {"fillcolor": FILL, "resample": Image.BILINEAR}
        for clip in (_clip(frames), _clip(frames).contiguous()):  # channels last, and (T, C, H, W) in memory
            want = ra.apply(clip, name, args, kwargs)
            slot = torch.full((3, 48, 64, 3), 7, dtype=torch.uint8).permute(0, 3, 1, 2)
            got = ra.apply(clip, name, args, kwargs, out=slot)
            assert got is slot and torch.equal(got, want), name


@pytest.mark.parametrize("spec", ["rand-m9-n4-mstd0.5", "rand-m9-n3-t3a"])
def test_every_op_on_a_clip_in_parts_gives_the_whole_clips_result(spec):
    # what TrainPreset(chunk_frames=...) relies on: no op looks beyond the frame it works on
    ra = ClipRandAugment(spec, HPARAMS)
    clip = _clip([_frame(seed=s) for s in range(5)])
    for op in ra.timm.ops:
        random.seed(5)
        args = op.level_fn(9, op.hparams) if op.level_fn else ()
        kwargs = {"fillcolor": FILL, "resample": Image.BILINEAR}
        whole = ra.apply(clip, op.name, args, kwargs)
        for step in (1, 2, 3):
            parts = [ra.apply(clip[t : t + step], op.name, args, kwargs) for t in range(0, 5, step)]
            assert torch.equal(torch.cat(parts), whole), (op.name, step)


def test_a_given_plan_is_run_as_given():
    ra = ClipRandAugment("rand-m9-n4-mstd0.5", HPARAMS)
    clip = _clip([_frame(seed=s) for s in range(2)])
    random.seed(0)
    np.random.seed(0)  # timm picks the ops with numpy, their magnitudes with random
    plan = ra.sample()
    random.seed(0)
    np.random.seed(0)
    assert torch.equal(ra(clip, plan=plan), ra(clip))  # the same draws, taken outside or inside
    invert = [("Invert", (), {"fillcolor": FILL, "resample": Image.BILINEAR})]
    assert torch.equal(ra(clip, plan=invert), 255 - clip)
    assert ra(clip, plan=[]) is clip


def test_per_channel_tables_write_into_out():
    clip = _clip([_frame(seed=s) for s in range(2)])
    lut = np.stack([np.arange(256), 255 - np.arange(256), np.full(256, 9)]).astype(np.uint8)
    slot = torch.zeros((2, 48, 64, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    assert apply_lut(clip, lut, out=slot) is slot and torch.equal(slot, apply_lut(clip, lut))


def test_call_writes_the_last_op_into_out_and_rejects_a_bad_out():
    ra = ClipRandAugment("rand-m9-n4-mstd0.5", HPARAMS)
    clip = _clip([_frame(seed=s) for s in range(3)])
    wrote = 0
    for seed in range(30):
        random.seed(seed)
        np.random.seed(seed)
        want = ra(clip)
        random.seed(seed)
        np.random.seed(seed)
        slot = torch.zeros((3, 48, 64, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
        got = ra(clip, out=slot)
        assert torch.equal(got, want)
        if got is slot:
            wrote += 1
        else:  # no op fired: the clip itself, the slot untouched
            assert got is clip and not slot.any()
    assert 0 < wrote < 30
    with pytest.raises(ValueError, match=r"out must be a uint8 CPU tensor \(3, 3, 48, 64\)"):
        ra(clip, out=torch.zeros((3, 3, 48, 32), dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"stored \(T, H, W, C\)"):
        ra(clip, out=torch.zeros((3, 3, 48, 64), dtype=torch.uint8))  # (T, C, H, W) in memory


def test_ops_without_a_rebuild_run_timms_pil_function_frame_by_frame():
    ra = ClipRandAugment("rand-m9-n3-t3a", HPARAMS)  # timm's three-augment set
    frames = [_frame(seed=s) for s in range(2)]
    for name in ("Desaturate", "GaussianBlur"):
        op = next(op for op in ra.timm.ops if op.name == name)
        random.seed(2)
        args = op.level_fn(9, op.hparams) if op.level_fn else ()
        out = ra.apply(_clip(frames), name, args, {"fillcolor": FILL, "resample": Image.BILINEAR})
        for i, frame in enumerate(frames):
            assert np.array_equal(_hwc(out, i), np.asarray(timm_aa.NAME_TO_OP[name](Image.fromarray(frame), *args)))


def test_call_keeps_shape_dtype_and_rejects_float():
    ra = ClipRandAugment("rand-m7-n4-mstd0.5", HPARAMS)
    random.seed(0)
    np.random.seed(0)
    clip = _clip([_frame(seed=s) for s in range(3)])
    for _ in range(20):
        out = ra(clip)
        assert out.dtype == torch.uint8 and out.shape == clip.shape
    with pytest.raises(ValueError, match="uint8"):
        ra(clip.float())


def test_loader_workers_run_opencv_ops_after_the_parent_did(tmp_path):
    # OpenCV's thread pool and fork: workers must neither hang nor start a pool per core
    script = tmp_path / "workers.py"
    script.write_text(
        "import numpy as np, torch, cv2\n"
        "from torch.utils.data import DataLoader\n"
        "from kit.randaugment import pil_affine, sharpness\n"
        "clip = torch.from_numpy(np.full((4, 32, 32, 3), 90, np.uint8)).permute(0, 3, 1, 2)\n"
        "pil_affine(clip, (1, 0.2, 0, 0, 1, 0), (1, 2, 3))  # the parent first\n"
        "def op(i):\n"
        "    return sharpness(pil_affine(clip, (1, 0, i, 0, 1, 0), (1, 2, 3)), 1.5), cv2.getNumThreads()\n"
        "out = list(DataLoader(range(4), batch_size=None, num_workers=2, collate_fn=op))\n"
        "assert all(n == 1 for _, n in out), [n for _, n in out]\n"
        "print('ok', len(out))\n"
    )
    import subprocess
    import sys

    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "ok 4" in run.stdout, run.stderr
