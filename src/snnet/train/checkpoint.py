"""Where a training run stands, checked, saved and restored: the run directory's checkpoint, its
per-step log, and the checks made before a run writes anything.

``run_dir/checkpoint.pt`` is one plain dict, built by :func:`save_state` where it is saved and
written atomically, holding everything a resumed run needs to continue exactly: weights,
optimizer and grad-scaler state, the step, epoch and position in the epoch, the stitch sampler's
generators and every rank's random-number states. Its size does not grow with the run: what each
step did (its stitch, loss and learning rate) goes to ``run_dir/steps.csv`` instead
(:class:`StepLog`), one row per step and rank, appended as steps finish. The network itself goes
to ``run_dir/model`` through :func:`snnet.save` (so ``snnet.load`` and the other commands open a
run without torch.load), always before the checkpoint that records it: a kill never leaves a
checkpoint that claims newer weights than ``model/`` holds. ``run_dir/train.json`` is a readable
summary of the last checkpoint.
"""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import snnet.train.distributed as distributed
from snnet.files import atomic_write, check_writable, read_csv_rows, rewrite_csv
from snnet.rundir import RunDir
from snnet.serialize import load_saved_state, save, saved_state
from snnet.train.distributed import World

if TYPE_CHECKING:
    from snnet.network import SNNet
    from snnet.train.config import TrainConfig
    from snnet.train.sampling import StitchSampler

FORMAT = "snnet-train"
VERSION = 2
#: What a checkpoint must hold to resume from it.
KEYS = (
    "config",
    "model",
    "optimizer",
    "scaler",
    "sampler",
    "step",
    "total_steps",
    "epoch",
    "position",
    "world_size",
    "rng",
    "model_step",
)


def checkpoint_path(run_dir: str | Path) -> Path:
    return RunDir(run_dir).checkpoint


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

    def __init__(self, run_dir: str | Path, *, upto: int | None, write: bool = True) -> None:
        self.path = RunDir(run_dir).train_log
        self._file = None
        if not write:
            return
        rows = [] if upto is None else [r for r in self._rows(self.path) if int(r[0]) <= upto]
        rewrite_csv(self.path, self.COLUMNS, rows)
        self._file = open(self.path, "a", newline="")  # noqa: SIM115 (closed by close())
        self._writer = csv.writer(self._file)

    @staticmethod
    def _rows(path: Path) -> list[list[str]]:
        return read_csv_rows(path, StepLog.COLUMNS)

    @classmethod
    def read(cls, run_dir: str | Path, rank: int = 0) -> tuple[list[float], list[str]]:
        """Rank ``rank``'s losses and stitches, in step order."""
        rows = [r for r in cls._rows(RunDir(run_dir).train_log) if int(r[1]) == rank]
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


# -- a run: its checks, its state, save and restore ------------------------------------------------


class Diverged(ValueError):
    """The loss or the weights stopped being finite numbers; nothing non-finite was saved."""


def check_run(
    run_dir: str | Path | None,
    *,
    resume: bool = False,
    save_every: int = 0,
    ls_init: int = 0,
    num_workers: int = 0,
) -> Path | None:
    """Every check of a run's options that needs neither the network nor the data, made before
    anything is built or written: a refused command leaves no trace, so the corrected one works.
    Returns ``run_dir`` as a Path.

    Example:
        >>> check_run("runs/a", resume=True)   # FileNotFoundError if runs/a has no checkpoint
    """

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(message)

    need(save_every >= 0, f"--save-every must be >= 0 steps (0: epoch ends only), got {save_every}")
    need(ls_init >= 0, f"--ls-init must be >= 0 images, got {ls_init}")
    need(num_workers >= 0, f"--workers must be >= 0 data-loader processes, got {num_workers}")
    if run_dir is None:
        need(not resume, "resume needs the run directory (--out) holding checkpoint.pt")
        return None
    run_dir = Path(run_dir)
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    need(
        existing.is_dir(),
        f"--out {run_dir}: {existing} is a file, not a directory; choose another --out",
    )
    check_writable(checkpoint_path(run_dir))  # a read-only or forbidden --out fails now
    has_checkpoint = checkpoint_path(run_dir).is_file()
    if resume and not has_checkpoint:
        load_checkpoint(run_dir)  # the FileNotFoundError that says what to do
    need(
        resume or not has_checkpoint,
        f"{run_dir} already holds a checkpoint: pass --resume to continue it, or choose another --out",
    )
    return run_dir


