"""The stages of the method, one function each; the notebooks call these.

Each stage of one model leaves, under ``RunLayout.model_dir(model, stage)``:
``final.pth`` (the weights the next stage starts from), ``results.json`` (its numbers) and,
for training stages, ``checkpoint.pth``/``best.pth``/``metrics.jsonl``. Predictions go to
``RunLayout.predictions(model, stage, split)``.

Run one stage from a shell (``torchrun`` for several GPUs)::

    python -m kit.stages supervised --params outputs/demo/params.yaml --model uniformer
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from kit import distributed as dist
from kit.config import Params, read_saved_params, save_params
from kit.layout import ENSEMBLE, RunLayout, stage_name

log = logging.getLogger(__name__)

STAGES = ("supervised", "adapt_bn", "pseudo", "ensemble")


# ---------------------------------------------------------------- shared pieces


def resolve_device(params: Params) -> torch.device:
    """``auto`` takes CUDA when present (the local rank's GPU under torchrun), else the CPU."""
    if params.device == "cpu" or (params.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("params.device is 'cuda' but no CUDA device is available")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def setup(params: Params) -> torch.device:
    """Seed, set CPU threads, make sure the data exists; return the device."""
    if params.threads:
        torch.set_num_threads(params.threads)
    torch.manual_seed(params.seed)
    np.random.seed(params.seed)
    ensure_data(params)
    return resolve_device(params)


def ensure_data(params: Params) -> Path:
    """The data directory; generated first when ``data.synthetic`` and it is missing."""
    from kit import data

    root = Path(params.data.root)
    missing = not (root / "classes.txt").exists()
    if missing and not params.data.synthetic:
        raise FileNotFoundError(
            f"data.root {root} has no classes.txt: point data.root at a data directory "
            "(see README, 'Real data') or set data.synthetic: true"
        )
    if params.data.synthetic:
        from kit import synth

        d = params.data
        settings = dict(
            clips_per_class=d.synthetic_clips_per_class, seed=d.synthetic_seed,
            size=d.synthetic_size, frames=d.synthetic_frames,
        )
        why = None if missing else synth.stale(root, **settings)
        if (missing or why) and dist.is_main():
            if why:  # the kit's own generated set, written by another version or recipe
                log.warning("regenerating the synthetic data set: %s", why)
            else:
                log.info("generating the synthetic dark data set in %s", root)
            synth.regenerate(root, **settings)
        dist.barrier()
    data.read_classes(root)
    return root


def num_classes(params: Params) -> int:
    from kit import data

    return len(data.read_classes(params.data.root))


def build_model(params: Params, label: str, *, pseudo: bool = False):
    """Create a model of the params (with drop path from its recipe, in channels-last-3d memory with
    ``params.channels_last``) and load its pretrained weights."""
    from kit.models import create_model, load_pretrained

    m = params.model(label)
    overrides = dict(m.overrides)
    recipe = params.train_for(label, pseudo=pseudo)
    if recipe.drop_path is not None:
        overrides.setdefault("drop_path_rate", recipe.drop_path)
    model = create_model(m.name, num_classes=num_classes(params), **overrides)
    if params.channels_last:
        # every 5-D weight in NDHWC order; a convolution given NCDHW input computes in the layout of
        # its weight, and the weights loaded below are copied into these tensors, keeping it
        model.to(memory_format=torch.channels_last_3d)
    if m.pretrained:
        report = load_pretrained(model, m.pretrained)
        log.info("%s: loaded %s (%s)", label, m.pretrained, report)
    return model


def load_weights(model, path) -> None:
    from kit.models import load_pretrained

    load_pretrained(model, path)


def save_weights(model, path) -> Path:
    """Write ``{"model": state_dict}`` atomically (rank 0 only)."""
    from kit.engine import atomic_save

    path = Path(path)
    if dist.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save({"model": dist.unwrap(model).state_dict()}, path)
    dist.barrier()
    return path


def _loader(params: Params, split: str, *, train: bool, gamma, views=1, crops=1, batch_size=None):
    from kit import data

    ds = data.build_dataset(params, split, train=train, gamma=gamma, views=views, crops=crops)
    return data.build_loader(
        ds,
        batch_size=batch_size or (params.train.batch_size if train else params.eval.batch_size),
        train=train,
        num_workers=params.data.num_workers if train or params.data.eval_num_workers is None
        else params.data.eval_num_workers,
        seed=params.seed,
        device=resolve_device(params),
    )


def eval_splits(params: Params, *, pool: bool = False) -> list[str]:
    """Lists a stage predicts: val and test (when configured), and the unlabelled pool with ``pool``."""
    splits = [s for s, f in (("val", params.data.val), ("test", params.data.test)) if f]
    return splits + (["unlabeled"] if pool else [])


def feeds_a_round(params: Params, stage: str) -> bool:
    """Whether the next pseudo-label round selects from this stage's pool predictions."""
    following = {"adapt_bn": 1, **{stage_name("pseudo", r): r + 1 for r in range(1, params.pseudo.rounds)}}
    return following.get(stage, params.pseudo.rounds + 1) <= params.pseudo.rounds


def _labelled(preds) -> bool:
    return bool((preds.labels >= 0).any())


def evaluate_and_predict(params: Params, model, label: str, stage: str, device) -> dict:
    """Predict every split with the eval recipe (views x crops, gamma); save predictions; top-1 where labelled."""
    from kit import engine

    layout = RunLayout(params.out_dir)
    results = {}
    # the pool is predicted only where a later round selects from it
    for split in eval_splits(params, pool=feeds_a_round(params, stage)):
        views, crops, gamma = params.eval.views, params.eval.crops, params.eval.gamma
        if split == "unlabeled":  # the pool is predicted as pseudo-labelling wants it
            views, crops, gamma = params.pseudo.views, params.pseudo.crops, params.pseudo.gamma
        loader = _loader(params, split, train=False, gamma=gamma, views=views, crops=crops)
        preds = engine.predict(model, loader, device=device)
        preds.meta.update(model=label, stage=stage, split=split, views=views, crops=crops, gamma=gamma)
        if split == "test":
            preds = _with_hidden_test_labels(params, preds)
        if dist.is_main():
            preds.save(layout.predictions(label, stage, split))
            if _labelled(preds):
                results[split] = _metrics(preds)
    return results


def _with_hidden_test_labels(params: Params, preds):
    """Test clips without list labels take those of ``hidden_labels.csv`` where the data set has them.

    The synthetic set knows its test labels: the report can then show held-out test accuracy
    (ensemble weights are fitted on val, so val accuracy of the ensemble is optimistic).
    Training never reads them; the pool's hidden labels serve the pseudo-label report only.
    """
    from kit import pseudo

    if (preds.labels >= 0).any():
        return preds
    hidden = pseudo.read_hidden_labels(params.data.root)
    if hidden and all(p in hidden for p in preds.paths):
        preds.labels = np.array([hidden[p] for p in preds.paths], dtype=np.int64)
        preds.meta["labels_from"] = pseudo.HIDDEN_LABELS
    return preds


def _metrics(preds) -> dict:
    """top-1, top-5, mean class accuracy and count of the labelled clips (JSON-ready)."""
    from kit.engine import classification_metrics

    m = classification_metrics(preds.scores, preds.labels, num_classes=preds.num_classes)
    return {k: m[k] for k in ("top1", "top5", "mean_class_acc", "n")}


def write_results(params: Params, label: str, stage: str, results: dict) -> Path:
    path = RunLayout(params.out_dir).model_dir(label, stage) / "results.json"
    if dist.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"model": label, "stage": stage, **results}, indent=2, default=float))
    return path


