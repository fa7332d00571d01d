"""bench/gpu_check.sh: its steps in order inside a time budget, a few result files, and a stop when the
GPU tests fail. A stand-in for Python records each step's command, so nothing here needs a GPU."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and coreutils' timeout"
)

# stands in for python: appends its arguments to $FAKE_CALLS, writes what the real step would write
FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "$*" >> "$FAKE_CALLS"
case "$*" in
  "-m pytest "*) exit "${FAKE_TESTS_RC:-0}" ;;
  "-m bench --device "*)
    out=$(sed -E 's/.* --out ([^ ]+).*/\1/' <<< "$*")
    echo table > "$out/2026-11-27_010203.md"; echo {} > "$out/2026-11-27_010203.json" ;;
  "bench/gpu_check.py "*) echo {} > "${@: -1}" ;;
  "-m bench.hotspots adapt_bn "*) echo "profiled"; exit "${FAKE_PROFILE_RC:-0}" ;;
esac
"""


def run_check(tmp_path, **env) -> tuple[subprocess.CompletedProcess, list[str], Path]:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    calls, out = tmp_path / "calls.txt", tmp_path / "results"
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(out)], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHON": str(fake), "FAKE_CALLS": str(calls), "CACHE_DIR": str(tmp_path / "cache"), **env},
    )
    return proc, calls.read_text().splitlines() if calls.exists() else [], out


def test_every_step_runs_in_order_and_leaves_four_files(tmp_path):
    proc, calls, out = run_check(tmp_path, FAKE_PROFILE_RC="3")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = [
        "pytest", "bench/adapt_bn.py", "hotspots loader", "--stats-kernel triton", "--stats-kernel pytorch",
        "-m bench --device cuda --only loader", "bench/loader.py",
        "bench/models.py --device cuda", "bench/models.py --device cuda", "bench/gpu_check.py",
    ]
    assert len(calls) == len(steps)
    for call, needle in zip(calls, steps, strict=True):
        assert needle in call
    assert f"--cache {tmp_path / 'cache'}" in calls[2] and f"--cache {tmp_path / 'cache'}" in calls[5]
    assert calls[6].startswith(f"bench/loader.py {tmp_path / 'cache'}/synth_224px_4x16 ")  # the loaders step's set
    assert "--channels-last" not in calls[7] and calls[8].endswith(" --channels-last")  # each layout once
    assert sorted(p.name for p in out.iterdir()) == [
        "2026-11-27_010203.json", "2026-11-27_010203.md", "gpu_check.json", "gpu_check.log",
    ]
    log = (out / "gpu_check.log").read_text()
    assert log == proc.stdout  # everything printed is in the log
    assert "== tests: exit 0 after" in log and "== realsize: exit 0 after" in log
    # a step that fails is reported and the check goes on
    assert "== profile-triton: exit 3 after" in log and "== profile-pytorch: exit 3 after" in log
    assert "profiled" in log and "== gpu_check: done in" in log


def test_failed_gpu_tests_stop_the_check(tmp_path):
    proc, calls, out = run_check(tmp_path, FAKE_TESTS_RC="1")

    assert proc.returncode == 1
    assert len(calls) == 1 and "pytest" in calls[0]
    log = (out / "gpu_check.log").read_text()
    assert "== tests: exit 1 after" in log and "the tests failed, nothing else was run" in log
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.log"]


def test_a_small_budget_skips_the_steps_it_cannot_hold(tmp_path):
    proc, calls, out = run_check(tmp_path, BUDGET_S="25")

    assert proc.returncode == 0 and calls == []
    log = (out / "gpu_check.log").read_text()
    for name in ("tests", "kernels", "workers", "profile-triton", "profile-pytorch", "loaders", "chunks",
                 "layout-contiguous", "layout-channels-last", "realsize"):
        assert f"== {name}: skipped, " in log


def _step(tmp_path, snippet: str) -> subprocess.CompletedProcess:
    # source the script (which then only defines step and check) and run ``snippet`` in that shell
    return subprocess.run(
        ["bash", "-c", f'source "{SCRIPT}" && {snippet}'], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "BUDGET_S": "100"},
    )


def test_a_step_is_stopped_at_its_limit_or_at_the_end_of_the_budget(tmp_path):
    t0 = time.monotonic()
    proc = _step(tmp_path, "step slow 1 0 sleep 30; echo status $?")
    assert time.monotonic() - t0 < 20
    assert "== slow: sleep 30 (at most 1 s)" in proc.stdout
    assert "== slow: exit 124 after 1 s (stopped at its limit)" in proc.stdout
    assert "status 124" in proc.stdout

    # a limit beyond the budget's end is cut to what is left of it (bash's SECONDS may tick between
    # the two readings, leaving a second less)
    proc = _step(tmp_path, "end=$((SECONDS + 2)); step long 500 0 sleep 30")
    assert re.search(r"== long: sleep 30 \(at most [12] s\)", proc.stdout) and "exit 124" in proc.stdout
    proc = _step(tmp_path, "end=$((SECONDS + 5)); step big 500 10 sleep 30; echo status $?")
    assert re.search(r"== big: skipped, [45] s of the budget left \(it needs 10\)", proc.stdout)
    assert "status 0" in proc.stdout
    # with no whole second left, a step is skipped: timeout 0 would not stop it at all
    t0 = time.monotonic()
    proc = _step(tmp_path, "end=$SECONDS; step none 500 0 sleep 30; echo status $?")
    assert "== none: skipped, 0 s of the budget left (it needs 0)" in proc.stdout and "status 0" in proc.stdout
    assert time.monotonic() - t0 < 20
    assert not (tmp_path / "outputs").exists()  # sourcing creates no results folder
