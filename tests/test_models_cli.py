"""``python -m kit.models inspect``: a checkpoint checked against a model before a run."""

from pathlib import Path

import torch

from kit.models import __main__ as cli
from kit.models import create_model

FIXTURES = Path(__file__).parent / "fixtures"


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


def _official_layout(tsv, head_classes):
    """A state dict with an official checkpoint's keys and shapes (random values), head resized."""
    sd = {}
    for line in (FIXTURES / tsv).read_text().splitlines():
        key, shape = line.split("\t")
        if shape == "scalar":
            sd[key] = torch.tensor(0)
            continue
        dims = [int(d) for d in shape.split("x")]
        if key.startswith("head") and dims[0] == 11:
            dims[0] = head_classes
        sd[key] = torch.zeros(dims)
    return sd


def test_official_checkpoint_layouts_load_with_their_head_dropped(tmp_path, capsys):
    # the reports quoted in the README's checkpoint table
    cases = [
        ("uniformer_b_keys.tsv", 600, None, "uniformer_b", "loaded 685; dropped 2 (head.weight, head.bias)"),
        ("pyslowfast_mvit_b32_keys.tsv", 600, "model_state", "mvit_b",
         "loaded 437; dropped 2 (head.1.weight, head.1.bias); converted from pyslowfast_mvit"),
        ("pyslowfast_slowfast_r101_keys.tsv", 700, "model_state", "slowfast_r101",
         "loaded 1272; dropped 2 (head.projection.weight, head.projection.bias)"),
    ]
    for tsv, classes, wrap, model, expected in cases:
        sd = _official_layout(tsv, classes)
        path = tmp_path / f"{model}.pth"
        torch.save({wrap: sd} if wrap else sd, path)
        assert cli.main(["inspect", str(path), "--model", model]) == 0
        assert expected in capsys.readouterr().out