def read_results(params: Params, label: str, stage: str) -> dict | None:
    path = RunLayout(params.out_dir).model_dir(label, stage) / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def previous_stage(round: int) -> str:
    """The stage pseudo-label round ``round`` starts from: Adapt BN for round 1, else round - 1."""
    return "adapt_bn" if round == 1 else stage_name("pseudo", round - 1)


# ---------------------------------------------------------------- 1. supervised fine-tuning


def supervised(params: Params, label: str) -> dict:
    """Fine-tune one model on the labelled normal-light clips; evaluate it on the dark lists."""
    from kit import engine

    device = setup(params)
    layout = RunLayout(params.out_dir)
    out = layout.model_dir(label, "supervised")
    recipe = params.train_for(label)
    model = build_model(params, label)
    # normal-light training clips: no gamma; model selection on dark val with the eval recipe
    train_loader = _loader(params, "labeled", train=True, gamma=None, batch_size=recipe.batch_size)
    val_loader = _loader(params, "val", train=False, gamma=params.eval.gamma) if params.data.val else None
    adapt_loader = _adapt_loader(params) if recipe.adapt_bn_every_epoch else None
    t0 = time.time()
    history = engine.fit(
        model, train_loader, val_loader=val_loader, params=recipe, out_dir=out, device=device,
        adapt_loader=adapt_loader, adapt_params=params.adapt_bn, num_classes=num_classes(params),
    )
    load_weights(model, out / "best.pth")
    save_weights(model, out / "final.pth")
    results = evaluate_and_predict(params, model, label, "supervised", device)
    results["train_seconds"] = time.time() - t0
    results["history"] = _history_rows(history)
    write_results(params, label, "supervised", results)
    return results


