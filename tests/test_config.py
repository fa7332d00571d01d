"""Strict, layered parameters: unknown keys, wrong types, missing keys, overrides, layering order."""

import textwrap

import pytest
import yaml

from kit.config import ParamsError, load_params, parse_override, read_saved_params, save_params


@pytest.fixture
def params_dir(tmp_path):
    (tmp_path / "base.yaml").write_text(
        textwrap.dedent(
            """
            seed: 1
            train:
              lr: 1.0e-4
              epochs: 20
            eval:
              gamma: 0.25
            """
        )
    )
    (tmp_path / "run.yaml").write_text(
        textwrap.dedent(
            """
            run: r1
            data: {root: data/x}
            models:
              - {name: uniformer_tiny, key: uni, train: {epochs: 3}}
            train:
              epochs: 5
            """
        )
    )
    return tmp_path


def test_layering_order_base_then_run_then_set(params_dir):
    p = load_params(params_dir / "run.yaml", ["train.lr=2e-3"])
    assert p.seed == 1  # from base
    assert p.train.epochs == 5  # run file beats base
    assert p.train.lr == pytest.approx(2e-3)  # --set beats both
    assert p.eval.gamma == 0.25
    assert p.train_for("uni").epochs == 3  # per-model override beats train
    assert p.train_for("uni", pseudo=True).lr == pytest.approx(2e-3)


def test_unknown_key_names_key_and_file(params_dir):
    (params_dir / "run.yaml").write_text(
        (params_dir / "run.yaml").read_text() + "eval:\n  veiws: 3\n"
    )
    with pytest.raises(ParamsError) as err:
        load_params(params_dir / "run.yaml")
    msg = str(err.value)
    assert "eval.veiws" in msg and "run.yaml" in msg and "views" in msg


def test_unknown_key_from_override(params_dir):
    with pytest.raises(ParamsError, match=r"train\.lrr.*--set train\.lrr=1"):
        load_params(params_dir / "run.yaml", ["train.lrr=1"])


def test_wrong_type_names_expected_type(params_dir):
    with pytest.raises(ParamsError) as err:
        load_params(params_dir / "run.yaml", ["train.epochs=many"])
    assert "train.epochs" in str(err.value) and "expected int" in str(err.value)
    with pytest.raises(ParamsError, match="expected bool"):
        load_params(params_dir / "run.yaml", ["train.amp=3"])
    with pytest.raises(ParamsError, match="one of 'clean', 'transductive'"):
        load_params(params_dir / "run.yaml", ["protocol=sideways"])


def test_wrong_type_in_base_names_base(params_dir):
    (params_dir / "base.yaml").write_text("seed: [1, 2]\n")
    with pytest.raises(ParamsError, match=r"seed.*base\.yaml"):
        load_params(params_dir / "run.yaml")


def test_missing_required_key(params_dir):
    (params_dir / "run.yaml").write_text("run: r1\nmodels: [{name: m}]\n")
    with pytest.raises(ParamsError, match=r"missing required key 'data'"):
        load_params(params_dir / "run.yaml")
    (params_dir / "run.yaml").write_text("run: r1\ndata: {frames: 8}\nmodels: [{name: m}]\n")
    with pytest.raises(ParamsError, match=r"missing required key 'data.root'"):
        load_params(params_dir / "run.yaml")


def test_bad_per_model_train_key(params_dir):
    with pytest.raises(ParamsError, match=r"models\[uni\]\.train\.epoch"):
        load_params(params_dir / "run.yaml", ["models=[{name: uniformer_tiny, key: uni, train: {epoch: 3}}]"])


def test_value_checks(params_dir):
    with pytest.raises(ParamsError, match="eval.crops"):
        load_params(params_dir / "run.yaml", ["eval.crops=2"])
    with pytest.raises(ParamsError, match=r"train\.val_every must be > 0, got 0"):
        load_params(params_dir / "run.yaml", ["train.val_every=0"])
    with pytest.raises(ParamsError, match=r"data\.chunk_frames must be > 0, got 0"):
        load_params(params_dir / "run.yaml", ["data.chunk_frames=0"])
    for key in ("data.num_workers", "data.eval_num_workers"):
        with pytest.raises(ParamsError, match=rf"{key} must be >= 0, got -1"):
            load_params(params_dir / "run.yaml", [f"{key}=-1"])
    assert load_params(params_dir / "run.yaml", ["data.num_workers=0"]).data.eval_num_workers is None
    with pytest.raises(ParamsError, match="unique"):
        load_params(params_dir / "run.yaml", ["models=[{name: a}, {name: a}]"])
    with pytest.raises(ParamsError, match=r"data\.short_side 40 is smaller than data\.crop 48"):
        load_params(params_dir / "run.yaml", ["data.crop=48", "data.short_side=40"])


def test_override_parsing():
    assert parse_override("train.lr=1e-3") == (["train", "lr"], 0.001)
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("x=null") == (["x"], None)
    assert parse_override("x=true") == (["x"], True)
    assert parse_override("name=uniformer_b") == (["name"], "uniformer_b")
    with pytest.raises(ParamsError):
        parse_override("no_equals_sign")
    with pytest.raises(ParamsError):
        parse_override("a..b=1")


def test_scientific_notation_in_yaml_is_a_float(params_dir):
    (params_dir / "run.yaml").write_text((params_dir / "run.yaml").read_text() + "  lr: 3e-4\n")
    assert load_params(params_dir / "run.yaml").train.lr == pytest.approx(3e-4)


def test_saved_params_round_trip(params_dir, tmp_path):
    p = load_params(params_dir / "run.yaml", ["seed=7"])
    out = save_params(p, tmp_path / "out" / "params.yaml")
    doc = yaml.safe_load(out.read_text())
    assert doc["kit_version"] and "git_commit" in doc
    again = read_saved_params(out)
    assert again == p


def test_missing_file():
    with pytest.raises(ParamsError, match="not found"):
        load_params("does/not/exist.yaml")
