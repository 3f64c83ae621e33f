"""The run directory: where a training run, the demo and the commands after them keep their files.

One layout serves ``snnet train --out RUN``, ``snnet demo --out RUN`` and every command pointed at
RUN afterwards (evaluate, latency, select, plot, export)::

    RUN/
      model/              the trained SN-Net: config.json + model.safetensors (snnet.save)
      checkpoint.pt       everything a resumed run needs (snnet.train.checkpoint)
      train.json          the run's progress, readable without torch
      steps.csv           per-step losses, learning rates and stitches of the training run
      importance.json     stitches ranked by estimated importance (--sampling importance)
      val.csv             validation top-1 and loss of the anchors and a few stitches, per epoch
      tb/                 TensorBoard logs: training loss and lr, validation per stitch
      teacher.safetensors the anchors as training started (runs with --distill: its teachers)
      results.json        accuracy, cost and latency of every stitch (results.csv beside it)
      pareto.png          accuracy against cost, Pareto front drawn (snnet demo)
      summary.json        what snnet demo found

A directory written by ``snnet.save`` alone works too: it is its own model, and results go beside
it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from snnet.files import CONFIG

MODEL = "model"
CHECKPOINT = "checkpoint.pt"
TRAIN_RECORD = "train.json"
TRAIN_LOG = "steps.csv"
VAL_LOG = "val.csv"
TENSORBOARD = "tb"
RESULTS = "results.json"
PLOT = "pareto.png"
SUMMARY = "summary.json"
IMPORTANCE = "importance.json"


@dataclass(frozen=True, init=False)
class RunDir:
    """A run directory's files. ``RunDir(path)`` is the layout above, the run to write (or
    continue) at ``path``; :meth:`find` opens what a user pointed a command at.

    Example:
        >>> run = RunDir.find("runs/demo")
        >>> net = snnet.load(run.model)
        >>> results = Results.load(run.results)
    """

    path: Path  # results, plots and summaries go here
    model: Path  # the saved network (config.json + model.safetensors)
    training: Path  # checkpoint.pt, train.json, steps.csv, val.csv, tb/

    def __init__(
        self,
        path: str | Path,
        *,
        model: str | Path | None = None,
        training: str | Path | None = None,
    ) -> None:
        path = Path(path)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "model", Path(model) if model is not None else path / MODEL)
        object.__setattr__(self, "training", Path(training) if training is not None else path)

    @property
    def checkpoint(self) -> Path:
        return self.training / CHECKPOINT

    @property
    def train_record(self) -> Path:
        return self.training / TRAIN_RECORD

    @property
    def train_log(self) -> Path:
        return self.training / TRAIN_LOG

    @property
    def importance(self) -> Path:
        """Stitches ranked by importance, written by a run with ``sampling="importance"``."""
        return self.training / IMPORTANCE

    @property
    def val_log(self) -> Path:
        return self.training / VAL_LOG

    @property
    def tensorboard(self) -> Path:
        return self.training / TENSORBOARD

    @property
    def results(self) -> Path:
        return self.path / RESULTS

    @property
    def results_csv(self) -> Path:
        return self.results.with_suffix(".csv")

    @property
    def plot(self) -> Path:
        return self.path / PLOT

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @classmethod
    def find(cls, path: str | Path) -> RunDir:
        """The run a command was pointed at: a run directory (of snnet train or snnet demo) or a
        directory written by ``snnet.save`` (or a directory holding one). Results, plots and
        summaries go in ``path`` itself, so commands pointed at one directory meet in one
        results file."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist: give a run directory (snnet train/demo --out) or a "
                "directory written by snnet.save"
            )
        if not path.is_dir():
            raise ValueError(
                f"{path} is a file: give the run directory or the directory written by snnet.save"
            )
        if (path / CONFIG).is_file():
            return cls(path, model=path, training=path)
        run = cls(path)
        if (run.model / CONFIG).is_file():
            return run
        if run.checkpoint.is_file():
            raise FileNotFoundError(
                f"the run in {path} has no saved network yet ({run.model} is missing): continue "
                "it with snnet train --resume"
            )
        inside = sorted(p.parent for p in path.glob(f"*/{CONFIG}"))
        if len(inside) == 1:
            return cls(path, model=inside[0])
        if inside:
            raise ValueError(
                f"{path} holds several models ({', '.join(p.name for p in inside)}): pass one of them"
            )
        raise FileNotFoundError(
            f"{path} holds no {CONFIG}: give a directory written by snnet.save, snnet train or "
            "snnet demo"
        )
