import numpy as np
import pytest

from kit import submission
from kit.predictions import Predictions
from kit.submission import SubmissionError, read, write

PATHS = ["test/0.mp4", "test/1.mp4", "test/2.mp4"]
PROBS = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.05, 0.15, 0.8]])


def fused(kind="probs", scores=PROBS, paths=PATHS):
    return Predictions(paths=paths, labels=[-1] * len(paths), scores=scores, kind=kind)


def test_round_trip(tmp_path):
    out = write(fused(), tmp_path / "sub" / "submission.csv")
    lines = out.read_text().splitlines()
    assert lines[0] == "VideoID,Video,ClassID,Probability"
    assert lines[1] == "0,0.mp4,1,0.700000"
    assert "tensor" not in out.read_text()
    frame = read(out, expect_videos=PATHS, num_classes=3)
    assert frame["VideoID"].tolist() == [0, 1, 2]
    assert frame["Video"].tolist() == ["0.mp4", "1.mp4", "2.mp4"]
    assert frame["ClassID"].tolist() == [1, 0, 2]
    np.testing.assert_allclose(frame["Probability"], [0.7, 0.6, 0.8])


def test_logits_are_softmaxed_and_options(tmp_path):
    logits = np.log(PROBS)  # softmax(log p) = p
    out = write(fused("logits", logits), tmp_path / "s.csv", video="path", ids="stem")
    frame = read(out, expect_videos=PATHS, video="path", ids="stem")
    assert frame["Video"].tolist() == PATHS
    np.testing.assert_allclose(frame["Probability"], [0.7, 0.6, 0.8], atol=1e-6)
    stems = fused(paths=["test/10.mp4", "test/3.mp4", "test/7.mp4"])
    frame = read(write(stems, tmp_path / "t.csv", ids="stem"), ids="stem")
    assert frame["VideoID"].tolist() == [10, 3, 7]
    with pytest.raises(ValueError, match="numeric file names"):
        write(fused(paths=["a/x.mp4", "a/y.mp4", "a/z.mp4"]), tmp_path / "u.csv", ids="stem")
    with pytest.raises(ValueError, match="share a file name"):
        write(fused(paths=["a/0.mp4", "b/0.mp4", "c/1.mp4"]), tmp_path / "v.csv")


BODY = ["0,0.mp4,1,0.7", "1,1.mp4,0,0.6", "2,2.mp4,2,0.8"]


@pytest.mark.parametrize(
    "lines, message",
    [
        (["VideoID,Video,ClassID", *BODY], "line 1: header"),
        (["VideoID,Video,ClassID,Probability", BODY[0], "2,1.mp4,0,0.6", BODY[2]], "line 3: VideoID 2, expected 1"),
        (["VideoID,Video,ClassID,Probability", BODY[0], "1,1.mp4,3,0.6", BODY[2]], r"line 3: ClassID 3 out of range 0..2"),
        (["VideoID,Video,ClassID,Probability", BODY[0], BODY[1], "2,2.mp4,2,1.2"], r"line 4: Probability 1.2 is not in \[0, 1\]"),
        (["VideoID,Video,ClassID,Probability", '0,0.mp4,1,"tensor([[0.1, 0.7, 0.2]])"', *BODY[1:]], "line 2: Probability must be a plain number"),
        (["VideoID,Video,ClassID,Probability", BODY[0], "1,9.mp4,0,0.6", BODY[2]], r"line 3: row \(1, '9.mp4'\) but the test list has \(1, '1.mp4'\)"),
        (["VideoID,Video,ClassID,Probability", *BODY[:2]], "2 rows for 3 test clips"),
        (["VideoID,Video,ClassID,Probability", BODY[0], "1,1.mp4,0", BODY[2]], "line 3: expected 4 fields"),
        (["VideoID,Video,ClassID,Probability", *BODY, "3,3.mp4,0,0.5"], "line 5: more rows than the 3 test clips"),
    ],
)  # fmt: skip
def test_validation_errors_name_the_line(tmp_path, lines, message):
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SubmissionError, match=message):
        read(path, expect_videos=PATHS, num_classes=3)


def test_repeated_ids_with_stem_ids(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("VideoID,Video,ClassID,Probability\n5,5.mp4,0,0.5\n5,5.mp4,1,0.5\n")
    with pytest.raises(SubmissionError, match="line 3: VideoID 5 repeats line 2"):
        read(path, ids="stem")


def test_names_helpers():
    assert submission.video_names(["x/a.mp4"]) == ["a.mp4"]
    assert submission.video_ids(["x/a.mp4", "x/b.mp4"]) == [0, 1]
