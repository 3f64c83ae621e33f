"""Training an SN-Net: one stitch per step, drawn outside ``forward``; one loop, top to bottom.

:func:`train_loop` trains any :class:`~snnet.SNNet` on any iterable of ``(images, labels)``
batches; :func:`snnet.train.fit` is the whole pipeline around it. Launched by torchrun, both run
data-parallel (:mod:`snnet.train.distributed`). Checkpoints (:mod:`snnet.train.checkpoint`) go
to ``run_dir`` every epoch, every ``save_every`` steps and on SIGTERM/SIGINT; ``resume=True``
continues exactly.

Every random source is seeded from ``config.seed`` (and the rank): Python's ``random`` and NumPy,
which augmentations may use, as well as torch; images loaded through
:class:`~snnet.data.EpochBatches` are seeded per (epoch, image) on top. Two runs of one command
give the same weights on one machine and thread count, and a resumed run equals an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

import snnet.train.distributed as distributed
from snnet.network import SNNet
from snnet.rundir import RunDir
from snnet.stitch import Stitch
from snnet.train.checkpoint import Diverged, Run, check_run, open_log, restore, save_state
from snnet.train.config import TrainConfig
from snnet.train.distributed import World
from snnet.train.importance import StitchImportance, saliencies
from snnet.train.monitor import Monitor, Validation
from snnet.train.sampling import StitchSampler
from snnet.train.step import amp_dtype, get_lr, loss_fn, make_optimizer, set_lr
from snnet.train.teachers import TeacherLogits, make_teachers, teacher_anchor


@dataclass
class TrainResult:
    """What a run did: this rank's ``losses`` and ``stitches`` per step (including the steps of
    the runs it resumed, read back from ``steps.csv``), ``interrupted``: the signal number it
    stopped on (0: it ran to the end), ``seconds`` spent in the loop itself. :func:`~snnet.train.fit`
    adds the anchors' top-1 (%) on its check images before and after training."""

    net: SNNet
    steps: int
    epoch: int
    losses: list[float] = field(default_factory=list)
    stitches: list[str] = field(default_factory=list)
    interrupted: int = 0
    seconds: float = 0.0
    run_dir: Path | None = None
    total_steps: int = 0
    anchors_before: list[float] | None = None
    anchors_after: list[float] | None = None


@dataclass(frozen=True, kw_only=True)
class LoopOptions:
    """How a run is carried out, as opposed to what it learns (:class:`TrainConfig`)."""

    run_dir: Path | None = None
    resume: bool = False
    save_every: int = 0
    progress: bool = True
    val: Validation | None = None
    val_every: int = 1
    teacher: nn.Module | None = None
    #: The stitches to sample (default: every stitch the network trains).
    stitches: Sequence[Stitch] | None = None
    desc: str | None = None


@dataclass
class Learner:
    """What a step runs: the (possibly DDP-wrapped) model, precision, teachers, the parameters
    to clip."""

    model: nn.Module
    autocast: Any
    trainable: list[nn.Parameter]
    teacher: nn.Module | None = None
    teachers: SNNet | None = None
    cached: TeacherLogits | None = None


