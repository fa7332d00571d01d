"""The confusion notebook used as a person would: JupyterLab in a real Chromium, run all, click a cell.

Needs Debian's ``/usr/bin/chromium`` (``.ci/install_browser.sh``) and ``playwright`` from PyPI; no
browser is downloaded. Skipped where either is absent, unless ``NIGHTKIT_REQUIRE_BROWSER=1`` (CI).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fixture_run import build_fixture_run

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",  # containers often have a 64 MB /dev/shm, too small for Chromium
]


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not installed (run .ci/install_browser.sh)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    return None


def _skip_or_fail():
    reason = _missing()
    if reason and os.environ.get("NIGHTKIT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser test required (NIGHTKIT_REQUIRE_BROWSER=1) but {reason}")
    if reason:
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lab_project(tmp_path: Path, params_file: Path) -> Path:
    """A project folder for JupyterLab: the notebook (pointed at the fixture run), params/, kit/."""
    lab = tmp_path / "lab"
    (lab / "notebooks").mkdir(parents=True)
    (lab / "params").mkdir()
    (lab / "kit").symlink_to(ROOT / "kit")  # kit.notebook.start finds the project by params/ + kit/
    nb = json.loads((ROOT / "notebooks" / "50_confusion.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    source = "".join(cell["source"])
    assert 'params_file = "params/demo.yaml"' in source
    cell["source"] = source.replace('"params/demo.yaml"', json.dumps(str(params_file)), 1)
    # the venv's own kernel, whatever kernel the stored notebook names (`make env` registers `nightkit`)
    nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    (lab / "notebooks" / "50_confusion.ipynb").write_text(json.dumps(nb, indent=1))
    return lab


def _lab_settings(folder: Path) -> Path:
    """User settings of a fresh JupyterLab: start the notebook's kernel without asking, fetch no news."""
    for name, value in [
        ("@jupyterlab/notebook-extension/tracker.jupyterlab-settings", {"autoStartDefaultKernel": True}),
        ("@jupyterlab/apputils-extension/notification.jupyterlab-settings", {"fetchNews": "false"}),
    ]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(value))
    return folder


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"JupyterLab did not answer {url} in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.mark.browser
def test_inspector_in_jupyterlab_lists_clips_with_thumbnails(tmp_path):
    _skip_or_fail()
    from playwright.sync_api import sync_playwright

    fx = build_fixture_run(tmp_path / "fixture")
    lab = _lab_project(tmp_path, fx.params_file)
    port, token = _free_port(), "nightkit-test-token"
    jupyter_home = tmp_path / "jupyter"
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(jupyter_home / "config"),  # no user settings, no stored workspace
        "JUPYTER_RUNTIME_DIR": str(jupyter_home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(_lab_settings(jupyter_home / "settings")),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    log = tmp_path / "jupyterlab.log"
    log_file = log.open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={lab}",
         f"--LabApp.workspaces_dir={jupyter_home / 'workspaces'}", "--LabApp.news_url=None",
         "--ServerApp.port_retries=0", "--ServerApp.terminals_enabled=False",
         "--LabApp.extension_manager=readonly", "--allow-root"],  # CI containers run as root
        cwd=lab, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
    )
    screenshot = tmp_path / "inspector.png"
    try:
        _wait_for_server(f"http://127.0.0.1:{port}/api/status?token={token}", server, log)
        with sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
                args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 1000},
            )
            page = browser.new_page()
            try:
                page.set_default_timeout(45_000)
                page.goto(f"http://127.0.0.1:{port}/lab/tree/notebooks/50_confusion.ipynb?reset&token={token}")
                page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for()
                page.get_by_text("Python 3 (ipykernel) | Idle").wait_for()  # the kernel has started
                page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
                page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

                cell = page.locator(".nk-cell-0-3")  # ensemble: true Run, predicted Walk
                cell.wait_for(state="visible", timeout=60_000)
                assert page.locator(".nk-cell").count() == 16
                assert cell.inner_text().strip() == "1"
                cell.click()
                clip = page.locator(".nk-clip").first
                clip.wait_for(state="visible")
                assert page.locator(".nk-clip").count() == 1
                assert "val/clip00.mp4" in clip.inner_text()
                assert "predicted Walk" in clip.inner_text() and "sf@pi2" in clip.inner_text()
                thumb = clip.locator("img.nk-thumb")
                thumb.wait_for(state="visible")
                size = thumb.evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]")
                assert size[0] and size[1] > 100 and size[2] > 20, size  # a decoded strip of frames
                changed = "src => document.querySelector('img.nk-thumb').src !== src"
                for _ in ("off", "on"):  # gamma off shows the raw, nearly black frames; then back on
                    src = thumb.get_attribute("src")
                    page.locator(".nk-gamma").click()
                    page.wait_for_function(changed, arg=src)
                errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
                assert "Traceback" not in " ".join(errors.all_inner_texts())
                clip.scroll_into_view_if_needed()
                page.mouse.wheel(0, 250)  # the grid and the clip list together in view
                page.wait_for_timeout(300)
                page.screenshot(path=str(screenshot))
            except Exception:
                page.screenshot(path=str(tmp_path / "failure.png"))  # what the browser showed when it failed
                raise
            finally:
                browser.close()
        assert screenshot.stat().st_size > 10_000
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server and the kernel it started
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log_file.close()
        keep = os.environ.get("NIGHTKIT_KEEP_SCREENSHOT")  # a folder to copy the screenshots to
        for shot in (screenshot, tmp_path / "failure.png"):
            if keep and shot.exists():
                shutil.copy(shot, Path(keep) / shot.name)
