"""Tables of the run's report that the notebooks show too."""

import math

from kit import report


def test_tta_frame_pivots_top1_by_gamma_and_views_x_crops():
    rows = [
        {"gamma": None, "views": 1, "crops": 1, "top1": 0.125},
        {"gamma": None, "views": 1, "crops": 3, "top1": 0.25},
        {"gamma": 0.25, "views": 1, "crops": 1, "top1": 0.6953125},
        {"gamma": 0.25, "views": 1, "crops": 3, "top1": 0.703125},
    ]
    df = report.tta_frame(rows)
    assert list(df.index) == ["0.25", "off"]
    assert list(df.columns) == [(1, 1), (1, 3)]
    assert df.loc["off", (1, 3)] == 0.25 and df.loc["0.25", (1, 1)] == 0.6953125
    assert report.tta_frame([]).empty


def test_gamma_label_names_off_whether_none_or_missing_in_a_frame():
    assert report.gamma_label(None) == "off" and report.gamma_label(math.nan) == "off"
    assert report.gamma_label(0.25) == "0.25" and report.gamma_label(1.0) == "1"
