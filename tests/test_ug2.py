"""prepare-ug2 on a fake UG2+ 2022 / ARID v1.5 source tree of tiny real clips, and the arid_* recipes."""

import io
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from kit import data, pipeline, stages, ug2
from kit.config import load_params
from kit.video import write_mp4

CLASSES = list(ug2.UG2_CLASSES)
ARID_PER_CLASS = 4
RECIPES = sorted(Path("params").glob("arid_*.yaml"))


def _frames(seed: int, *, bright: bool) -> np.ndarray:
    # every clip differs (content identity is how copies of val clips are found)
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256 if bright else 24, size=(6, 64, 64, 3), dtype=np.uint8)
    return frames


def _write_avi(path: Path, frames: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _csv(path: Path, header: str, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The release as the organisers' reference repo arranges it, plus ARID v1.5 in mp4 and avi."""
    src = tmp_path_factory.mktemp("ug2_source")
    seed = 0
    # labelled normal light: HMDB-style names, mostly .avi; one listed as .avi is stored as .mp4
    rows = []
    for k, c in enumerate(CLASSES):
        for j in range(2):
            name = f"Movie{j}_{c.lower()}_u_nm_np1_fr_goo_{j}.avi"
            seed += 1
            if (k, j) == (0, 0):
                write_mp4(src / "Clear/raw/train_data" / name.replace(".avi", ".mp4"), _frames(seed, bright=True))
            else:
                _write_avi(src / "Clear/raw/train_data" / name, _frames(seed, bright=True))
            rows.append((len(rows), name, k))
    _csv(src / "Clear/raw/list_cvt/ug2_2022_train_labeled.csv", "VideoID,Video,ClassID", rows)
    (src / "Clear/raw/list_cvt/mapping_table_t2.txt").write_text("".join(f"{k}\t{c}\n" for k, c in enumerate(CLASSES)))
    # dry-run validation without labels (the public version)
    for i in range(3):
        seed += 1
        write_mp4(src / f"Clear/raw/test_data/{i}.mp4", _frames(seed, bright=True))
    _csv(src / "Clear/raw/list_cvt/hmdb_validate_public.csv", "VideoID,Video", [(i, f"{i}.mp4") for i in range(3)])
    # dark unlabelled training clips 0.mp4 .. 5.mp4
    for i in range(6):
        seed += 1
        write_mp4(src / f"ARID/raw/train_data/{i}.mp4", _frames(seed, bright=False))
    dark_rows = [(i, f"{i}.mp4") for i in range(6)]
    # ARID v1.5: clips_v1.5/<Class>/*.mp4, and the same first two clips per class again as .avi
    for c in CLASSES:
        for j in range(ARID_PER_CLASS):
            seed += 1
            frames = _frames(seed, bright=False)
            write_mp4(src / f"ARID_v1.5/clips_v1.5/{c}/{c}_1_{j}.mp4", frames)
            if j < 2:
                _write_avi(src / f"ARID_v1.5/clips_v1.5_avi/{c}/{c}_1_{j}.avi", frames)
    # the dark pool also holds byte copies of every Wave ARID clip, under another name and root
    for j in range(ARID_PER_CLASS):
        shutil.copy(src / f"ARID_v1.5/clips_v1.5/Wave/Wave_1_{j}.mp4", src / f"ARID/raw/train_data/copy_{j}.mp4")
        dark_rows.append((len(dark_rows), f"copy_{j}.mp4"))
    _csv(src / "ARID/raw/list_cvt/ug2_2022_train_dark.csv", "VideoID,Video", dark_rows)
    # dark test without labels
    for i in range(4):
        seed += 1
        write_mp4(src / f"ARID/raw/test_data/{i}.mp4", _frames(seed, bright=False))
    _csv(src / "ARID/raw/list_cvt/ug2_2022_test_dark.csv", "VideoID,Video", [(i, f"{i}.mp4") for i in range(4)])
    return src


def _read(out: Path, name: str) -> data.VideoList:
    return data.read_list(out / name, len(CLASSES))


def test_prepare_writes_the_data_directory_contract(source, tmp_path):
    out = tmp_path / "ug2"
    report = ug2.prepare_ug2(source, out, val_per_class=2, seed=0)

    assert data.read_classes(out) == CLASSES
    labeled, pool, val, test = (_read(out, n) for n in data.STANDARD_LISTS)
    assert len(labeled) == 22 and sorted(np.bincount(labeled.labels)) == [2] * 11
    assert any(p.endswith("Movie0_drink_u_nm_np1_fr_goo_0.mp4") for p in labeled.paths)  # listed as .avi
    assert sum(p.endswith(".avi") for p in labeled.paths) == 21
    assert any("dry-run" in n or "validate" in n for n in report.notes)  # unlabelled dry-run left out
    assert len(val) == 22 and (np.bincount(val.labels, minlength=11) == 2).all()
    assert all(p.startswith("source/ARID_v1.5/clips_v1.5/") and p.endswith(".mp4") for p in val.paths)
    assert (pool.labels == -1).all() and (test.labels == -1).all() and len(test) == 4
    # pool: 6 dark + 22 ARID clips not in val; of the 4 copies of Wave clips in the dark list, the
    # 2 copies of val clips are removed, the 2 others stand for their ARID originals (kept once)
    assert len(pool) == 6 + 22
    assert len(report.removed_from_pool) == 2 and report.duplicates["unlabeled"] == 2
    assert report.duplicates["arid"] == 22  # the avi twins of clips_v1.5_avi
    assert len(_read(out, "arid_all.csv")) == 44
    hidden = _read(out, "hidden_labels.csv")  # true labels of the pool's ARID clips, for the reports
    assert set(hidden.paths) < set(pool.paths) and len(hidden) == 20  # 22 minus the 2 reached via copies
    assert all(Path(p).parent.name == CLASSES[y] for p, y in zip(hidden.paths, hidden.labels, strict=True))
    assert (out / "source").is_symlink() and (out / "source").resolve() == source.resolve()
    for name in data.STANDARD_LISTS:
        assert all((out / p).is_file() for p in _read(out, name).paths)
    check = data.check_data(out, max_clips=3)
    assert check.ok, check.problems
    brightness = {row["list"]: row["brightness"] for row in check.rows}
    assert brightness["val.csv"] < 0.1 < brightness["labeled.csv"]
    # a recipe pointed at it loads clips through the symlink (.avi and .mp4 alike)
    small = ["data.frames=4", "data.crop=32", "data.short_side=36", "data.num_samples=1"]
    params = load_params("params/arid_uniformer_b32_k600.yaml", [f"data.root={out}", *small])
    item = data.build_dataset(params, "labeled", train=True)[1]
    assert item["video"].shape == (3, 4, 32, 32) and item["label"] == labeled.labels[1]
    assert data.build_dataset(params, "val", train=False, crops=3)[0]["video"].shape == (3, 3, 4, 32, 32)


def test_val_split_is_stratified_deterministic_and_held_out(source, tmp_path):
    a = ug2.prepare_ug2(source, tmp_path / "a", val_per_class=2, seed=0)
    ug2.prepare_ug2(source, tmp_path / "b", val_per_class=2, seed=0)
    ug2.prepare_ug2(source, tmp_path / "c", val_per_class=2, seed=1)
    val_a, val_b, val_c = (_read(tmp_path / d, "val.csv").paths for d in "abc")
    assert val_a == val_b
    assert val_a != val_c
    split = json.loads((tmp_path / "a" / "val_split.json").read_text())
    assert split["seed"] == 0 and split["val_per_class"] == 2 and split["classes"] == CLASSES
    assert [c["path"] for c in split["clips"]] == val_a
    assert split["counts"] == a.val_per_class == {c: 2 for c in CLASSES}
    # held out: no val clip in the pool, neither by path nor as a file copy or avi twin
    pool = _read(tmp_path / "a", "unlabeled.csv").paths
    assert not set(val_a) & set(pool)
    real_pool = {(tmp_path / "a" / p).resolve() for p in pool}
    assert not {(tmp_path / "a" / p).resolve() for p in val_a} & real_pool
    stems = {Path(p).stem for p in val_a}
    assert not stems & {Path(p).stem for p in pool}
    val_bytes = {(tmp_path / "a" / p).read_bytes() for p in val_a}
    assert not any((tmp_path / "a" / p).read_bytes() in val_bytes for p in pool)


def test_without_arid_in_pool_the_pool_is_the_dark_training_set(source, tmp_path):
    ug2.prepare_ug2(source, tmp_path / "d", val_per_class=1, seed=0, arid_in_pool=False)
    pool = _read(tmp_path / "d", "unlabeled.csv").paths
    assert all(p.startswith("source/ARID/raw/train_data/") for p in pool)
    assert len(pool) == 10 - 1  # the one copy of the Wave val clip is removed


def test_test_list_with_labels_and_the_reference_list_format(source, tmp_path):
    # the reference solution's header-less `path,label` list, paths written under another root
    ref = tmp_path / "lists" / "test_gt.csv"
    ref.parent.mkdir()
    ref.write_text("".join(f"/cluster/home/u/ug2/ARID/raw/test_data/{i}.mp4,{i + 3}\n" for i in range(4)))
    ug2.prepare_ug2(source, tmp_path / "e", val_per_class=1, lists={"test": ref})
    test = _read(tmp_path / "e", "test.csv")
    assert list(test.labels) == [3, 4, 5, 6]
    assert test.paths == [f"source/ARID/raw/test_data/{i}.mp4" for i in range(4)]
    report = ug2.prepare_ug2(source, tmp_path / "f", val_per_class=1, test=False)
    assert not (tmp_path / "f" / "test.csv").exists()
    assert any("data.test: null" in n for n in report.notes)


def test_read_source_list_formats(tmp_path):
    f = tmp_path / "l"
    f.write_text("VideoID,Video,ClassID\n0,a.avi,3\n1,b.mp4,10\n")
    assert ug2.read_source_list(f) == [("a.avi", 3), ("b.mp4", 10)]
    f.write_text("\ufeffVideoID,Video\n0,0.mp4\n")
    assert ug2.read_source_list(f) == [("0.mp4", -1)]
    f.write_text("0\t0\tDrink/Drink_1_1.mp4\n1\t10\tWave/Wave_2_3.avi\n")
    assert ug2.read_source_list(f) == [("Drink/Drink_1_1.mp4", 0), ("Wave/Wave_2_3.avi", 10)]
    probs = ",".join(["0.0909"] * 11)
    f.write_text(f"dark/1.mp4,-1\ndark/2.mp4,4,{probs}\n")
    assert ug2.read_source_list(f) == [("dark/1.mp4", -1), ("dark/2.mp4", 4)]
    f.write_text("a.mp4,1\nb.mp4,11\n")
    with pytest.raises(ug2.PrepareError, match=r"l:2: label 11 outside"):
        ug2.read_source_list(f)
    f.write_text("VideoID,Video,ClassID\n0,a.mp4,walk\n")
    with pytest.raises(ug2.PrepareError, match=r"l:2: label 'walk'"):
        ug2.read_source_list(f)


def test_missing_parts_fail_naming_what_is_missing(source, tmp_path):
    partial = tmp_path / "partial"  # the challenge release without ARID v1.5
    partial.mkdir()
    for name in ("Clear", "ARID"):
        (partial / name).symlink_to(source / name, target_is_directory=True)
    with pytest.raises(ug2.PrepareError, match=r"ARID v1.5 clips not found.*clips_v1.5.*--arid"):
        ug2.prepare_ug2(partial, tmp_path / "o1")
    with pytest.raises(ug2.PrepareError, match=r"ARID v1.5 folder .*nowhere not found"):
        ug2.prepare_ug2(source, tmp_path / "o2", arid=tmp_path / "nowhere")
    with pytest.raises(ug2.PrepareError, match=r"dark unlabelled training list .*ug2_2022_train_dark.csv"):
        ug2.prepare_ug2(tmp_path / "partial" / "Clear", tmp_path / "o3")
    no_test = tmp_path / "no_test"  # a release without its test part yet
    no_test.mkdir()
    (no_test / "Clear").symlink_to(source / "Clear", target_is_directory=True)
    (no_test / "ARID" / "raw" / "list_cvt").mkdir(parents=True)
    shutil.copy(source / "ARID/raw/list_cvt/ug2_2022_train_dark.csv", no_test / "ARID/raw/list_cvt")
    (no_test / "ARID/raw/train_data").symlink_to(source / "ARID/raw/train_data", target_is_directory=True)
    with pytest.raises(ug2.PrepareError, match=r"dark test list .*--test-list \(or --no-test"):
        ug2.prepare_ug2(no_test, tmp_path / "o8", arid=source / "ARID_v1.5")
    report = ug2.prepare_ug2(no_test, tmp_path / "o8", arid=source / "ARID_v1.5", test=False, val_per_class=1)
    assert report.links["arid"] == str(source / "ARID_v1.5")  # outside --source: a link of its own
    assert _read(tmp_path / "o8", "val.csv").paths[0].startswith("arid/clips_v1.5/Drink/")
    with pytest.raises(ug2.PrepareError, match=r"video folder .*nope not found"):
        ug2.prepare_ug2(source, tmp_path / "o4", videos={"dark": tmp_path / "nope"})
    with pytest.raises(ug2.PrepareError, match=r"source folder .* not found"):
        ug2.prepare_ug2(tmp_path / "absent", tmp_path / "o5")
    extra = tmp_path / "dark_plus.csv"
    extra.write_text((source / "ARID/raw/list_cvt/ug2_2022_train_dark.csv").read_text() + "99,lost.mp4\n")
    with pytest.raises(ug2.PrepareError, match=r"dark_plus.csv: 1 of 11 listed clips not found.*lost.mp4.*--allow-missing"):
        ug2.prepare_ug2(source, tmp_path / "o6", lists={"dark": extra})
    report = ug2.prepare_ug2(source, tmp_path / "o7", lists={"dark": extra}, allow_missing=True, val_per_class=1)
    assert report.missing["dark"] == ["lost.mp4"]
    with pytest.raises(ug2.PrepareError, match=r"already holds a data directory.*--force"):
        ug2.prepare_ug2(source, tmp_path / "o7", lists={"dark": extra}, allow_missing=True)


def test_a_class_order_other_than_the_kits_is_refused(source, tmp_path):
    lists = tmp_path / "list_cvt"
    lists.mkdir()
    dark = shutil.copy(source / "ARID/raw/list_cvt/ug2_2022_train_dark.csv", lists)
    (lists / "mapping_table.txt").write_text("0\tJump\n1\tDrink\n")
    with pytest.raises(ug2.PrepareError, match=r"mapping_table.txt:1: class 0 is 'Jump' here but 'Drink'"):
        ug2.prepare_ug2(source, tmp_path / "o", lists={"dark": dark}, videos={"dark": source / "ARID/raw/train_data"})


def test_identical_to_finds_copies_only(tmp_path):
    a, b, c = tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "c.mp4"
    write_mp4(a, _frames(1, bright=False))
    shutil.copy(a, b)
    write_mp4(c, _frames(2, bright=False))
    clips = [ug2.Clip(p, -1, str(p)) for p in (a, b, c)]
    assert ug2.identical_to(clips[1:], clips[:1]) == [0]


def test_cli_prepares_and_checks(source, tmp_path, capsys):
    out = tmp_path / "g"
    argv = ["prepare-ug2", "--source", str(source), "--out", str(out), "--val-per-class", "1"]
    assert data.main(argv) == 0
    text = capsys.readouterr().out
    assert "val.csv" in text and text.rstrip().endswith("OK")  # the summary, then `kit.data check`
    assert data.main(["check", str(out), "--max-clips", "2"]) == 0
    assert data.main(argv) == 2  # an existing data directory is kept without --force
    assert "--force" in capsys.readouterr().err
    assert data.main([*argv, "--force", "--seed", "3", "--no-check"]) == 0
    assert json.loads((out / "val_split.json").read_text())["seed"] == 3


# ---------------------------------------------------------------- the arid_* recipes


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_is_the_reference_recipe(recipe, tmp_path):
    params = load_params(recipe)
    assert params.data.root == "data/ug2" and params.data.frames == 32 and params.data.crop == 224
    assert params.data.short_side == 224  # test: short side 224, then the centre (or 3) crops
    assert params.data.num_samples == 2 and params.data.randaugment == "rand-m7-n4-mstd0.5"
    assert (params.eval.views, params.eval.crops, params.eval.gamma, params.pseudo.gamma) == (1, 3, 0.25, 0.25)
    assert params.adapt_bn.num_batches == 200 and params.pseudo.rounds == 4
    expected = {  # label -> name, epochs, weight decay, drop path
        "uniformer_k600": ("uniformer_b", 20, 0.03, 0.3),
        "uniformer_ssv2": ("uniformer_b", 20, 0.03, 0.3),
        "mvit_k600": ("mvit_b", 20, 0.1, 0.3),
        "slowfast_k700": ("slowfast_r101", 40, 0.03, None),
    }
    for m in params.models:
        name, epochs, wd, drop_path = expected[m.label]
        t = params.train_for(m.label)
        assert (m.name, t.epochs, t.weight_decay, t.drop_path) == (name, epochs, wd, drop_path)
        assert (t.lr, t.warmup_epochs, t.mixup, t.cutmix, t.label_smoothing) == (1e-4, 10, 0.8, 1.0, 0.1)
        assert t.adapt_bn_every_epoch and params.train_for(m.label, pseudo=True).epochs == 30
        assert m.pretrained.startswith("checkpoints/")
        assert t.grad_checkpointing == (m.name != "mvit_b")
    out = io.StringIO()
    assert pipeline.run(recipe, [f"output_root={tmp_path}"], dry_run=True, out=out) == 0
    assert "dry run" in out.getvalue()


def test_arid_all_runs_the_four_models():
    params = load_params("params/arid_all.yaml")
    assert [m.label for m in params.models] == ["uniformer_k600", "uniformer_ssv2", "mvit_k600", "slowfast_k700"]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_models_build_and_a_missing_checkpoint_is_named(recipe, tmp_path):
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    params = load_params(recipe, [f"data.root={tmp_path}"])
    for m in params.models:
        with torch.device("meta"), pytest.raises(FileNotFoundError, match=m.pretrained):
            stages.build_model(params, m.label)  # the overrides are accepted, then the placeholder is missing
