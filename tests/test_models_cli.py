"""``python -m kit.models inspect``: a checkpoint checked against a model before a run."""

import torch

from kit.models import __main__ as cli
from kit.models import create_model


def test_inspect_reports_dropped_head(tmp_path, capsys):
    path = tmp_path / "k600.pth"
    torch.save(create_model("uniformer_tiny", num_classes=600).state_dict(), path)
    assert cli.main(["inspect", str(path), "--model", "uniformer_tiny", "--num-classes", "11"]) == 0
    out = capsys.readouterr().out
    assert "dropped 2 (head.weight, head.bias)" in out


def test_inspect_refuses_another_family(tmp_path, capsys):
    path = tmp_path / "k600.pth"
    torch.save(create_model("uniformer_tiny", num_classes=600).state_dict(), path)
    assert cli.main(["inspect", str(path), "--model", "slowfast_tiny"]) == 1
    assert "looks like a UniFormer checkpoint" in capsys.readouterr().err


def test_inspect_missing_file(tmp_path, capsys):
    assert cli.main(["inspect", str(tmp_path / "nope.pth"), "--model", "uniformer_tiny"]) == 1
    assert "nope.pth" in capsys.readouterr().err


def test_list(capsys):
    assert cli.main(["list"]) == 0
    assert "uniformer_b" in capsys.readouterr().out.split()
