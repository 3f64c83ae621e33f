"""Watching a training run: validation on a held-out split, and the logs a person reads.

:class:`Validation` evaluates the anchors and a few stitches spread over cost on at most
``max_images`` held-out images, in eval mode, without touching any random-number state the run
trains with: a run trains to the same weights with and without it. :class:`ValLog` keeps every
validation in ``run_dir/val.csv`` (cut back to the checkpoint on resume, like ``steps.csv``), and
:class:`Board` writes TensorBoard logs to ``run_dir/tb/`` (training loss and learning rate per
step, validation metric and loss per stitch: top-1, or a dense task's mIoU or AbsRel).
:class:`Monitor` bundles the three for the loop.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from snnet.data.batches import in_order, load_batches
from snnet.data.images import ImageSet
from snnet.files import read_csv_rows, rewrite_csv
from snnet.measure.evaluate import StitchTree
from snnet.measure.scores import scorer_for
from snnet.network import SNNet
from snnet.rundir import RunDir
from snnet.stitch import Stitch

logger = logging.getLogger(__name__)


def spread_stitches(net: SNNet, n: int = 3) -> list[Stitch]:
    """The anchors plus ``n`` stitches (not anchors) spread evenly over cost, cheapest first.

    Example:
        >>> spread_stitches(net, 3)      # e.g. [0, 1, 2, 0:3-1:4, 1:2-2:3, 1:8-2:9]
    """
    anchors = [s for s in net.stitches if s.is_anchor]
    others = sorted((s for s in net.stitches if not s.is_anchor), key=lambda s: net.cost(s).macs)
    if n <= 0 or not others:
        return anchors
    n = min(n, len(others))
    # the middles of n equal slices of the cost order: none at the very ends, where anchors sit
    picked = [others[(2 * k + 1) * len(others) // (2 * n)] for k in range(n)]
    return anchors + list(dict.fromkeys(picked))


@contextlib.contextmanager
def untouched_rng() -> Iterator[None]:
    """Python's, NumPy's and torch's (CPU and CUDA) generator states are as before, on exit."""
    py, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


@dataclass(frozen=True)
class Score:
    """One stitch on the validation images: the task's metric (top-1 %, mIoU %, AbsRel) and the
    mean loss per image."""

    value: float
    loss: float


class Validation:
    """The anchors and a few stitches (:func:`spread_stitches`) on ``images``, or on a seeded
    stratified sample of ``max_images`` of them (every class in proportion: a steadier score
    from few images), all stitches in one pass (:class:`~snnet.measure.evaluate.StitchTree`).

    Example:
        >>> val = Validation(net, image_folder("data/val", config, strict=True), max_images=1000)
        >>> val(net)     # {Stitch('0'): Score(value=85.1, loss=0.43), ...}  top-1 %
    """

    def __init__(
        self,
        net: SNNet,
        images: ImageSet,
        *,
        stitches: list[Stitch] | None = None,
        max_images: int | None = 1000,
        batch_size: int = 256,
        num_workers: int | None = None,
        seed: int = 0,
    ) -> None:
        if len(images) == 0:
            raise ValueError("the validation set is empty")
        if max_images is not None and max_images < 1:
            raise ValueError(f"validation needs at least 1 image, got max_images={max_images}")
        self.stitches = stitches if stitches is not None else spread_stitches(net)
        self.images = images.sample(max_images, seed=seed) if max_images else images
        self.batch_size, self.num_workers = batch_size, num_workers
        self.metric = net.task.metric
        self.scorer = scorer_for(net.task)

    def __len__(self) -> int:
        return len(self.images)

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rows = in_order(len(self.images), self.batch_size)
        return load_batches(self.images, rows, num_workers=self.num_workers)

    def __call__(self, net: SNNet, *, autocast: Any = None) -> dict[Stitch, Score]:
        """Every chosen stitch's :class:`Score`; ``net`` is in eval mode meanwhile and gets its
        mode back, and no generator state of the caller changes."""
        device = next(net.parameters()).device
        tree = StitchTree(net, self.stitches)
        stats = self.scorer.zeros(len(self.stitches), device=device)
        losses = torch.zeros(len(self.stitches), device=device)
        order = {s: i for i, s in enumerate(tree.stitches)}
        was_training = net.training
        net.eval()
        try:
            with untouched_rng(), torch.no_grad(), autocast or contextlib.nullcontext():
                for images, targets in self._batches():
                    images, targets = images.to(device), targets.to(device)  # (B, C, H, W)
                    for stitch, out in tree.run(images):  # logits, or a dense prediction
                        i = order[stitch]
                        stats[i] += self.scorer.batch(out, targets)
                        losses[i] += self.scorer.loss(out, targets)
        finally:
            net.train(was_training)
        n = len(self)
        return {
            s: Score(
                self.scorer.values(stats[order[s]].cpu(), n)[self.metric],
                float(losses[order[s]]) / n,
            )
            for s in tree.stitches
        }


