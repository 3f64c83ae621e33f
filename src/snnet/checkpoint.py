"""Training checkpoints and the per-step log of a run directory.

``run_dir/checkpoint.pt`` is one plain dict, written atomically, holding everything a resumed run
needs to continue exactly: weights, optimizer and grad-scaler state, the step, epoch and position
in the epoch, the stitch sampler's generators and every rank's random-number states. Its size does
not grow with the run: what each step did (its stitch, loss and learning rate) goes to
``run_dir/steps.csv`` instead (:class:`StepLog`), one row per step and rank, appended as steps
finish. The network itself also goes to ``run_dir/model`` through :func:`snnet.save`, so
``snnet.load`` (and the other commands) can open a run without torch.load.
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from snnet.files import atomic_write

CHECKPOINT = "checkpoint.pt"
STEP_LOG = "steps.csv"
FORMAT = "snnet-train"
#: 2: per-step losses and stitches moved from the checkpoint to steps.csv; ``model_step`` added.
VERSION = 2
#: What a checkpoint must hold to resume from it.
KEYS = (
    "config",
    "model",
    "optimizer",
    "scaler",
    "sampler",
    "step",
    "epoch",
    "position",
    "world_size",
    "rng",
)


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT


def save_checkpoint(run_dir: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus format and version) to ``run_dir/checkpoint.pt``: temp file, then rename."""
    path = checkpoint_path(run_dir)
    state = {"format": FORMAT, "version": VERSION, **state}
    atomic_write(path, lambda p: torch.save(state, p), mode="path")
    return path


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """The dict :func:`save_checkpoint` wrote; loads tensors on the CPU and never unpickles code
    (``weights_only=True``). Anything else at that path is a one-line ``ValueError``."""
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"--resume: no checkpoint at {path}; drop --resume to start a new run there, or "
            "point --out at the run directory to continue"
        )
    fix = "restore it from a backup, or start a new run in another --out"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # torch's own text is left out on purpose: for a pickle holding code it suggests
        # weights_only=False, which would run that code.
        raise ValueError(
            f"{path} is not a readable snnet checkpoint ({type(e).__name__}: truncated, "
            f"another kind of file, or a pickle holding code, which is never run): {fix}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an snnet training checkpoint: {fix}")
    if state.get("version", 0) > VERSION:
        raise ValueError(f"{path} was written by a newer snnet; upgrade snnet to resume it")
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise ValueError(
            f"{path} is an incomplete snnet checkpoint (no {', '.join(missing)}): {fix}"
        )
    return state


def rng_state() -> dict[str, Any]:
    """This process's random-number states (torch CPU and CUDA, Python, NumPy)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


class StepLog:
    """``run_dir/steps.csv``: one row per step and rank (``step``, counted from 1, ``rank``,
    ``stitch``, ``loss``, ``lr``), appended and flushed as steps finish; losses are written
    with ``repr`` so reading them back gives the same floats.

    Rows can run ahead of the checkpoint (a kill after a step, before the next checkpoint):
    ``StepLog(run_dir, upto=step)`` cuts them back to the checkpoint's step, so a resumed run's
    log equals an uninterrupted run's. Only the main rank writes (``write=True``).

    Example:
        >>> log = StepLog("runs/a", upto=None)          # a new run: header only
        >>> log.append(1, ["0", "1"], [2.3, 2.2], 1e-4)  # step 1 on two ranks
        >>> log.sync(); log.close()
        >>> StepLog.read("runs/a", rank=0)
        ([2.3], ['0'])
    """

    COLUMNS = ("step", "rank", "stitch", "loss", "lr")

    def __init__(
        self,
        run_dir: str | Path,
        *,
        upto: int | None,
        write: bool = True,
        old_log: list[dict[str, list]] | None = None,
    ) -> None:
        self.path = Path(run_dir) / STEP_LOG
        self._file = None
        if not write:
            return
        rows = [] if upto is None else [r for r in self._rows(self.path) if int(r[0]) <= upto]
        if old_log and not rows:  # a version-1 checkpoint kept every rank's steps itself
            per_rank = [zip(r["stitches"], r["losses"], strict=True) for r in old_log]
            for step, ranks in enumerate(zip(*per_rank, strict=True), start=1):
                rows += [[step, rank, s, repr(loss), ""] for rank, (s, loss) in enumerate(ranks)]
        atomic_write(self.path, lambda f: csv.writer(f).writerows([self.COLUMNS, *rows]))
        self._file = open(self.path, "a", newline="")  # noqa: SIM115 (closed by close())
        self._writer = csv.writer(self._file)

    @staticmethod
    def _rows(path: Path) -> list[list[str]]:
        if not path.is_file():
            return []
        with open(path, newline="") as f:
            return [r for r in list(csv.reader(f))[1:] if len(r) == len(StepLog.COLUMNS)]

    @classmethod
    def read(cls, run_dir: str | Path, rank: int = 0) -> tuple[list[float], list[str]]:
        """Rank ``rank``'s losses and stitches, in step order."""
        rows = [r for r in cls._rows(Path(run_dir) / STEP_LOG) if int(r[1]) == rank]
        return [float(r[3]) for r in rows], [r[2] for r in rows]

    def append(self, step: int, stitches: list[str], losses: list[float], lr: float) -> None:
        """Step ``step``'s row for every rank (``stitches[r]``, ``losses[r]``)."""
        if self._file is None:
            return
        for rank, (stitch, loss) in enumerate(zip(stitches, losses, strict=True)):
            self._writer.writerow([step, rank, stitch, repr(loss), repr(lr)])
        self._file.flush()

    def sync(self) -> None:
        """On disk before a checkpoint claims these steps."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None

    def __enter__(self) -> StepLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
