"""What the first cell of every notebook calls: find the project, set up logging, load params."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from kit.config import Params, load_params

log = logging.getLogger(__name__)


def project_root(start=None) -> Path:
    """The folder holding ``params/`` and ``kit/``, searched upwards from ``start`` (default: cwd)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params").is_dir() and (folder / "kit").is_dir():
            return folder
    # an installed kit used from elsewhere: the checkout it was installed from
    pkg = Path(__file__).resolve().parent.parent
    if (pkg / "params").is_dir():
        return pkg
    raise FileNotFoundError(f"no nightkit project (a folder with params/ and kit/) above {here}")


def start(params_file: str, overrides=(), *, level: int = logging.INFO) -> Params:
    """Validate a notebook's parameters and make relative paths mean the same everywhere.

    JupyterLab starts a notebook in ``notebooks/``, papermill in the project root: both end up
    in the project root, so ``params/demo.yaml`` and ``outputs/`` resolve alike.
    """
    root = project_root()
    if Path.cwd().resolve() != root:
        os.chdir(root)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout, force=True)
    params = load_params(params_file, list(overrides or ()))
    log.info("run %r, %d model(s): %s", params.run, len(params.models), ", ".join(m.label for m in params.models))
    return params