class ValLog:
    """``run_dir/val.csv``: one row per validation and stitch (``epoch``, ``step``, ``stitch``,
    the task's ``metric``, ``loss``), written and synced as each validation ends. ``upto=step``
    keeps the rows of steps up to a checkpoint's (a resumed run's file equals an uninterrupted
    run's).

    Example:
        >>> log = ValLog("runs/a", upto=None)
        >>> log.append(1, 468, {Stitch.anchor(0): Score(85.1, 0.43)})
        >>> ValLog.read("runs/a")[-1]
        {'epoch': 1, 'step': 468, 'stitch': '0', 'top1': 85.1, 'loss': 0.43}
    """

    COLUMNS = ("epoch", "step", "stitch", "top1", "loss")

    def __init__(self, run_dir: str | Path, *, upto: int | None, metric: str = "top1") -> None:
        self.path = RunDir(run_dir).val_log
        rows = [] if upto is None else [r for r in self._rows(self.path) if int(r[1]) <= upto]
        rewrite_csv(self.path, (*self.COLUMNS[:3], metric, "loss"), rows)
        self.last_step = int(rows[-1][1]) if rows else None
        self.last = {r[2]: float(r[3]) for r in rows if int(r[1]) == self.last_step}

    @staticmethod
    def _rows(path: Path) -> list[list[str]]:
        return read_csv_rows(path, ValLog.COLUMNS)

    @classmethod
    def read(cls, run_dir: str | Path) -> list[dict[str, Any]]:
        path = RunDir(run_dir).val_log
        if not path.is_file():
            return []
        with open(path, newline="") as f:
            metric = next(csv.reader(f))[3]
        return [
            {"epoch": int(e), "step": int(s), "stitch": st, metric: float(t), "loss": float(lo)}
            for e, s, st, t, lo in cls._rows(path)
        ]

    def append(self, epoch: int, step: int, scores: dict[Stitch, Score]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerows(
                [epoch, step, str(s), repr(sc.value), repr(sc.loss)] for s, sc in scores.items()
            )
            f.flush()
            os.fsync(f.fileno())
        self.last_step = step
        self.last = {str(s): sc.value for s, sc in scores.items()}


class Board:
    """TensorBoard logs in ``run_dir/tb/``: ``train/loss`` and ``train/lr`` per step,
    ``val/METRIC/STITCH`` (``top1``, ``miou``, ``absrel``) and ``val/loss/STITCH`` per
    validation. A resumed run purges what the
    interrupted one wrote after its checkpoint (``purge_step``). Without the tensorboard
    package it logs nothing and says so once."""

    def __init__(self, run_dir: str | Path, *, purge_step: int | None) -> None:
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("tensorboard is not installed: no TensorBoard logs in %s", run_dir)
            return
        self.writer = SummaryWriter(str(RunDir(run_dir).tensorboard), purge_step=purge_step)

    def step(self, step: int, loss: float, lr: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)

    def validation(self, step: int, scores: dict[Stitch, Score], metric: str = "top1") -> None:
        if self.writer is not None:
            for s, sc in scores.items():
                self.writer.add_scalar(f"val/{metric}/{s}", sc.value, step)
                self.writer.add_scalar(f"val/loss/{s}", sc.loss, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Monitor:
    """What the loop reports to, on the main rank: validation every ``val_every`` epochs (and
    at the run's last step), ``val.csv`` and TensorBoard when the run has a directory.
    ``resumed_at``: the checkpoint's step of a resumed run (None: a new run)."""

    def __init__(
        self,
        validation: Validation | None,
        run_dir: Path | None,
        *,
        val_every: int = 1,
        resumed_at: int | None = None,
        enabled: bool = True,
    ) -> None:
        if val_every < 1:
            raise ValueError(f"--val-every must be at least 1 epoch, got {val_every}")
        self.validation = validation if enabled else None
        self.val_every = val_every
        self.log = self.board = None
        self.validated_at: int | None = None
        self.last: dict[str, float] = {}
        if enabled and run_dir is not None:
            if validation is not None or (RunDir(run_dir).val_log.is_file()):
                metric = validation.metric if validation is not None else "top1"
                self.log = ValLog(run_dir, upto=resumed_at, metric=metric)
                self.validated_at, self.last = self.log.last_step, self.log.last
            purge = resumed_at + 1 if resumed_at is not None else None
            self.board = Board(run_dir, purge_step=purge)

    def step(self, step: int, loss: float, lr: float) -> None:
        if self.board is not None:
            self.board.step(step, loss, lr)

    def due(self, epoch: int, step: int, finished: bool) -> bool:
        """Validate now: the run has a validation set, this step has none yet, and an epoch
        that is a multiple of ``val_every`` just ended, or the run just finished."""
        if self.validation is None or self.validated_at == step:
            return False
        return finished or epoch % self.val_every == 0

    def validate(self, net: SNNet, epoch: int, step: int, *, autocast: Any = None) -> None:
        scores = self.validation(net, autocast=autocast)
        self.validated_at = step
        self.last = {str(s): sc.value for s, sc in scores.items()}
        if self.log is not None:
            self.log.append(epoch, step, scores)
        if self.board is not None:
            self.board.validation(step, scores, self.validation.metric)

    @property
    def summary(self) -> str | None:
        """The last validation's mean metric over its stitches, for the progress bar."""
        if not self.last:
            return None
        mean = sum(self.last.values()) / len(self.last)
        metric = self.validation.metric if self.validation is not None else "top1"
        return f"{mean:.4f}" if metric == "absrel" else f"{mean:.2f}%"

    def close(self) -> None:
        if self.board is not None:
            self.board.close()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
