"""Where a run keeps its files. One place decides every path under ``outputs/<run>/``.

::

    outputs/<run>/
      params.yaml                      resolved parameters, kit version and git commit at the run's start
      notebooks/<stage>[_<model>][_r<round>].ipynb   executed notebooks (+ .html reports, .done.json markers)
      models/<model>/<stage>/          checkpoint.pth, best.pth, metrics.jsonl
      predictions/<model>/<stage>_<split>.npz        see kit.predictions
      pseudo/r<round>/                 pseudo-label lists and the selection report
      report.html, summary.json
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ENSEMBLE = "ensemble"  # the "model" name under which fused predictions are stored


def stage_name(stage: str, round: int | None = None) -> str:
    """``("supervised")`` -> ``supervised``; ``("pseudo", 2)`` -> ``pi2`` (the paper's PI-2)."""
    if stage == "pseudo":
        if not round:
            raise ValueError("a pseudo-label stage needs its round (1, 2, ...)")
        return f"pi{round}"
    return stage


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __init__(self, root):
        object.__setattr__(self, "root", Path(root))

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    def model_dir(self, model: str, stage: str) -> Path:
        """Checkpoints and metrics of one model at one stage (``supervised``, ``adapt_bn``, ``pi1``...)."""
        return self.root / "models" / model / stage

    def predictions(self, model: str, stage: str, split: str) -> Path:
        """Predictions of ``model`` after ``stage`` on list ``split`` (``val``, ``test``, ``unlabeled``...)."""
        return self.root / "predictions" / model / f"{stage}_{split}.npz"

    def pseudo_dir(self, round: int) -> Path:
        return self.root / "pseudo" / f"r{round}"

    def notebook(self, stage: str, model: str | None = None, round: int | None = None) -> Path:
        name = stage + (f"_{model}" if model else "") + (f"_r{round}" if round else "")
        return self.root / "notebooks" / f"{name}.ipynb"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"