class StopOnSignal:
    """Turns the first SIGTERM/SIGINT into a request to stop at the next step boundary (a second
    SIGINT interrupts at once). Handlers are restored on exit; a no-op outside the main thread."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum != 0

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _epoch(data: Any, epoch: int, start: int) -> Iterator:
    """The batches of ``epoch`` from position ``start``. ``data`` is either callable as
    ``data(epoch, start)`` (EpochBatches: exact order, nothing loaded twice) or any iterable,
    iterated again each epoch, with the first ``start`` batches skipped on resume."""
    if callable(data):
        return iter(data(epoch, start))
    for owner in (data, getattr(data, "batch_sampler", None), getattr(data, "sampler", None)):
        sampler = getattr(owner, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # a DataLoader over a DistributedSampler
            sampler.set_epoch(epoch)
            break
    return itertools.islice(iter(data), start, None)


def _length(data: Any, config: TrainConfig) -> tuple[int | None, int]:
    """Batches per epoch (None: unknown) and steps of the whole run."""
    steps_per_epoch = len(data) if hasattr(data, "__len__") else None
    if steps_per_epoch is None and config.steps is None:
        raise ValueError("data has no len(): give steps (--steps) to bound the run")
    if steps_per_epoch == 0:
        raise ValueError("data yields no batch: use more images or a smaller batch size")
    total = config.epochs * steps_per_epoch if steps_per_epoch else config.steps
    return steps_per_epoch, min(total, config.steps or total)


# -- a run's set-up -----------------------------------------------------------------------------
def start_run(
    net: SNNet,
    config: TrainConfig,
    world: World,
    run_dir: Path | None,
    total: int,
    stitches: Sequence[Stitch] | None = None,
) -> Run:
    """A fresh run: the optimizer, the grad scaler (fp16 only) and the stitch sampler over
    ``stitches`` (default: every stitch the network trains; PEFT mode leaves out the anchors)."""
    dtype = amp_dtype(config.amp, world.device)
    stitches = list(stitches) if stitches is not None else net.trained_stitches()
    importance = None
    if config.sampling == "importance":
        importance = StitchImportance(
            stitches,
            momentum=config.importance_momentum,
            warmup=config.importance_warmup,
            floor=config.importance_floor,
            temperature=config.importance_temperature,
        )
    sampler = StitchSampler(
        stitches,
        {s: net.cost(s).gmacs for s in stitches},
        policy=config.sampling,
        gap=config.gap,
        rank_sampling=config.rank_sampling,
        world_size=world.world_size,
        seed=config.seed,
        importance=importance,
        anchor_probability=config.anchor_probability,
    )
    scaler = torch.amp.GradScaler(world.device.type, enabled=dtype == torch.float16)
    return Run(config, world, net, make_optimizer(net, config), scaler, sampler, run_dir, total)


def _learner(net: SNNet, config: TrainConfig, world: World, options: LoopOptions) -> Learner:
    """The model a step runs, with its teachers. Soft distillation's teachers are copied before
    :func:`restore`: they are the anchors as the run started."""
    teacher = options.teacher
    if net.task.dense and (teacher is not None or config.distill != "none"):
        raise ValueError(
            f"distillation (--teacher, --distill) teaches class logits; a {net.task.kind} "
            "network trains on its targets alone: drop it"
        )
    if net.task.dense and config.cache_teachers:
        raise ValueError("--cache-teachers caches class logits: drop it for a dense task")
    if teacher is not None and config.distill != "none":
        raise ValueError(
            f"distill={config.distill!r} distils from the anchors themselves: drop the external "
            "teacher (--teacher), or set distill to 'none' to distil from it"
        )
    if teacher is not None:
        teacher.to(world.device).eval().requires_grad_(False)
    teachers = None
    if config.distill != "none":
        teachers = make_teachers(net, world, options.run_dir, resume=options.resume)
    dtype = amp_dtype(config.amp, world.device)
    autocast = torch.autocast(world.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    # Listed once: net.parameters() walks every module, a cost paid at every step otherwise.
    trainable = [p for p in net.parameters() if p.requires_grad]
    return Learner(distributed.wrap(net, world), autocast, trainable, teacher, teachers)


def _seed(config: TrainConfig, world: World) -> None:
    """Dropout / drop-path differ per rank; Python's and NumPy's generators serve augmentations
    that draw from them (a resume restores all three from the checkpoint)."""
    torch.manual_seed(config.seed + world.rank)
    random.seed(config.seed + world.rank)
    np.random.seed(config.seed + world.rank)


# -- the loop -----------------------------------------------------------------------------------
def train_loop(
    net: SNNet,
    data: Iterable[tuple[torch.Tensor, torch.Tensor]] | Callable[..., Iterable],
    config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    save_every: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    val: Validation | None = None,
    val_every: int = 1,
) -> TrainResult:
    """Train ``net`` on ``data``, one sampled stitch per step; checkpoints go to ``run_dir``.

    ``data`` is any iterable of ``(images, labels)`` batches, iterated once per epoch, or an
    :class:`~snnet.data.EpochBatches` (exact order on resume without reloading skipped
    batches). Under torchrun each rank passes its own shard, with the same number of batches.
    A non-finite loss stops the run with :class:`Diverged` before anything saves it.
    ``val`` (a :class:`~snnet.train.monitor.Validation`) runs every ``val_every`` epochs and at
    the end.

    Example:
        >>> batches = EpochBatches(fashion_mnist("train"), 128)
        >>> result = train_loop(net, batches, TrainConfig(epochs=2), run_dir="runs/a")
        >>> result = train_loop(net, batches, TrainConfig(epochs=2), run_dir="runs/a", resume=True)
    """
    world = distributed.setup(device)
    run_dir = check_run(run_dir, resume=resume, save_every=save_every)
    options = LoopOptions(
        run_dir=run_dir,
        resume=resume,
        save_every=save_every,
        progress=progress,
        val=val,
        val_every=val_every,
        teacher=teacher,
    )
    return run_loop(net, data, config, world, options)


def run_loop(
    net: SNNet, data: Any, config: TrainConfig, world: World, options: LoopOptions
) -> TrainResult:
    """:func:`train_loop` once its options are checked: set up (or restore) the run, train
    until the step limit, the last epoch or a signal, then save what the run reached."""
    steps_per_epoch, total = _length(data, config)
    net.to(world.device)
    learner = _learner(net, config, world, options)
    run = start_run(net, config, world, options.run_dir, total, options.stitches)
    _seed(config, world)
    if options.resume:
        restore(run)
    run.losses, run.history = open_log(run, resume=options.resume)  # this rank's steps so far
    monitor = Monitor(  # validation, val.csv and TensorBoard: the main rank only
        options.val,
        options.run_dir,
        val_every=options.val_every,
        resumed_at=run.step if options.resume else None,
        enabled=world.is_main,
    )
    if options.run_dir is not None and not options.resume:  # the starting point is saved too
        save_state(run, with_model=True)
    if config.cache_teachers and learner.teachers is not None:
        learner.cached = TeacherLogits(learner.teachers, data, world.device, learner.autocast)
    net.train()
    bar = tqdm(
        total=total,
        initial=run.step,
        unit="step",
        desc=options.desc,
        disable=not (options.progress and world.is_main),
    )
    started = time.perf_counter()
    with StopOnSignal() as stop, bar, run.log or contextlib.nullcontext(), monitor:
        interrupted = _epochs(run, data, learner, monitor, bar, stop, steps_per_epoch, options)
    seconds = time.perf_counter() - started
    if run.saved_at != run.step or run.model_at != run.step:
        save_state(run, with_model=True)  # also mends a model/ older than the checkpoint
    if options.run_dir is not None and world.is_main and run.sampler.importance is not None:
        run.sampler.importance.save(RunDir(options.run_dir).importance, step=run.step)
    return TrainResult(
        net,
        run.step,
        run.epoch,
        run.losses,
        run.history,
        interrupted,
        seconds,
        options.run_dir,
        total_steps=total,
    )


def _epochs(
    run: Run,
    data: Any,
    learner: Learner,
    monitor: Monitor,
    bar: Any,
    stop: StopOnSignal,
    steps_per_epoch: int | None,
    options: LoopOptions,
) -> int:
    """Epoch after epoch until the run's step limit or last epoch; returns the signal that
    stopped it (0: none). Validates and checkpoints at each epoch's end."""
    config, world, total = run.config, run.world, run.total
    warmup = config.warmup if config.warmup is not None else total // 20
    while run.step < total and run.epoch < config.epochs:
        for images, labels in _epoch(data, run.epoch, run.position):
            # 1. this step's learning rate, from the step alone
            lr = get_lr(run.step, lr=config.lr, min_lr=config.min_lr, warmup=warmup, total=total)
            set_lr(run.optimizer, lr)
            # 2. every rank's stitch, drawn identically on all ranks; this rank runs its own
            stitches = run.sampler.draw()
            step_losses = _step(run, learner, images, labels, stitches)
            _record(run, step_losses, stitches, lr, monitor, bar)
            # 7. stop on a signal (any rank's), at the step limit, or checkpoint every few steps
            if distributed.any_rank(stop.requested, world):
                return int(stop.signum or signal.SIGTERM)  # the signal may be another rank's
            if run.step >= total:
                break
            if options.save_every and run.step % options.save_every == 0:
                save_state(run, with_model=False)
        if run.step < total or run.position == steps_per_epoch:
            run.epoch, run.position = run.epoch + 1, 0  # the epoch's batches ran out
            if monitor.due(run.epoch, run.step, finished=run.step >= total):
                monitor.validate(run.net, run.epoch, run.step, autocast=learner.autocast)
            save_state(run, with_model=True)
    if run.step >= total and monitor.due(run.epoch, run.step, True):
        monitor.validate(run.net, run.epoch, run.step, autocast=learner.autocast)  # mid-epoch end
    return 0


