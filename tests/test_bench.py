"""The benchmark suite: every section in one table with ideals and targets; a demo run's records read back.

Timings are never asserted (the machine is shared); what is asserted is the table's content: its
sections, the target verdicts of recorded numbers, and the stage times read from done-markers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import kit.adapt_bn
import kit.models
from bench import adapt_bn as bench_adapt_bn
from bench import pipeline  # bench/ is importable through pytest's pythonpath (pyproject.toml)
from bench.__main__ import SECTIONS, Line, demo_run_lines, main
from kit.config import load_params, save_params
from kit.pipeline import plan

ROOT = Path(__file__).resolve().parent.parent


def fake_demo_run(run_dir: Path, *, seconds: float, rss_mib: float | None, skip: int = 0) -> list[str]:
    """A run folder with the demo's params.yaml and a done-marker per planned step (the last ``skip`` left out)."""
    params = load_params(ROOT / "params/demo.yaml", [])
    save_params(params, run_dir / "params.yaml")
    names = [s.name for s in plan(params)]
    (run_dir / "notebooks").mkdir(parents=True)
    for name in names[: len(names) - skip]:
        marker = {"hash": "x", "seconds": seconds, "finished": 0.0}
        if rss_mib is not None:
            marker["peak_rss_MiB"] = rss_mib
        (run_dir / "notebooks" / f"{name}.done.json").write_text(json.dumps(marker))
    return names


def test_line_verdicts():
    assert Line("s", "m", 0.9, "x", "1.0 ideal", (">=", 0.8)).result == "met"
    assert Line("s", "m", 0.7, "x", "1.0 ideal", (">=", 0.8)).result == "missed"
    assert Line("s", "m", 1.2, "x", "1.0 ideal", ("<=", 1.1)).result == "missed"
    assert Line("s", "m", None, "x", "1.0 ideal", ("<=", 1.1)).result == "not measured"
    assert Line("s", "m", 3.0, "clips/s", "higher is better").result == ""
    assert Line("s", "m", 1.0, "x", "1.0 ideal", ("<=", 1.1)).ideal_text() == "1.0 ideal; target <= 1.1"


def test_quick_suite_writes_every_section(tmp_path, capsys):
    run_dir = tmp_path / "demo"
    names = fake_demo_run(run_dir, seconds=50.0, rss_mib=1500.0)
    out, cache = tmp_path / "bench", tmp_path / "cache"

    assert main(["--quick", "--demo-run", str(run_dir), "--out", str(out), "--cache", str(cache)]) == 0

    (js,) = out.glob("*.json")
    (md,) = out.glob("*.md")
    assert js.stem == md.stem and len(js.stem) == len("2026-11-26_143249")
    assert sorted(p.name for p in out.iterdir()) == [js.name, md.name]  # the synthetic sets went to --cache
    assert sorted(p.name for p in cache.iterdir()) == ["synth_112px_2x1", "synth_64px_8x1"]
    report = json.loads(js.read_text())
    assert report["errors"] == {}
    assert {d["section"] for d in report["lines"]} == set(SECTIONS)
    for d in report["lines"]:
        assert d["ideal_text"] and d["unit"]
        assert d["result"] in (("met", "missed") if d["target"] else ("",))
    assert report["machine"]["cores"] >= 1 and report["machine"]["torch"]
    assert report["command"] == f"python -m bench --quick --demo-run {run_dir} --out {out} --cache {cache}"

    by = {d["measured"]: d for d in report["lines"]}
    total = by["make demo total (sum of stage wall times)"]
    assert total["value"] == pytest.approx(50.0 * len(names))
    assert total["result"] == ("met" if 50.0 * len(names) <= 600 else "missed")
    assert by["make demo peak RAM (runner + largest notebook kernel)"]["value"] == pytest.approx(1500 * 2**20 / 1e9)
    assert sum(m.startswith(f"{run_dir} stage ") for m in by) == len(names)
    ratios = [d for d in report["lines"] if d["section"] == "loader" and d["unit"] == "x"]
    assert {d["target"][1] for d in ratios} == {0.8, 0.6}  # eval and train loader targets
    finish = [d for d in report["lines"] if d["section"] == "loader" and d["unit"] == "ms/clip"]
    assert len(finish) == 4 and all(d["value"] > 0 and "finished on cpu" in d["measured"] for d in finish)
    assert any("SDPA / plain" in m for m in by)

    text = md.read_text()
    printed = capsys.readouterr().out
    assert text in printed
    for needle in ("command: `python -m bench --quick", "machine:", "torch", "load average", "| ideal / target", "targets:"):
        assert needle in text


def test_demo_run_lines_without_a_run(tmp_path):
    lines = demo_run_lines(tmp_path / "nothing")
    assert [ln.result for ln in lines] == ["not measured", "not measured"]
    assert all("run make demo first" in ln.note for ln in lines)


