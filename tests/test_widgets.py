"""kit.widgets.ConfusionInspector driven headless: clicks, pages, gamma and normalisation."""

import numpy as np
import pytest
from fixture_run import CLASSES, LABELS, PREDICTED, build_fixture_run

from kit import confusion
from kit.config import load_params
from kit.predictions import Predictions
from kit.widgets import (
    CLIP_CLASS,
    COLOR_LEVELS,
    GRID_MAX,
    SELECTED_COLOR,
    ConfusionInspector,
    FrameStrips,
    frames_table,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    fx = build_fixture_run(tmp_path_factory.mktemp("fixture"))
    return confusion.load_run(load_params(fx.params_file, base=fx.params_file), split="val")


def _inspector(run, **kw):
    return ConfusionInspector(run.sources, class_names=run.class_names, data_root=run.data_root, **kw)


def _cell(model_stage, true, predicted):
    return [f"val/clip{i:02d}.mp4" for i, (y, p) in enumerate(zip(LABELS, PREDICTED[model_stage], strict=True))
            if y == true and p == predicted]


def test_grid_shows_the_counts_of_the_chosen_source(run):
    ins = _inspector(run)
    assert ins.source == ("ensemble", "ensemble")  # the fused predictions come first
    ins.select_source("uni", "adapt_bn")
    cm = confusion.confusion_of(run.sources["uni", "adapt_bn"])
    shown = np.array([[int(ins.cell_button(i, j).description) for j in range(4)] for i in range(4)])
    np.testing.assert_array_equal(shown, cm)
    assert cm[0, 3] == 2  # Run -> Walk twice
    # colour follows the value: the busiest cell is darker than an empty one
    assert ins.cell_button(3, 3).style.button_color != ins.cell_button(0, 1).style.button_color
    assert "1 unlabelled" in ins.status.value


def test_click_lists_the_clips_and_every_models_probabilities(run):
    ins = _inspector(run)
    ins.select_source("uni", "adapt_bn")
    ins.cell_button(CLASSES.index("Run"), CLASSES.index("Walk")).click()
    assert ins.selected == (0, 3)
    assert sorted(ins.selected_clips) == _cell(("uni", "adapt_bn"), 0, 3) == ["val/clip00.mp4", "val/clip01.mp4"]
    rows = ins.clip_rows
    assert [r["path"] for r in rows] == ins.selected_clips
    for row in rows:
        assert (row["true"], row["predicted"], row["thumbnail"], row["error"]) == ("Run", "Walk", True, None)
        # every model at the shown stage, and the ensemble
        assert set(row["probs"]) == {"uni@adapt_bn", "sf@adapt_bn", "ensemble@ensemble"}
        for key, (p_true, p_pred) in row["probs"].items():
            preds = run.sources[tuple(key.split("@"))]
            k = preds.paths.index(row["path"])
            assert (p_true, p_pred) == pytest.approx((preds.probs()[k, 0], preds.probs()[k, 3]))
        assert row["probs"]["uni@adapt_bn"][1] > row["probs"]["uni@adapt_bn"][0]  # the shown model chose Walk
    confidence = [r["probs"]["uni@adapt_bn"][1] for r in rows]
    assert confidence == sorted(confidence, reverse=True)
    boxes = ins.clip_box.children
    assert len(boxes) == 2 and all(CLIP_CLASS in b._dom_classes for b in boxes)
    assert boxes[0].children[0].value[:8] == b"\x89PNG\r\n\x1a\n"  # the frame strip
    assert ins.cell_button(0, 3).style.button_color == SELECTED_COLOR  # the clicked cell stands out
    assert ins.cell_button(0, 2).style.button_color != SELECTED_COLOR


def test_switching_model_keeps_the_cell_and_updates_the_list(run):
    ins = _inspector(run)
    ins.select_source("uni", "adapt_bn")
    ins.cell_button(0, 3).click()
    ins.model_dropdown.value = "sf"
    assert ins.source == ("sf", "adapt_bn")  # same stage kept
    assert sorted(ins.selected_clips) == _cell(("sf", "adapt_bn"), 0, 3) == [
        "val/clip00.mp4", "val/clip01.mp4", "val/clip02.mp4"]
    ins.stage_dropdown.value = "pi2"
    assert sorted(ins.selected_clips) == _cell(("sf", "pi2"), 0, 3)
    assert set(ins.clip_rows[0]["probs"]) == {"uni@pi2", "sf@pi2", "ensemble@ensemble"}
    ins.model_dropdown.value = "ensemble"
    assert ins.stage_dropdown.options == ("ensemble",)
    with pytest.raises(KeyError, match="uni@pi1"):
        ins.select_source("uni", "pi1")


def test_normalisation_changes_the_cell_values(run):
    ins = _inspector(run)
    ins.select_source("uni", "adapt_bn")
    ins.set_normalize("true")
    assert ins.cell_button(0, 3).description == "0.67"  # 2 of 3 Run clips
    ins.set_normalize("pred")
    assert ins.cell_button(0, 3).description == "0.40"  # 2 of 5 clips predicted Walk
    np.testing.assert_allclose(ins.shown_values.sum(axis=0), 1.0)
    ins.set_normalize(None)
    assert ins.cell_button(0, 3).description == "2"
    assert ins.normalize_dropdown.label == "counts"  # a visible choice, not an empty dropdown
    ins.normalize_dropdown.value = "true"  # what a person picking "rows (recall)" does
    assert ins.cell_button(0, 3).description == "0.67"
    with pytest.raises(ValueError, match="normalize"):
        ins.set_normalize("rows")


def test_gamma_toggle_brightens_and_frames_are_decoded_once(run):
    ins = _inspector(run)
    ins.select_source("uni", "adapt_bn")
    ins.cell_button(0, 3).click()
    bright = ins.clip_box.children[0].children[0].value
    assert ins.strips.decoded == 2
    box = ins.clip_box.children[0]
    ins.set_gamma(False)
    assert ins.clip_box.children[0] is box  # pictures swapped in place, the list does not jump
    dark = box.children[0].value
    assert dark != bright
    assert ins.strips.decoded == 2  # the toggle re-encodes cached frames, no new decode
    from io import BytesIO

    from PIL import Image

    mean = [np.asarray(Image.open(BytesIO(v))).mean() for v in (dark, bright)]
    assert mean[1] > 3 * mean[0]  # gamma 0.25 lifts the nearly black frames
    ins.set_gamma(True)
    assert ins.clip_box.children[0].children[0].value == bright


def test_gamma_none_starts_with_raw_frames(run):
    ins = _inspector(run, gamma=None)
    assert not ins.gamma_toggle.value and ins.gamma == 0.25
    ins.select_source("uni", "adapt_bn")
    ins.cell_button(0, 3).click()
    raw = ins.clip_box.children[0].children[0].value
    ins.set_gamma(True)
    assert ins.clip_box.children[0].children[0].value != raw


def test_paging_through_a_large_cell(run):
    ins = _inspector(run, page_size=1)
    ins.select_source("sf", "adapt_bn")
    ins.cell_button(0, 3).click()  # three clips
    assert ins.num_pages == 3 and ins.page_label.value == "page 1 of 3" and ins.prev_button.disabled
    seen = [ins.clip_rows[0]["path"]]
    ins.next_button.click()
    seen.append(ins.clip_rows[0]["path"])
    ins.next_page()
    seen.append(ins.clip_rows[0]["path"])
    assert ins.next_button.disabled and ins.page == 2
    ins.next_page()  # past the end: stays
    assert ins.page == 2 and len(ins.clip_rows) == 1
    assert seen == ins.selected_clips
    ins.prev_button.click()
    assert ins.clip_rows[0]["path"] == seen[1]
    assert ins.strips.decoded == 3  # only clips that were shown got decoded


def test_probabilities_follow_the_clip_when_lists_differ_in_order(tmp_path):
    # model b's file lists the same clips in another order; each row must show that clip's numbers
    paths = ["x.mp4", "y.mp4"]
    a = Predictions(paths, [0, 0], [[0.2, 0.8], [0.4, 0.6]], kind="probs")
    b = Predictions(paths[::-1], [0, 0], [[0.3, 0.7], [0.1, 0.9]], kind="probs")
    ins = ConfusionInspector({("a", "pi1"): a, ("b", "pi1"): b}, class_names=["p", "q"], data_root=tmp_path)
    ins.select_source("a", "pi1")
    ins.cell_button(0, 1).click()
    rows = {r["path"]: r["probs"] for r in ins.clip_rows}
    assert rows["x.mp4"]["b@pi1"] == pytest.approx((0.1, 0.9)) and rows["y.mp4"]["b@pi1"] == pytest.approx((0.3, 0.7))
    assert rows["x.mp4"]["a@pi1"] == pytest.approx((0.2, 0.8))


def test_unreadable_clip_is_reported_not_raised(run, tmp_path):
    preds = Predictions(["missing.mp4"], [0], [[2.0, 0.0]])
    ins = ConfusionInspector({("m", "adapt_bn"): preds}, class_names=["a", "b"], data_root=tmp_path)
    ins.cell_button(0, 0).click()
    row = ins.clip_rows[0]
    assert not row["thumbnail"] and "file not found" in row["error"]


def test_constructor_rejects_bad_input(run):
    with pytest.raises(ValueError, match="at least one"):
        ConfusionInspector({}, class_names=CLASSES, data_root=run.data_root)
    with pytest.raises(ValueError, match="4 classes, class_names has 3"):
        ConfusionInspector(run.sources, class_names=CLASSES[:3], data_root=run.data_root)
    with pytest.raises(IndexError, match="outside"):
        _inspector(run).select(4, 0)


def test_many_classes_show_the_most_confused_on_a_grid_of_at_most_grid_max():
    k = 50
    labels = np.arange(100) % k
    predicted = labels.copy()
    predicted[[7, 8, 33]] = [40, 40, 2]  # confusions: 7 -> 40, 8 -> 40, 33 -> 2
    logits = np.eye(k, dtype=np.float32)[predicted] * 3
    names = [f"c{i}" for i in range(k)]
    ins = ConfusionInspector({("m", "pi1"): Predictions([f"{i}.mp4" for i in range(100)], labels, logits)},
                             class_names=names, data_root=".")
    assert len(ins._buttons) == GRID_MAX and len(ins.shown_classes) == GRID_MAX
    assert {2, 7, 8, 33, 40} <= set(ins.shown_classes)  # the confused classes are on the grid
    assert ins.cell_button(7, 40).description == "1" and "c7 -> c40: 1 clip(s)" in ins.cell_button(7, 40).tooltip
    assert "20 of 50 classes" in ins.status.value
    ins.cell_button(7, 40).click()
    assert ins.selected_clips == ["7.mp4"]
    ins.set_classes(["c33", 2, "c45"])
    assert ins.shown_classes == [2, 33, 45] and ins.classes_select.value == (2, 33, 45)
    assert ins.cell_button(33, 2).description == "1"
    assert ins._buttons[0][5].disabled and ins._buttons[0][5].description == ""  # unused positions blank
    with pytest.raises(KeyError, match="not on the grid"):
        ins.cell_button(7, 40)
    ins.classes_select.value = (7, 40)  # what picking in the list does
    assert ins.cell_button(7, 40).description == "1"
    with pytest.raises(ValueError, match="1 to 20"):
        ins.set_classes(range(21))
    # a few shared models, not three per cell (Jupyter drops messages past 1,000 a second)
    cells = [b for row in ins._buttons for b in row]
    assert len({id(b.layout) for b in cells}) == 1 and len({id(b.style) for b in cells}) <= 2 * (COLOR_LEVELS + 2)


def test_frame_strip_of_a_missing_file_names_it():
    with pytest.raises(Exception, match="file not found"):
        FrameStrips().png("/nonexistent.mp4", gamma=None)


def test_frames_table_inlines_a_strip_per_clip_for_static_reports(run):
    table = confusion.misclassified_by_pair(run.sources["uni", "adapt_bn"], run.class_names, top=1)
    table.loc[len(table)] = ["val/<gone>.mp4", "Run", "Walk", 0.1, 0.9]
    out = frames_table(table, data_root=run.data_root, gamma=0.25).data
    assert out.count("<img src='data:image/png;base64,") == 2  # the two Run -> Walk clips
    assert "val/clip00.mp4" in out and "file not found" in out and "val/&lt;gone&gt;.mp4" in out
    assert "frames (gamma 0.25)" in out
    with pytest.raises(KeyError, match="path"):
        frames_table(table.drop(columns="path"), data_root=run.data_root)