def _history_rows(summary):
    return list(summary.history)


def _adapt_loader(params: Params):
    return _loader(
        params, "unlabeled", train=False, gamma=params.adapt_bn.gamma, batch_size=params.adapt_bn.batch_size
    )


# ---------------------------------------------------------------- 2. Adapt BN


def adapt(params: Params, label: str) -> dict:
    """Re-estimate BatchNorm statistics of the supervised model on the dark pool; evaluate; TTA table."""
    from kit import engine
    from kit.adapt_bn import adapt_bn

    device = setup(params)
    layout = RunLayout(params.out_dir)
    model = build_model(params, label)
    load_weights(model, layout.model_dir(label, "supervised") / "final.pth")
    model.to(device)
    report = None
    if params.adapt_bn.enabled:
        report = adapt_bn(model, _adapt_loader(params), num_batches=params.adapt_bn.num_batches, device=device)
    save_weights(model, layout.model_dir(label, "adapt_bn") / "final.pth")
    results = evaluate_and_predict(params, model, label, "adapt_bn", device)
    results["adapt_bn"] = _report_dict(report)
    if params.eval.tta_table and params.data.val:
        results["tta"] = tta_table(params, model, device, engine)
    write_results(params, label, "adapt_bn", results)
    return results


def _report_dict(report):
    if report is None:
        return {"enabled": False}
    if hasattr(report, "to_dict"):
        return report.to_dict()
    import dataclasses

    return dataclasses.asdict(report) if dataclasses.is_dataclass(report) else dict(report)


def tta_table(params: Params, model, device, engine) -> list[dict]:
    """top-1 on val for gamma off/on x views x crops (the paper's TTA table)."""
    rows = []
    for gamma in (None, params.eval.gamma or 0.25):
        for views in params.eval.tta_views:
            for crops in params.eval.tta_crops:
                loader = _loader(params, "val", train=False, gamma=gamma, views=views, crops=crops)
                preds = engine.predict(model, loader, device=device)
                if dist.is_main():
                    rows.append({"gamma": gamma, "views": views, "crops": crops, **_metrics(preds)})
    return rows


# ---------------------------------------------------------------- 3. pseudo-label rounds