def test_demo_run_lines_incomplete_and_slow_runs(tmp_path):
    run_dir = tmp_path / "partial"
    names = fake_demo_run(run_dir, seconds=400.0, rss_mib=None, skip=2)
    record = pipeline.read_run(run_dir)
    assert record.missing == names[-2:] and not record.complete
    by = {ln.measured: ln for ln in demo_run_lines(run_dir)}
    total = by["make demo total (sum of stage wall times)"]
    assert total.result == "not measured" and names[-1] in total.note
    ram = by["make demo peak RAM (runner + largest notebook kernel)"]
    assert ram.value is None and "rerun make demo" in ram.note

    measured = tmp_path / "partial_rss"
    fake_demo_run(measured, seconds=1.0, rss_mib=900.0, skip=1)
    ram = {ln.measured: ln for ln in demo_run_lines(measured)}["make demo peak RAM (runner + largest notebook kernel)"]
    assert ram.result == "not measured" and "900 MiB" in ram.note and names[-1] in ram.note

    slow = tmp_path / "slow"
    fake_demo_run(slow, seconds=400.0, rss_mib=5000.0)
    by = {ln.measured: ln for ln in demo_run_lines(slow)}
    assert by["make demo total (sum of stage wall times)"].result == "missed"
    assert by["make demo peak RAM (runner + largest notebook kernel)"].result == "missed"


def test_read_run_names_a_bad_marker(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "00_data.done.json").write_text('{"hash": "x"}')
    with pytest.raises(ValueError, match="00_data.done.json"):
        pipeline.read_run(tmp_path)


def test_only_rejects_an_unknown_section(capsys):
    with pytest.raises(SystemExit):
        main(["--only", "loader,speed"])
    assert "speed" in capsys.readouterr().err


def test_profiles_name_where_the_time_goes(tmp_path):
    from bench import hotspots

    rows = hotspots.profile_loader(train=True, clips=2, passes=1, top=40, cache=tmp_path, size=64, frames=8)
    assert rows and all(ms >= 0 for _, ms in rows) and rows == sorted(rows, key=lambda r: -r[1])
    assert any("__call__" in name or "get_batch" in name for name, _ in rows)  # decord's calls
    rates, usage, rows = hotspots.profile_loader_workers(
        train=True, clips=4, passes=1, top=400, cache=tmp_path, workers=2, size=64, frames=8
    )
    assert set(rates) == {"main", "workers", "per worker", "main CPU ms per clip", "workers CPU ms per clip"}
    assert all(r > 0 for r in rates.values())
    for side in ("main", "workers"):  # getrusage's counts, from this process and from the workers' files
        assert set(usage[side]) == set(hotspots.USAGE.values())
        assert usage[side]["user CPU ms"] > 0 and all(v >= 0 for v in usage[side].values())
    (decode,) = [r for r in rows if "(get_batch)" in r[0]]  # decord's, in both processes' profiles
    assert decode[1] > 0 and decode[2] > 0
    assert rows == sorted(rows, key=lambda r: -abs(r[2] - r[1]))
    ops, per_clip = hotspots.profile_randaugment(spec="rand-m7-n4-mstd0.5", repeats=1)
    assert {"Rotate", "Invert", "Sharpness"} <= {name for name, _ in ops} and per_clip > 0
    totals, by_op = hotspots.profile_adapt_bn(model="slowfast_tiny", batches=2, top=50)
    assert totals["inference"] > 0 and totals["adapt_bn"] > 0
    bn = next(r for r in by_op if r[0] == "aten::native_batch_norm")
    assert bn[3] == 2 * 38  # calls in the Adapt BN pass: 38 layers, 2 batches
    with pytest.raises(ValueError, match="STATS_KERNEL must be one of"):  # the setting reaches adapt_bn...
        hotspots.profile_adapt_bn(model="slowfast_tiny", batches=1, top=5, stats_kernel="cudnn")
    assert kit.adapt_bn.STATS_KERNEL == "pytorch"  # ...and is put back


def test_adapt_bn_bench_compares_every_setting_once_per_round():
    assert bench_adapt_bn._settings((0, 4), ("pytorch", "triton")) == [(0, "pytorch"), (4, "pytorch"), (0, "triton")]
    assert bench_adapt_bn._settings((None,), (None,)) == [
        (kit.adapt_bn.SPLIT_BLOCKS_PER_SM, kit.adapt_bn.STATS_KERNEL)
    ]
    with pytest.raises(ValueError, match="unknown statistics kernel 'cudnn'"):
        bench_adapt_bn._settings((0,), ("cudnn",))
    rows = bench_adapt_bn.run_benchmark(
        models=("slowfast_tiny",), batches=2, batch_size=2, frames=4, size=32, repeats=1,
        split_blocks_per_sm=(0, 4), stats_kernels=("pytorch", "triton"), rounds=2,
    )
    assert [(r["round"], r["split_blocks_per_sm"], r["stats_kernel"]) for r in rows] == [
        (1, 0, "pytorch"), (1, 4, "pytorch"), (1, "-", "triton"), (2, 0, "pytorch"), (2, 4, "pytorch"), (2, "-", "triton")
    ]
    # on the CPU no setting cuts a channel: PyTorch's kernel every time, the same statistics
    assert all(r["mean_diff"] == 0 and r["var_rel_diff"] == 0 for r in rows[1:])
    assert all(r["ratio"] > 0 and r["bn_layers"] == 38 for r in rows)
    assert kit.adapt_bn.STATS_KERNEL == "pytorch" and kit.adapt_bn.SPLIT_BLOCKS_PER_SM == 4  # put back


