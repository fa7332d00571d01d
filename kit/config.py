"""Parameters: layered YAML files checked strictly against a dataclass schema.

A run is described by ``params/base.yaml`` (defaults), then a run file (``params/demo.yaml``),
then ``--set a.b=c`` overrides, later layers winning. Loading fails at once, naming the key,
the file it came from and the expected type, on an unknown key, a missing required key or a
value of the wrong type: papermill only warns on unknown names, the kit must not.

Example::

    params = load_params("params/demo.yaml", overrides=["train.epochs=2"])
    params.train.lr, params.models[0].name
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import subprocess
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

log = logging.getLogger(__name__)

REQUIRED: Any = dataclasses.MISSING  # marker: a field without default is required


PROVENANCE_KEYS = ("kit_version", "git_commit")


class ParamsError(ValueError):
    """Bad parameters. The message names the key, the file and what was expected."""


# ---------------------------------------------------------------- schema


@dataclass
class DataConfig:
    root: str  # data directory: classes.txt + CSV lists (see kit.data)
    labeled: str = "labeled.csv"  # normal-light labelled clips (source domain)
    unlabeled: str = "unlabeled.csv"  # dark unlabelled pool: Adapt BN and pseudo labels
    val: str | None = "val.csv"  # labelled dark clips held out from adaptation (clean protocol)
    test: str | None = "test.csv"  # dark test clips (labels if known, else -1)
    synthetic: bool = False  # generate the synthetic data set into `root` when it is missing
    synthetic_clips_per_class: int = 40  # labelled clips per class of the synthetic set
    synthetic_seed: int = 0
    synthetic_size: int = 64  # frame side of the synthetic clips, pixels
    synthetic_frames: int = 48  # frames per synthetic clip
    frames: int = 32  # frames per clip fed to the model
    sampling: Literal["uniform", "dense"] = "uniform"  # TSN-style segments, or a dense window
    stride: int = 2  # frame step of dense sampling
    crop: int = 224  # model input side, pixels
    short_side: int | None = None  # eval resize of the short side (>= crop); None = crop * 8 / 7
    train_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop area
    hflip: float = 0.5  # horizontal flip probability in training
    randaugment: str | None = "rand-m7-n4-mstd0.5"  # timm RandAugment spec, None = off
    random_erasing: float = 0.25  # probability of random erasing in training
    num_samples: int = 1  # augmented samples per video per step (the reference used 2)
    chunk_frames: int | None = None  # training: frames taken through crop, flip and RandAugment at a time
    mean: list[float] = field(default_factory=lambda: [0.45, 0.45, 0.45])
    std: list[float] = field(default_factory=lambda: [0.225, 0.225, 0.225])
    num_workers: int = 2  # DataLoader workers
    # workers of the loaders that only evaluate (validation, predictions, TTA, Adapt BN), None = num_workers;
    # they draw nothing random and their batches come in order, so the value changes no result
    eval_num_workers: int | None = None
    skip_bad_videos: bool = False  # log and skip undecodable clips instead of failing


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 8  # clips per process and step
    lr: float = 1e-4  # peak learning rate (AdamW)
    warmup_epochs: float = 10  # linear warmup from warmup_lr, then cosine to min_lr
    warmup_lr: float = 1e-6
    min_lr: float = 1e-6
    weight_decay: float = 0.05  # not applied to biases, 1-D and norm parameters
    opt_eps: float = 1e-8
    clip_grad: float | None = 5.0  # max gradient norm, None = off
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"  # float16 (GPUs without bf16) adds a GradScaler
    label_smoothing: float = 0.1
    mixup: float = 0.0  # mixup alpha (timm), 0 = off
    cutmix: float = 0.0  # cutmix alpha (timm), 0 = off
    drop_path: float | None = None  # stochastic depth rate; None = the model's default
    grad_checkpointing: bool = False  # trade compute for memory where the model offers it
    resume: Literal["auto", "never"] = "auto"  # continue from checkpoint.pth when present
    metric: Literal["top1", "mean_class_acc", "loss"] = "top1"  # chooses best.pth
    val_every: int = 1  # epochs between evaluations on val (the last epoch is always evaluated)
    adapt_bn_every_epoch: bool = False  # Adapt BN on the dark pool after each epoch (reference)
    log_every: int = 10  # iterations between progress-bar refreshes of the loss


@dataclass
class AdaptBNConfig:
    enabled: bool = True
    num_batches: int = 200  # at most this many batches of the unlabelled dark pool
    batch_size: int = 8
    gamma: float | None = 0.25  # gamma correction on the adaptation clips, None = off


@dataclass
class EvalConfig:
    views: int = 1  # temporal views per clip
    crops: int = 1  # spatial crops per view (1 = centre, 3 = left/centre/right)
    gamma: float | None = 0.25  # gamma at evaluation, None = off
    batch_size: int = 8
    tta_table: bool = True  # also measure gamma off/on x views x crops (the paper's TTA table)
    tta_views: list[int] = field(default_factory=lambda: [1, 3])
    tta_crops: list[int] = field(default_factory=lambda: [1, 3])


@dataclass
class ThresholdConfig:
    strategy: Literal["fixed", "precision", "quantile", "none"] = "quantile"
    value: Any = None  # fixed: a number or a per-class list; quantile: fraction kept per round
    per_round: list[Any] | None = None  # value for round 1..R (overrides `value`)
    target_precision: float = 0.9  # precision strategy: per-class precision target on val
    min_count: int = 1  # precision strategy: the threshold must keep at least this many val clips


@dataclass
class PseudoConfig:
    rounds: int = 4
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    mode: Literal["alternate", "mixed"] = "alternate"  # one labelled + one pseudo step, or mixed batches
    loss_weight: float = 1.0  # weight of the pseudo-labelled loss
    soft_targets: bool = False  # train on fused probabilities instead of hard labels
    views: int = 1  # views x crops when predicting the pool
    crops: int = 1
    gamma: float | None = 0.25
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides for the rounds


@dataclass
class EnsembleConfig:
    weights: Literal["fit", "equal"] | list[float] = "fit"  # fit on val, equal, or given
    objective: Literal["accuracy", "nll"] = "nll"
    space: Literal["prob", "logit"] = "prob"
    temperature: bool = False  # per-model temperature scaling fitted on val
    class_bias: bool = False  # per-class log-prior correction fitted on val (kit.ensemble.fit_class_bias)
    submission: bool = True  # write the challenge CSV for the test list
    submission_video: Literal["name", "path"] = "name"  # Video column: file name (challenge) or list path
    submission_ids: Literal["index", "stem"] = "index"  # VideoID: row index, or numeric file-name stem


@dataclass
class ModelConfig:
    name: str  # registered model name (kit.models.list_models())
    key: str | None = None  # short label in outputs; defaults to name
    pretrained: str | None = None  # checkpoint to start from, None = random init
    overrides: dict[str, Any] = field(default_factory=dict)  # create_model keyword overrides
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides for this model

    @property
    def label(self) -> str:
        return self.key or self.name


@dataclass
class Params:
    run: str  # run name: outputs go to <output_root>/<run>/
    data: DataConfig
    models: list[ModelConfig]
    output_root: str = "outputs"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    protocol: Literal["clean", "transductive"] = "clean"
    nproc_per_node: int = 1  # > 1 launches training stages under torchrun
    threads: int | None = None  # torch CPU threads, None = torch's default
    # models in channels-last-3d memory (NDHWC): on the CPU, oneDNN's depthwise 3-D convolutions
    # (UniFormer's) train much faster in it (uniformer_tiny: 1.6x the clips/s of a training step,
    # bench/models.py --channels-last); the input batches are converted by the first convolution
    channels_last: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)
    adapt_bn: AdaptBNConfig = field(default_factory=AdaptBNConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)

    @property
    def out_dir(self) -> Path:
        return Path(self.output_root) / self.run

    def model(self, label: str) -> ModelConfig:
        for m in self.models:
            if m.label == label:
                return m
        raise ParamsError(f"no model {label!r} in params.models ({[m.label for m in self.models]})")

    def train_for(self, label: str, *, pseudo: bool = False) -> TrainConfig:
        """The training recipe of one model: ``train``, then the model's, then the rounds' overrides."""
        merged = dataclasses.asdict(self.train)
        merged.update(self.model(label).train)
        if pseudo:
            merged.update(self.pseudo.train)
        return _build(TrainConfig, merged, "train", {})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- strict building


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        args = typing.get_args(tp)
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]" if args else origin.__name__
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def _where(key: str, sources: dict[str, str]) -> str:
    # the longest prefix of `key` that some layer set tells which file the value came from
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        src = sources.get(".".join(parts[:i]))
        if src:
            return src
    return "defaults"


def _coerce(value, tp, key: str, sources: dict[str, str]):
    origin = typing.get_origin(tp)
    fail = ParamsError(
        f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__}) in {_where(key, sources)}"
    )
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key, sources)
            except ParamsError as exc:
                errors.append(exc)
        raise fail
    if tp is type(None):
        if value is None:
            return None
        raise fail
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise fail
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail
        return _build(tp, value, key, sources)
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise fail
        (arg,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, arg, f"{key}[{i}]", sources) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise fail
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise fail
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail
    raise ParamsError(f"{key}: unsupported schema type {tp}")


def _build(cls, data: dict, prefix: str, sources: dict[str, str]):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            full = f"{prefix}.{k}" if prefix else k
            close = [n for n in fields if n.lower().replace("_", "") == str(k).lower().replace("_", "")]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ParamsError(
                f"unknown key {full!r} in {_where(full, sources)}{hint}; "
                f"{cls.__name__} takes: {', '.join(fields)}"
            )
    kwargs = {}
    for name, f in fields.items():
        full = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], full, sources)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ParamsError(f"missing required key {full!r} ({_type_name(hints[name])}); no layer sets it")
    return cls(**kwargs)


# ---------------------------------------------------------------- layering


def _merge(base: dict, layer: dict, source: str, sources: dict[str, str], prefix: str = "") -> dict:
    out = dict(base)
    for k, v in layer.items():
        full = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and isinstance(out.get(k), dict) and v:
            out[k] = _merge(out[k], v, source, sources, full)
        else:
            out[k] = v
            sources[full] = source
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-3"`` -> ``(["train", "lr"], 0.001)``; the value is read as YAML."""
    if "=" not in text:
        raise ParamsError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ParamsError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ParamsError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    # YAML 1.1 reads 1e-3 as a string; a research kit's users write it all the time
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in "e.") else value
        except ValueError:
            pass
    return key.split("."), value


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ParamsError(f"params file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _fix_floats(obj):
    # PyYAML (YAML 1.1) leaves '1e-4' as a string; treat scientific notation as the float it means
    if isinstance(obj, dict):
        return {k: _fix_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fix_floats(v) for v in obj]
    if isinstance(obj, str):
        s = obj.strip().lower()
        if s and s[0] in "+-0123456789." and "e" in s:
            try:
                return float(s)
            except ValueError:
                return obj
    return obj


def resolve_layers(run_file=None, overrides=(), *, base: str | Path | None = None) -> tuple[dict, dict]:
    """Merge base, run file and overrides into one dict; also return key -> source file."""
    sources: dict[str, str] = {}
    merged: dict = {}
    files: list[Path] = []
    if base is None and run_file is not None:
        candidate = Path(run_file).parent / "base.yaml"
        base = candidate if candidate.exists() else None
    if base is not None:
        files.append(Path(base))
    if run_file is not None and (base is None or Path(run_file).resolve() != Path(base).resolve()):
        files.append(Path(run_file))
    for f in files:
        data = _read_yaml(f)
        for key in PROVENANCE_KEYS:  # written by save_params, not parameters
            data.pop(key, None)
        merged = _merge(merged, _fix_floats(data), str(f), sources)
    for text in overrides:
        keys, value = parse_override(text)
        layer: dict = {}
        cur = layer
        for k in keys[:-1]:
            cur = cur.setdefault(k, {})
        cur[keys[-1]] = value
        merged = _merge(merged, layer, f"--set {text}", sources)
    return merged, sources


def load_params(run_file=None, overrides=(), *, base: str | Path | None = None) -> Params:
    """Load and validate parameters; raises :class:`ParamsError` naming the key and file at fault."""
    merged, sources = resolve_layers(run_file, overrides, base=base)
    params = _build(Params, merged, "", sources)
    _check_values(params)
    return params


def params_from_dict(data: dict, *, source: str = "notebook parameters") -> Params:
    """Validate an already merged dict (e.g. papermill-injected parameters)."""
    sources = {k: source for k in data}
    params = _build(Params, _fix_floats(data), "", sources)
    _check_values(params)
    return params


def _check_values(p: Params) -> None:
    # value checks the types cannot express
    def positive(key, v):
        if v is not None and v <= 0:
            raise ParamsError(f"{key} must be > 0, got {v}")

    for key, v in [
        ("data.frames", p.data.frames), ("data.crop", p.data.crop), ("train.epochs", p.train.epochs),
        ("train.batch_size", p.train.batch_size), ("train.lr", p.train.lr), ("eval.views", p.eval.views),
        ("train.val_every", p.train.val_every),
        ("eval.crops", p.eval.crops), ("pseudo.views", p.pseudo.views), ("data.num_samples", p.data.num_samples),
        ("adapt_bn.num_batches", p.adapt_bn.num_batches), ("nproc_per_node", p.nproc_per_node),
        ("data.chunk_frames", p.data.chunk_frames),
    ]:
        positive(key, v)
    for key, v in [("data.num_workers", p.data.num_workers), ("data.eval_num_workers", p.data.eval_num_workers)]:
        if v is not None and v < 0:
            raise ParamsError(f"{key} must be >= 0, got {v}")
    if p.data.short_side is not None and p.data.short_side < p.data.crop:
        raise ParamsError(
            f"data.short_side {p.data.short_side} is smaller than data.crop {p.data.crop}: "
            "the evaluation crop must fit in the resized frame"
        )
    for key, c in [("eval.crops", p.eval.crops), ("pseudo.crops", p.pseudo.crops)]:
        if c not in (1, 3):
            raise ParamsError(f"{key} must be 1 (centre) or 3 (left/centre/right), got {c}")
    if p.pseudo.rounds < 0:
        raise ParamsError(f"pseudo.rounds must be >= 0, got {p.pseudo.rounds}")
    if not p.models:
        raise ParamsError("models: at least one model is needed")
    labels = [m.label for m in p.models]
    if len(set(labels)) != len(labels):
        raise ParamsError(f"models: labels must be unique, got {labels} (set `key` to tell them apart)")
    for m in p.models:
        for section, extra in (("train", m.train),):
            _build(TrainConfig, {**dataclasses.asdict(p.train), **extra}, f"models[{m.label}].{section}", {})
    _build(TrainConfig, {**dataclasses.asdict(p.train), **p.pseudo.train}, "pseudo.train", {})
    if isinstance(p.ensemble.weights, list) and len(p.ensemble.weights) != len(p.models):
        raise ParamsError(
            f"ensemble.weights has {len(p.ensemble.weights)} numbers for {len(p.models)} models"
        )


# ---------------------------------------------------------------- provenance


def params_hash(data: dict) -> str:
    """A short stable hash of resolved parameters (stage done-markers use it)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_commit(cwd=None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if out.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def save_params(params: Params, path) -> Path:
    """Write resolved parameters with the kit version and git commit."""
    from kit import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"kit_version": __version__, "git_commit": git_commit(), **params.to_dict()}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def read_saved_params(path) -> Params:
    """Read a ``params.yaml`` written by :func:`save_params`."""
    return load_params(path, base=path)