def select_pseudo(params: Params, round: int) -> dict:
    """Fuse every model's pool predictions of the previous stage, pick pseudo labels, write the list.

    Runs once per round (the first model's notebook does it; the others read it back).
    """
    from kit import data, ensemble, pseudo
    from kit.predictions import Predictions

    layout = RunLayout(params.out_dir)
    out = layout.pseudo_dir(round)
    report_path = out / "selection.json"
    if report_path.exists():
        return json.loads(report_path.read_text())
    prev = previous_stage(round)
    labels = [m.label for m in params.models]

    def fused(split):
        files = [layout.predictions(m, prev, split) for m in labels]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(f"round {round} needs every model's {prev} predictions; missing: {missing}")
        return ensemble.fuse(files, space="prob")

    pool = fused("unlabeled")
    val = fused("val") if params.data.val else None
    if params.protocol == "transductive":
        # evaluation clips join the pool, as in the challenge (each clip once)
        parts = [pool] + ([val] if val is not None else []) + ([fused("test")] if params.data.test else [])
        seen, rows = set(), []
        for part in parts:
            for i, path in enumerate(part.paths):
                if path not in seen:
                    seen.add(path)
                    rows.append((path, part.labels[i], part.scores[i]))
        pool = Predictions(
            paths=[r[0] for r in rows], labels=[r[1] for r in rows], scores=np.stack([r[2] for r in rows]),
            kind="probs",
        )
    truth, source = pseudo.known_labels(
        pool, hidden=pseudo.read_hidden_labels(params.data.root), protocol=params.protocol
    )
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        report, _ = pseudo.select_round(
            params.pseudo.threshold, round, pool, out_dir=out, val=val, true_labels=truth,
            label_source=source, class_names=data.read_classes(params.data.root), protocol=params.protocol,
        )
        log.info("round %d: kept %d of %d pool clips", round, report.total_kept, report.total_pool)
    dist.barrier()
    return json.loads(report_path.read_text())


def pseudo_round(params: Params, label: str, round: int) -> dict:
    """One pseudo-label round for one model: continue from the previous stage on labelled + pseudo clips."""
    from kit import engine
    from kit.adapt_bn import adapt_bn

    device = setup(params)
    layout = RunLayout(params.out_dir)
    stage = stage_name("pseudo", round)
    out = layout.model_dir(label, stage)
    selection = select_pseudo(params, round)
    recipe = params.train_for(label, pseudo=True)
    model = build_model(params, label, pseudo=True)
    init_from = layout.model_dir(label, previous_stage(round)) / "final.pth"
    labelled = _loader(params, "labeled", train=True, gamma=None, batch_size=recipe.batch_size)
    # pseudo-labelled clips are dark: they are seen as evaluation sees them, through gamma
    pseudo_loader = _loader(
        params, str(layout.pseudo_dir(round) / "pseudo.csv"), train=True, gamma=params.pseudo.gamma,
        batch_size=recipe.batch_size,
    )
    val_loader = _loader(params, "val", train=False, gamma=params.eval.gamma) if params.data.val else None
    adapt_loader = _adapt_loader(params) if recipe.adapt_bn_every_epoch else None
    t0 = time.time()
    history = engine.fit(
        model, labelled, val_loader=val_loader, params=recipe, out_dir=out, device=device,
        pseudo_loader=pseudo_loader, pseudo_mode=params.pseudo.mode, pseudo_weight=params.pseudo.loss_weight,
        soft_targets=params.pseudo.soft_targets, adapt_loader=adapt_loader, adapt_params=params.adapt_bn,
        init_from=init_from, num_classes=num_classes(params),
    )
    load_weights(model, out / "best.pth")
    model.to(device)
    report = None
    if params.adapt_bn.enabled:
        report = adapt_bn(model, _adapt_loader(params), num_batches=params.adapt_bn.num_batches, device=device)
    save_weights(model, out / "final.pth")
    results = evaluate_and_predict(params, model, label, stage, device)
    results.update(
        round=round, init_from=str(init_from), selection=selection, adapt_bn=_report_dict(report),
        train_seconds=time.time() - t0, history=_history_rows(history),
    )
    write_results(params, label, stage, results)
    return results