def _step(
    run: Run,
    learner: Learner,
    images: torch.Tensor,
    labels: torch.Tensor,
    stitches: list[Stitch],
) -> list[float]:
    """One optimisation step of this rank's stitch; returns every rank's loss."""
    config, world, net = run.config, run.world, run.net
    stitch = stitches[world.rank]
    # 3. forward, loss
    images = images.to(world.device, non_blocking=True)  # (B, C, H, W)
    labels = labels.to(world.device, non_blocking=True)  # (B,), or dense targets (B, H, W)
    with learner.autocast:
        logits = learner.model(images, stitch=stitch)  # (B, classes), or a dense prediction
        teacher_logits = _teacher_logits(run, learner, images, stitch)
        loss = loss_fn(logits, labels, teacher_logits, config, net.task)
    # 4. backward; DDP averaged over all ranks, rescaled to the ranks that ran each parameter
    run.scaler.scale(loss).backward()
    if world.distributed and config.rank_sampling != "same":
        distributed.average_over_users(net, stitches)
    # 5. clip, step; set_to_none: parameters no rank ran keep grad None, so AdamW's decoupled
    #    weight decay and momentum leave them bit-identical
    run.scaler.unscale_(run.optimizer)
    # 5a. importance sampling: the saliency of every rank's stitch, read (never changed) from
    #     the unscaled, unclipped gradients DDP made identical on all ranks
    if run.sampler.importance is not None:
        run.sampler.observe(saliencies(net, stitches))
    if config.clip > 0:
        torch.nn.utils.clip_grad_norm_(learner.trainable, config.clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return distributed.gather(loss.item(), world)


def _teacher_logits(
    run: Run, learner: Learner, images: torch.Tensor, stitch: Stitch
) -> torch.Tensor | None:
    """The teacher's logits of this batch: the external teacher's, or the frozen anchor that
    teaches ``stitch`` (from the cache when there is one); None without distillation."""
    if learner.teacher is not None:
        with torch.no_grad():
            return learner.teacher(images)
    if learner.teachers is None:
        return None
    own = teacher_anchor(stitch, run.config, len(run.net.anchors))
    if learner.cached is not None:
        return learner.cached(own, run.epoch, run.position)
    with torch.no_grad():
        return learner.teachers(images, stitch=Stitch.anchor(own))


def _record(
    run: Run,
    step_losses: list[float],
    stitches: list[Stitch],
    lr: float,
    monitor: Monitor,
    bar: Any,
) -> None:
    """6. The step in memory (this rank), in steps.csv (every rank), TensorBoard and the bar; a
    non-finite loss on any rank stops every rank before anything saves it."""
    if not all(math.isfinite(x) for x in step_losses):
        raise Diverged(
            f"the loss became {step_losses} at step {run.step + 1} (lr {lr:.3g}): training "
            "diverged; start a new run (another --out) with a lower --lr or gradient clipping "
            "(--clip)"
        )
    stitch = stitches[run.world.rank]
    run.step, run.position = run.step + 1, run.position + 1
    run.last_loss = step_losses[run.world.rank]
    run.losses.append(run.last_loss)
    run.history.append(str(stitch))
    if run.log is not None:
        run.log.append(run.step, [str(s) for s in stitches], step_losses, lr)
    monitor.step(run.step, run.last_loss, lr)
    bar.update(1)
    extra = {"val": monitor.summary} if monitor.summary else {}
    bar.set_postfix(
        loss=f"{run.last_loss:.4f}", lr=f"{lr:.2e}", stitch=str(stitch), **extra, refresh=False
    )