@dataclass
class Run:
    """A training run as the loop sees it: what it trains, and where it stands. A checkpoint is
    this, turned into a plain dict by :func:`save_state` and back by :func:`restore`."""

    config: TrainConfig
    world: World
    net: SNNet
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    sampler: StitchSampler
    run_dir: Path | None
    total: int  # steps of the whole run
    step: int = 0  # steps done
    epoch: int = 0
    position: int = 0  # batches of this epoch done
    saved_at: int = -1  # the step of the last checkpoint
    model_at: int = -1  # the step whose weights run_dir/model holds (-1: unknown)
    last_loss: float | None = None
    log: StepLog | None = None
    losses: list[float] = field(default_factory=list)  # this rank's, every step so far
    history: list[str] = field(default_factory=list)  # this rank's stitch of every step


def restore(run: Run) -> None:
    """Continue exactly where the checkpoint in ``run.run_dir`` left off."""
    state = load_checkpoint(run.run_dir)
    _check_resume(state, run.config, run.world.world_size, run.total)
    try:
        load_saved_state(run.net, state["model"])  # PEFT mode: the trained tensors only
    except RuntimeError as e:
        raise ValueError(
            f"the checkpoint in {run.run_dir} belongs to another network (other anchors or "
            f"stitching options): {str(e).splitlines()[0]}"
        ) from e
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    run.sampler.load_state_dict(state["sampler"])
    run.step, run.epoch, run.position = state["step"], state["epoch"], state["position"]
    run.saved_at = run.step
    run.model_at = state["model_step"]
    set_rng_state(state["rng"][run.world.rank])


def save_state(run: Run, *, with_model: bool) -> None:
    """Checkpoint ``run`` (every rank calls: RNG states are gathered; rank 0 writes). The model
    goes first and the checkpoint records its step, so ``model/`` is never older than what the
    checkpoint says; non-finite weights are never written."""
    bad = [n for n, p in run.net.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise Diverged(
            f"{len(bad)} parameters (e.g. {bad[0]}) are not finite at step {run.step}: training "
            "diverged; start a new run (another --out) with a lower --lr or gradient clipping"
        )
    if run.run_dir is None:
        run.saved_at = run.step
        return
    rngs = distributed.gather(rng_state(), run.world)
    if with_model:
        run.model_at = run.step
    if run.world.is_main:
        if with_model:
            save(run.net, RunDir(run.run_dir).model)
        if run.log is not None:
            run.log.sync()  # the log holds every step the checkpoint claims
        save_checkpoint(
            run.run_dir,
            {
                "config": run.config.to_json(),
                "model": saved_state(run.net),
                "optimizer": run.optimizer.state_dict(),
                "scaler": run.scaler.state_dict(),
                "sampler": run.sampler.state_dict(),
                "step": run.step,
                "total_steps": run.total,
                "epoch": run.epoch,
                "position": run.position,
                "world_size": run.world.world_size,
                "rng": rngs,
                "model_step": run.model_at,
            },
        )
        record = {
            "config": run.config.to_json(),
            "step": run.step,
            "total_steps": run.total,
            "epoch": run.epoch,
            "position": run.position,
            "world_size": run.world.world_size,
            "last_loss": run.last_loss,
            "model_step": run.model_at,
        }
        atomic_write(
            RunDir(run.run_dir).train_record,
            lambda f: json.dump(record, f, indent=2, sort_keys=True),
        )
    run.saved_at = run.step
    distributed.barrier(run.world)


def open_log(run: Run, *, resume: bool) -> tuple[list[float], list[str]]:
    """Start ``steps.csv`` (rank 0), cut back to the checkpoint's step on resume; returns this
    rank's losses and stitches of the steps already done."""
    if run.run_dir is None:
        return [], []
    if run.world.is_main:
        run.log = StepLog(run.run_dir, upto=run.step if resume else None)
    distributed.barrier(run.world)
    return StepLog.read(run.run_dir, run.world.rank) if resume else ([], [])


def _check_resume(state: dict[str, Any], config: TrainConfig, world_size: int, total: int) -> None:
    # A knob the checkpoint does not name is newer than the checkpoint: the run trained with
    # that knob's default (a new knob's default does what runs did without it).
    saved = {**{f.name: f.default for f in fields(config)}, **state["config"]}
    diff = [k for k, v in config.to_json().items() if saved.get(k) != v]
    if diff:
        shown = ", ".join(f"{k}={saved.get(k)!r} (now {getattr(config, k)!r})" for k in diff)
        raise ValueError(
            f"the checkpoint was written with {shown}: resume with the run's original options, "
            "or start a new run in another directory"
        )
    if state["world_size"] != world_size:
        raise ValueError(
            f"the checkpoint was written by {state['world_size']} processes, this run has "
            f"{world_size}: resume with the same number of processes (exact data order and "
            "stitch sampling depend on it)"
        )
    saved_total = state["total_steps"]
    if saved_total != total:
        raise ValueError(
            f"the checkpoint's run has {saved_total} steps, this one would have {total}: the "
            "training data changed (--data, --max-images). Resume with the run's original data, "
            "or start a new run in another directory"
        )
