import random

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from kit.transforms import (
    EvalPreset,
    TrainPreset,
    _into,
    apply_gamma,
    cthw_view,
    empty_clip,
    gamma_lut,
    normalize,
    take_lut,
    tta_combinations,
)


def _clip(t=4, h=64, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


def test_gamma_lut_values():
    lut = gamma_lut(0.25)
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    assert lut[0] == 0 and lut[255] == 255
    assert lut[1] == 64  # 255 * (1/255) ** 0.25 = 63.8
    assert lut[16] == round(255 * (16 / 255) ** 0.25)
    assert np.all(np.diff(lut.astype(int)) >= 0)
    assert np.array_equal(gamma_lut(1.0), np.arange(256))
    with pytest.raises(ValueError):
        gamma_lut(0)


def test_apply_gamma_numpy_tensor_and_off():
    frames = _clip()
    assert apply_gamma(frames, None) is frames
    out = apply_gamma(frames, 0.25)
    assert out.dtype == np.uint8 and out.shape == frames.shape
    assert np.array_equal(out, gamma_lut(0.25)[frames])
    t = apply_gamma(torch.from_numpy(frames), 0.25)
    assert isinstance(t, torch.Tensor) and torch.equal(t, torch.from_numpy(out))
    with pytest.raises(TypeError, match="uint8"):
        apply_gamma(frames.astype(np.float32), 0.25)
    with pytest.raises(TypeError, match="uint8"):
        apply_gamma(torch.from_numpy(frames).float(), 0.25)


@pytest.mark.parametrize("shape", [(3, 5, 7, 3), (1, 1), (5,), (2, 0, 4)])
def test_take_lut_any_shape_and_layout(shape):
    rng = np.random.default_rng(1)
    lut = rng.integers(0, 256, 256, dtype=np.uint8)
    frames = rng.integers(0, 256, shape, dtype=np.uint8)
    out = take_lut(frames, lut)
    assert out.shape == frames.shape and out.dtype == np.uint8 and np.array_equal(out, lut[frames])
    assert not np.shares_memory(out, frames)
    if frames.ndim == 4:  # a strided view (channels first) comes out in its logical order
        view = frames.transpose(0, 3, 1, 2)
        assert np.array_equal(take_lut(view, lut), lut[view])
    with pytest.raises(TypeError, match="uint8"):
        take_lut(frames.astype(np.int16), lut)


def test_take_lut_reads_a_crop_in_place_and_writes_into_out():
    rng = np.random.default_rng(2)
    lut = rng.integers(0, 256, 256, dtype=np.uint8)
    frames = rng.integers(0, 256, (3, 20, 30, 3), dtype=np.uint8)
    crop = frames[:, 2:18, 5:21]  # strided rows, as an eval crop of decoded frames
    out = np.zeros((3, 16, 16, 3), dtype=np.uint8)
    assert take_lut(crop, lut, out=out) is out and np.array_equal(out, lut[crop])
    with pytest.raises(ValueError, match=r"out must be a C-contiguous uint8 array of shape \(3, 16, 16, 3\)"):
        take_lut(crop, lut, out=np.zeros((3, 16, 16, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="C-contiguous"):
        take_lut(crop, lut, out=np.zeros((3, 16, 16, 3), dtype=np.uint8, order="F"))


def test_normalize_layout_and_values():
    x = torch.full((2, 3, 4, 8, 8), 115, dtype=torch.uint8)  # 115/255 = 0.451
    out = normalize(cthw_view(x.permute(0, 2, 3, 4, 1).contiguous()))  # channels-last in memory
    assert out.shape == (2, 3, 4, 8, 8) and out.dtype == torch.float32 and out.is_contiguous()
    assert torch.allclose(out, torch.full_like(out, (115 / 255 - 0.45) / 0.225))
    with pytest.raises(ValueError, match="uint8"):
        normalize(out)


def test_empty_clip_is_channels_last_in_memory():
    clip = empty_clip((3, 5, 16, 24))
    assert clip.shape == (3, 5, 16, 24) and clip.dtype == torch.uint8
    assert clip.stride() == (1, 16 * 24 * 3, 24 * 3, 3)
    crops = empty_clip((2, 3, 5, 16, 24))
    assert crops.shape == (2, 3, 5, 16, 24) and crops[1].stride() == clip.stride()


@pytest.mark.parametrize("as_tensor", [False, True])
def test_train_preset_shape_dtype(as_tensor):
    frames = _clip(t=5, h=64, w=96)
    preset = TrainPreset(crop=32, randaugment="rand-m7-n4-mstd0.5", random_erasing=0.25)
    out = preset(torch.from_numpy(frames) if as_tensor else frames)
    assert out.shape == (3, 5, 32, 32) and out.dtype == torch.uint8
    assert out.stride() == empty_clip(out.shape).stride()
    x = preset.finish(out[None])
    assert x.shape == (1, 3, 5, 32, 32) and x.dtype == torch.float32


def test_train_preset_writes_into_a_slot_what_it_returns_without_one():
    frames = _clip(t=4, h=40, w=56)
    preset = TrainPreset(crop=32, randaugment="rand-m9-n4-mstd0.5")
    for seed in range(12):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        want = preset(frames)
        for slot in (empty_clip((3, 4, 32, 32)), torch.zeros((3, 4, 32, 32), dtype=torch.uint8)):
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            assert preset(frames, out=slot) is slot and torch.equal(slot, want), seed
    with pytest.raises(ValueError, match=r"out must be uint8 \(3, 4, 32, 32\)"):
        preset(frames, out=empty_clip((3, 4, 32, 16)))


def test_train_preset_randaugment_same_ops_for_every_frame():
    still = np.repeat(_clip(t=1), 6, axis=0)  # six identical frames
    preset = TrainPreset(crop=48, randaugment="rand-m9-n4-mstd0.5", hflip=0.5)
    torch.manual_seed(0)
    for _ in range(5):
        out = preset(still)
        assert all(torch.equal(out[:, 0], out[:, i]) for i in range(1, 6))


def test_train_preset_erases_the_same_rectangle_in_every_frame_of_each_clip():
    still = np.repeat(_clip(t=1), 3, axis=0)
    preset = TrainPreset(crop=48, scale=(1, 1), ratio=(1, 1), hflip=0.0, random_erasing=1.0)
    clip = preset(still)
    plain = normalize(clip)  # normalised, not erased
    random.seed(0)
    out = preset.finish(torch.stack([clip, clip]))  # a batch of two copies of one clip
    boxes = []
    for x in out:
        changed = [(x[:, i] != plain[:, i]).any(0) for i in range(3)]
        assert changed[0].any() and changed[0].float().mean() < 1
        rows, cols = torch.nonzero(changed[0], as_tuple=True)
        box = changed[0][rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.float().mean() > 0.95  # a filled rectangle
        for c in changed[1:]:
            assert torch.equal(c, changed[0])
        boxes.append(changed[0])
    assert not torch.equal(boxes[0], boxes[1])  # each clip draws its own rectangle


def test_train_preset_flip_and_gamma():
    frames = _clip(t=2, seed=3)
    kw = dict(crop=64, scale=(1, 1), ratio=(1, 1))
    plain = TrainPreset(hflip=0.0, **kw)(frames)
    assert torch.equal(plain, torch.from_numpy(frames).permute(3, 0, 1, 2))
    flipped = TrainPreset(hflip=1.0, **kw)(frames)
    assert torch.equal(flipped, plain.flip(-1))
    bright = TrainPreset(hflip=0.0, gamma=0.25, **kw)(frames)
    assert torch.equal(bright, torch.from_numpy(gamma_lut(0.25)[frames]).permute(3, 0, 1, 2))
    with pytest.raises(ValueError):
        TrainPreset(crop=32, scale=(0.5, 1.5))


def test_eval_preset_centre_crop_shape():
    out = EvalPreset(crop=32, short_side=40)(_clip(t=3, h=64, w=96))
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.uint8
    assert EvalPreset(crop=56).short_side == 64  # default crop * 8 / 7


def test_eval_preset_three_crops_left_centre_right():
    frames = _clip(t=2, h=64, w=96, seed=1)
    kw = dict(crop=64, short_side=64)
    out = EvalPreset(crops=3, **kw)(frames)
    assert out.shape == (3, 3, 2, 64, 64)
    full = torch.from_numpy(frames).permute(3, 0, 1, 2)
    for k, left in enumerate([0, 16, 32]):
        assert torch.equal(out[k], full[..., left : left + 64])
    assert torch.equal(EvalPreset(crops=1, **kw)(frames), out[1])


def test_eval_preset_three_crops_top_centre_bottom_on_portrait():
    frames = _clip(t=2, h=96, w=64, seed=2)
    out = EvalPreset(crop=64, short_side=64, crops=3)(frames)
    full = torch.from_numpy(frames).permute(3, 0, 1, 2)
    for k, top in enumerate([0, 16, 32]):
        assert torch.equal(out[k], full[..., top : top + 64, :])


@pytest.mark.parametrize("gamma", [None, 0.25])
def test_eval_preset_without_resize_writes_the_crop_into_out(gamma):
    frames = _clip(t=3, h=48, w=64, seed=3)
    preset = EvalPreset(crop=40, short_side=48, gamma=gamma)
    want = torch.from_numpy(frames[:, 4:44, 12:52] if gamma is None else gamma_lut(gamma)[frames[:, 4:44, 12:52]])
    out = empty_clip(preset.output_shape(3))
    assert preset(frames, out=out) is out and torch.equal(out, want.permute(3, 0, 1, 2))
    assert torch.equal(preset(torch.from_numpy(frames)), out)  # decoded frames as a tensor, no out
    slot = torch.zeros(3, 3, 40, 40, dtype=torch.uint8)  # an out of another memory layout
    assert torch.equal(preset(frames, out=slot), out)
    for bad in (empty_clip((3, 3, 40, 32)), empty_clip((3, 3, 40, 40)).float()):  # named before any work
        with pytest.raises(ValueError, match=r"out must be uint8 \(3, 3, 40, 40\)"):
            preset(frames, out=bad)


def test_eval_preset_gamma_finish_and_errors():
    dark = np.full((2, 64, 64, 3), 16, dtype=np.uint8)
    preset = EvalPreset(crop=64, short_side=64, gamma=0.25)
    out = preset(dark)
    assert torch.equal(out, torch.full_like(out, int(gamma_lut(0.25)[16])))
    x = preset.finish(out[None])
    assert torch.allclose(x, torch.full_like(x, (gamma_lut(0.25)[16] / 255 - 0.45) / 0.225))
    with pytest.raises(ValueError, match="crops"):
        EvalPreset(crop=32, crops=2)
    with pytest.raises(ValueError, match="short_side"):
        EvalPreset(crop=64, short_side=32)


def test_tta_combinations_view_major():
    combos = list(tta_combinations(views=2, crops=3))
    assert combos == [(0, 0, 0), (1, 0, 1), (2, 0, 2), (3, 1, 0), (4, 1, 1), (5, 1, 2)]
    assert list(tta_combinations(views=1, crops=1)) == [(0, 0, 0)]
    with pytest.raises(ValueError):
        list(tta_combinations(views=0, crops=1))


@pytest.mark.parametrize("shape", [(2, 4, 6, 3), (1, 1, 1, 3), (3, 5, 7, 1)])
def test_fast_gamma_equals_the_8_bit_table(shape):
    # the 16-bit table must give exactly the 8-bit lookup, for even and odd byte counts
    frames = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    expected = gamma_lut(0.25)[frames]
    assert np.array_equal(apply_gamma(frames, 0.25), expected)
    assert np.array_equal(apply_gamma(torch.from_numpy(frames), 0.25).numpy(), expected)
    assert np.array_equal(apply_gamma(frames[:, ::2], 0.25), gamma_lut(0.25)[frames[:, ::2]])  # a strided view


def _reference_normalize(clip_cthw, mean, std):
    # the two-step reference: x / 255, then (x - mean) / std
    x = clip_cthw.float() / 255
    return (x - torch.tensor(mean).view(-1, 1, 1, 1)) / torch.tensor(std).view(-1, 1, 1, 1)


@pytest.mark.parametrize("mean, std", [((0.45, 0.45, 0.45), (0.225, 0.225, 0.225)),
                                       ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
def test_normalize_matches_the_reference(mean, std):
    clip = torch.from_numpy(_clip(t=3, h=20, w=24)).permute(3, 0, 1, 2)  # channels-last view
    out = normalize(clip, mean=mean, std=std)
    assert out.is_contiguous() and torch.allclose(out, _reference_normalize(clip, mean, std), atol=1e-5)


@pytest.mark.parametrize("kw, frames", [(dict(crop=32, short_side=40), _clip(t=3, h=64, w=96)),
                                        (dict(crop=32, short_side=64, gamma=0.25), _clip(t=3, h=64, w=96)),
                                        (dict(crop=32, short_side=40, crops=3, gamma=0.5), _clip(t=2, h=64, w=80))])
def test_eval_preset_matches_the_reference_path_and_fills_out(kw, frames):
    preset = EvalPreset(**kw)
    out = preset(frames)
    assert out.shape == preset.output_shape(len(frames)) and out.dtype == torch.uint8
    # reference: gamma on the whole frame, resize, crop
    clip = torch.from_numpy(apply_gamma(frames, preset.gamma)).permute(0, 3, 1, 2)
    if min(clip.shape[-2:]) != preset.short_side:
        clip = TF.resize(clip, [preset.short_side], antialias=True)
    c = preset.crop
    refs = [clip[..., top : top + c, left : left + c].permute(1, 0, 2, 3)
            for top, left in preset.crop_boxes(*clip.shape[-2:])]
    ref = refs[0] if preset.crops == 1 else torch.stack(refs)
    assert torch.equal(out, ref)
    slot = empty_clip(preset.output_shape(len(frames)))
    assert preset(frames, out=slot) is slot and torch.equal(slot, out)
    assert torch.allclose(preset.finish(out), _reference_normalize(ref, preset.mean, preset.std), atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        preset(frames, out=torch.empty(preset.output_shape(len(frames))))


def test_train_preset_writes_into_out():
    frames = _clip(t=3)
    preset = TrainPreset(crop=32, randaugment="rand-m7-n4-mstd0.5", random_erasing=0.5)
    slot = empty_clip(preset.output_shape(3))
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    ref = preset(frames)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    assert preset(frames, out=slot) is slot and torch.equal(slot, ref)


def test_into_copies_a_strided_clip_into_either_layout_as_torch_does():
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (4, 20, 30, 3), dtype=torch.uint8, generator=g)
    clip = frames.permute(0, 3, 1, 2)[..., 2:18, 5:21]  # a cropped channels-last (T, C, H, W) view
    want = clip.permute(1, 0, 2, 3).contiguous()
    fresh = _into(clip, None)
    assert torch.equal(fresh, want) and fresh.permute(1, 2, 3, 0).is_contiguous()
    slot = empty_clip((3, 4, 16, 16))
    assert _into(clip, slot) is slot and torch.equal(slot, want)
    plain = torch.zeros(3, 4, 16, 16, dtype=torch.uint8)  # (C, T, H, W) in memory: torch's copy
    assert _into(clip, plain) is plain and torch.equal(plain, want)
    assert torch.equal(_into(clip.contiguous(), None), want)


@pytest.mark.parametrize("chunk", [1, 3, 5, 12, 40])
def test_train_preset_in_parts_of_frames_gives_the_clip_it_gives_whole(chunk):
    frames = np.random.default_rng(0).integers(0, 256, (12, 40, 48, 3), dtype=np.uint8)
    whole = TrainPreset(crop=32, randaugment="rand-m9-n4-mstd0.5")
    parts = TrainPreset(crop=32, randaugment="rand-m9-n4-mstd0.5", chunk_frames=chunk)
    assert "chunk_frames" in repr(parts) and "chunk_frames" not in repr(whole)
    for seed in range(30):
        clips = []
        for preset in (whole, parts):
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            out = empty_clip(preset.output_shape(12)) if seed % 2 else None
            clip = preset(frames, out=out)
            assert out is None or clip is out
            clips.append(clip)
        assert clips[1].shape == (3, 12, 32, 32) and torch.equal(clips[0], clips[1]), seed
        assert clips[1].permute(1, 2, 3, 0).is_contiguous()  # stored as empty_clip stores a clip


def test_train_preset_rejects_a_chunk_of_no_frames():
    with pytest.raises(ValueError, match="chunk_frames must be >= 1"):
        TrainPreset(crop=32, chunk_frames=0)