# ---------------------------------------------------------------- 4. ensemble


def last_stage(params: Params) -> str:
    return stage_name("pseudo", params.pseudo.rounds) if params.pseudo.rounds else "adapt_bn"


def run_ensemble(params: Params) -> dict:
    """Fuse the models' last-stage predictions with weights fitted on val; write the submission."""
    from kit import ensemble, predictions, submission

    setup(params)
    layout = RunLayout(params.out_dir)
    stage = last_stage(params)
    labels = [m.label for m in params.models]
    cfg = params.ensemble
    results: dict = {"stage": stage, "models": labels}
    if params.data.val:
        val = [predictions.load(layout.predictions(m, stage, "val")) for m in labels]
        fit = ensemble.ensemble_weights(cfg, val)
        results["fit"] = fit.to_dict()
        results["baselines"] = fit.to_frame().reset_index().to_dict(orient="records")
    else:  # nothing labelled to fit on: equal weights, or the given ones
        weights = cfg.weights if isinstance(cfg.weights, list) else [1.0] * len(labels)
        fit = None
    for split in eval_splits(params):
        files = [layout.predictions(m, stage, split) for m in labels]
        fused = ensemble.apply_weights(fit, files) if fit else ensemble.fuse(files, weights, space=cfg.space)
        fused.meta.update(model=ENSEMBLE, stage=ENSEMBLE, split=split)
        fused.save(layout.predictions(ENSEMBLE, ENSEMBLE, split))
        if _labelled(fused):
            results[split] = _metrics(fused)
        if split == "test" and cfg.submission:
            path = submission.write(
                fused, layout.root / "submission.csv", video=cfg.submission_video, ids=cfg.submission_ids
            )
            results["submission"] = str(path)
    results["weights"] = dict(zip(labels, map(float, fit.weights if fit else weights), strict=True))
    write_results(params, ENSEMBLE, ENSEMBLE, results)
    return results


# ---------------------------------------------------------------- dispatch


def run_stage(stage: str, params: Params, model: str | None = None, round: int | None = None) -> dict:
    """Run a stage in this process, or under ``torchrun`` when ``params.nproc_per_node > 1``."""
    if stage in ("supervised", "adapt_bn", "pseudo") and params.nproc_per_node > 1 and not dist.is_distributed():
        return _launch_torchrun(stage, params, model, round)
    if stage == "supervised":
        return supervised(params, model)
    if stage == "adapt_bn":
        return adapt(params, model)
    if stage == "pseudo":
        return pseudo_round(params, model, round)
    if stage == "ensemble":
        return run_ensemble(params)
    raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")


def _launch_torchrun(stage, params: Params, model, round) -> dict:
    layout = RunLayout(params.out_dir)
    if not layout.params.exists():
        save_params(params, layout.params)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={params.nproc_per_node}",
        "-m", "kit.stages", stage, "--params", str(layout.params), "--model", str(model),
    ]
    if round:
        cmd += ["--round", str(round)]
    log.info("launching: %s", " ".join(cmd))
    subprocess.run(cmd, check=True)
    name = stage_name(stage, round) if stage == "pseudo" else stage
    return read_results(params, model, name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kit.stages", description="Run one stage of the method.")
    ap.add_argument("stage", choices=STAGES)
    ap.add_argument("--params", required=True, help="a run's params.yaml (or any params file)")
    ap.add_argument("--model", help="model label (params.models[].key or name)")
    ap.add_argument("--round", type=int, help="pseudo-label round (1..rounds)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = read_saved_params(args.params)
    dist.init_distributed(device=resolve_device(params))
    try:
        run_stage(args.stage, params, args.model, args.round)
    finally:
        dist.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