def test_adapt_bn_bench_compares_the_pass_through_the_layers_own_forward(monkeypatch):
    assert bench_adapt_bn._settings((4,), ("pytorch",), layer_forward=True) == [(4, "pytorch"), (0, "layer")]
    calls = []
    real_call = kit.adapt_bn.SplitForward.__call__
    monkeypatch.setattr(kit.adapt_bn.SplitForward, "__call__", lambda self, x: calls.append(1) or real_call(self, x))
    split_layers = kit.adapt_bn._split_layers
    model = kit.models.create_model("slowfast_tiny", num_classes=3)
    clips = [torch.randn(2, 3, 4, 32, 32)]
    bench_adapt_bn._time_passes(model, clips, torch.device("cpu"), 1, 0, "layer")
    assert calls == [] and kit.adapt_bn._split_layers is split_layers  # no stand-in, and put back
    bench_adapt_bn._time_passes(model, clips, torch.device("cpu"), 1, 0, "pytorch")
    assert len(calls) == 38
    rows = bench_adapt_bn.run_benchmark(
        models=("slowfast_tiny",), batches=2, batch_size=2, frames=4, size=32, repeats=1, layer_forward=True
    )
    assert [(r["split_blocks_per_sm"], r["stats_kernel"]) for r in rows] == [(4, "pytorch"), ("-", "layer")]
    assert rows[1]["mean_diff"] == 0 and rows[1]["var_rel_diff"] == 0  # the same kernel: the same statistics


def test_loader_bench_times_the_train_loader_for_each_chunk_size(tmp_path):
    from bench import loader
    from bench.__main__ import _synthetic_set

    root = _synthetic_set(tmp_path, size=64, clips_per_class=2, num_classes=2)
    rows = loader.run_benchmark(
        root, frames=8, crop=48, short_side=56, randaugment="rand-m7-n4-mstd0.5", workers=(0,), max_clips=4,
        batch_size=2, repeats=1, chunk_frames=(None, 3),
    )
    by = {(r["loader"], r.get("workers")): r for r in rows}
    assert set(by) == {
        ("raw decord", 0), ("kit eval", 0), ("kit train", 0), ("kit train, parts of 3 frames", 0),
        ("kit eval finish", None), ("kit train finish", None),
    }
    for name in ("kit train", "kit train, parts of 3 frames"):
        assert by[(name, 0)]["clips"] == 4 and by[(name, 0)]["ratio"] > 0


def test_models_bench_times_channels_last_models_as_a_run_builds_them(monkeypatch):
    import torch

    from bench import models as bench_models

    seen = []
    real = bench_models.bench_model
    monkeypatch.setattr(bench_models, "bench_model", lambda model, **kw: seen.append(model) or real(model, **kw))
    for channels_last in (False, True):
        rows, _ = bench_models.run_benchmark(
            models=["uniformer_tiny"], frames=4, size=32, batch=1, min_seconds=0.01, attention_model=None,
            channels_last=channels_last,
        )
        assert rows[0]["channels_last"] is channels_last and rows[0]["fwdbwd_clips_s"] > 0
    plain, last = (dict(m.named_parameters())["patch_embed1.proj.weight"] for m in seen)
    assert plain.is_contiguous() and not last.is_contiguous()
    assert last.is_contiguous(memory_format=torch.channels_last_3d)


def test_adapt_bn_bench_times_channels_last_models_as_a_run_builds_them(monkeypatch):
    import torch

    seen = []
    real = bench_adapt_bn.create_model
    monkeypatch.setattr(bench_adapt_bn, "create_model", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    for channels_last in (False, True):
        (row,) = bench_adapt_bn.run_benchmark(
            models=("slowfast_tiny",), batches=2, batch_size=2, frames=4, size=32, repeats=1, channels_last=channels_last,
        )
        assert row["channels_last"] is channels_last and row["ratio"] > 0
    plain, last = (dict(m.named_parameters())["s1.pathway0_stem.conv.weight"] for m in seen)
    assert plain.is_contiguous() and not last.is_contiguous()
    assert last.is_contiguous(memory_format=torch.channels_last_3d)
