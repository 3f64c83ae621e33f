"""Training an SN-Net: one stitch per step, drawn outside ``forward``; one loop, top to bottom.

:func:`train_loop` trains any :class:`~snnet.SNNet` on any iterable of ``(images, labels)``
batches; :func:`fit` is the whole pipeline (least-squares init, epoch-seeded batches, the loop)
that ``snnet train`` runs. Launched by torchrun, both run data-parallel (see
:mod:`snnet.distributed`). Checkpoints (:mod:`snnet.checkpoint`) go to ``run_dir`` every epoch,
every ``save_every`` steps and on SIGTERM/SIGINT; ``resume=True`` continues exactly.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from snnet import distributed
from snnet.batches import EpochBatches, first_images
from snnet.checkpoint import (
    checkpoint_path,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from snnet.files import atomic_write
from snnet.lstsq import init_least_squares
from snnet.network import SNNet
from snnet.sampling import POLICIES, RANK_SAMPLING, StitchSampler
from snnet.serialize import save
from snnet.stitch import Stitch

OPTIMIZERS = ("adamw", "sgd")
AMP = ("auto", "off", "bf16", "fp16")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Every knob of a training run. Field names match the ``snnet train`` options
    (``anchor_lr_scale`` is ``--anchor-lr-scale``).

    Attributes:
        epochs: passes over the data. steps: stop after this many steps in all (None: no limit);
            the learning-rate schedule then spans ``min(steps, epochs × batches per epoch)``.
        lr, min_lr: peak and final learning rate of the stitching layers; the anchors get both
            times ``anchor_lr_scale`` (the paper: ×0.1 for Swin and ResNets, ×1 for DeiT).
        warmup: linear warmup steps (None: 5 % of the run).
        optimizer: ``"adamw"`` or ``"sgd"`` (Nesterov, ``momentum``).
        clip: max gradient norm (0: no clipping).
        sampling: ``"uniform"`` or ``"grouped"`` (cost bands of width ``gap`` GMACs; None: 8 bands).
        rank_sampling: ``"independent"``, ``"same"`` or ``"balanced"`` (see StitchSampler).
        distill_weight: with a teacher, loss = (1-w)·CE(labels) + w·CE(teacher's argmax).
        amp: ``"auto"`` (bf16, or fp16 with a grad scaler, on CUDA; off on CPU), ``"off"``,
            ``"bf16"``, ``"fp16"``.

    Example:
        >>> config = TrainConfig(epochs=5, lr=1e-3, anchor_lr_scale=0.1, sampling="grouped")
        >>> TrainConfig.from_json(config.to_json()) == config
        True
    """

    epochs: int = 1
    steps: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    anchor_lr_scale: float = 0.1
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    momentum: float = 0.9
    warmup: int | None = None
    clip: float = 1.0
    label_smoothing: float = 0.1
    sampling: str = "uniform"
    gap: float | None = None
    rank_sampling: str = "independent"
    distill_weight: float = 0.5
    amp: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        need(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        need(self.steps is None or self.steps >= 1, f"steps must be at least 1, got {self.steps}")
        need(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        need(self.lr > 0, f"lr must be positive, got {self.lr}")
        need(
            0 <= self.min_lr <= self.lr, f"min_lr must lie in [0, lr={self.lr}], got {self.min_lr}"
        )
        need(self.anchor_lr_scale >= 0, f"anchor_lr_scale must be >= 0, got {self.anchor_lr_scale}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(
            self.optimizer in OPTIMIZERS,
            f"unknown optimizer {self.optimizer!r}; choose {' or '.join(OPTIMIZERS)}",
        )
        need(0 <= self.momentum < 1, f"momentum must lie in [0, 1), got {self.momentum}")
        need(self.warmup is None or self.warmup >= 0, f"warmup must be >= 0, got {self.warmup}")
        need(self.clip >= 0, f"clip must be >= 0 (0 turns clipping off), got {self.clip}")
        need(
            0 <= self.label_smoothing < 1,
            f"label_smoothing must lie in [0, 1), got {self.label_smoothing}",
        )
        need(
            self.sampling in POLICIES,
            f"unknown sampling {self.sampling!r}; choose {' or '.join(POLICIES)}",
        )
        need(self.gap is None or self.gap > 0, f"gap must be positive (GMACs), got {self.gap}")
        need(
            self.rank_sampling in RANK_SAMPLING,
            f"unknown rank_sampling {self.rank_sampling!r}; choose one of {', '.join(RANK_SAMPLING)}",
        )
        need(
            0 <= self.distill_weight <= 1,
            f"distill_weight must lie in [0, 1], got {self.distill_weight}",
        )
        need(self.amp in AMP, f"unknown amp {self.amp!r}; choose one of {', '.join(AMP)}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown TrainConfig keys {unknown}; valid keys are {', '.join(sorted(known))}"
            )
        return cls(**d)


@dataclass
class TrainResult:
    """What a run did: ``losses`` and this rank's ``stitches`` per step (including the steps of
    the runs it resumed),
    ``interrupted``: the signal number it stopped on (0: it ran to the end), ``seconds`` spent
    in the loop itself."""

    net: SNNet
    steps: int
    epoch: int
    losses: list[float] = field(default_factory=list)
    stitches: list[str] = field(default_factory=list)
    interrupted: int = 0
    seconds: float = 0.0
    run_dir: Path | None = None


# -- pieces of a step ---------------------------------------------------------------------------


def get_lr(step: int, *, lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from ``lr`` down to ``min_lr`` at ``total``."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if step >= total:
        return min_lr
    progress = (step - warmup) / max(1, total - warmup)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def parameter_groups(net: SNNet, config: TrainConfig) -> list[dict[str, Any]]:
    """Anchors and stitching layers, each with and without weight decay. No decay for the
    anchors' own ``no_weight_decay`` names (position embeddings, class tokens), biases and every
    1-D parameter (norms), like timm's ``param_groups_weight_decay``."""
    skip = net.no_weight_decay()
    groups = []
    for part, lr_scale in (("anchors", config.anchor_lr_scale), ("layers", 1.0)):
        decay, no_decay = [], []
        for name, p in getattr(net, part).named_parameters(prefix=part):
            if not p.requires_grad:
                continue
            plain = p.ndim <= 1 or name.endswith(".bias") or name in skip
            (no_decay if plain else decay).append(p)
        for params, wd, kind in (
            (decay, config.weight_decay, "decay"),
            (no_decay, 0.0, "no_decay"),
        ):
            if params:
                groups.append(
                    {
                        "params": params,
                        "weight_decay": wd,
                        "lr_scale": lr_scale,
                        "name": f"{part}/{kind}",
                    }
                )
    return groups


def make_optimizer(net: SNNet, config: TrainConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(net, config)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None: full precision)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def loss_fn(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    config: TrainConfig,
) -> torch.Tensor:
    """Cross-entropy with label smoothing; with a teacher, mixed with hard distillation
    (cross-entropy against the teacher's argmax, as DeiT and SN-Net do)."""
    ce = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
    if teacher_logits is None:
        return ce
    distill = F.cross_entropy(logits, teacher_logits.argmax(dim=-1))
    return (1 - config.distill_weight) * ce + config.distill_weight * distill


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


def _check_resume(state: dict[str, Any], config: TrainConfig, world_size: int) -> None:
    saved = state["config"]
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
) -> TrainResult:
    """Train ``net`` on ``data``, one sampled stitch per step; checkpoints go to ``run_dir``.

    ``data`` is any iterable of ``(images, labels)`` batches, iterated once per epoch, or an
    :class:`~snnet.batches.EpochBatches` (exact order on resume without reloading skipped
    batches). Under torchrun each rank passes its own shard, with the same number of batches.

    Example:
        >>> batches = EpochBatches(fashion_mnist("train"), 128)
        >>> result = train_loop(net, batches, TrainConfig(epochs=2), run_dir="runs/a")
        >>> result = train_loop(net, batches, TrainConfig(epochs=2), run_dir="runs/a", resume=True)
    """
    world = distributed.setup(device)
    device = world.device
    run_dir = Path(run_dir) if run_dir is not None else None
    if resume and run_dir is None:
        raise ValueError("resume needs the run directory (--out) holding checkpoint.pt")
    if run_dir is not None and not resume and checkpoint_path(run_dir).exists():
        raise ValueError(
            f"{run_dir} already holds a checkpoint: pass --resume to continue it, or choose "
            "another --out"
        )
    steps_per_epoch = len(data) if hasattr(data, "__len__") else None
    if steps_per_epoch is None and config.steps is None:
        raise ValueError("data has no len(): give steps (--steps) to bound the run")
    if steps_per_epoch == 0:
        raise ValueError("data yields no batch: use more images or a smaller batch size")
    total = config.epochs * steps_per_epoch if steps_per_epoch else config.steps
    total = min(total, config.steps or total)
    warmup = config.warmup if config.warmup is not None else total // 20

    # The network, the optional teacher, the optimizer, the stitch sampler.
    net.to(device)
    if teacher is not None:
        teacher.to(device).eval().requires_grad_(False)
    optimizer = make_optimizer(net, config)
    dtype = amp_dtype(config.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    costs = {s: net.cost(s).gmacs for s in net.stitches}
    sampler = StitchSampler(
        net.stitches,
        costs,
        policy=config.sampling,
        gap=config.gap,
        rank_sampling=config.rank_sampling,
        world_size=world.world_size,
        seed=config.seed,
    )
    torch.manual_seed(config.seed + world.rank)  # dropout / drop-path differ per rank

    # Where we are: fresh, or exactly where the checkpoint left off.
    step, epoch, position, losses, history = 0, 0, 0, [], []
    if resume:
        state = load_checkpoint(run_dir)
        _check_resume(state, config, world.world_size)
        try:
            net.load_state_dict(state["model"])
        except RuntimeError as e:
            raise ValueError(
                f"the checkpoint in {run_dir} belongs to another network (other anchors or "
                f"stitching options): {str(e).splitlines()[0]}"
            ) from e
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        sampler.load_state_dict(state["sampler"])
        step, epoch, position = state["step"], state["epoch"], state["position"]
        log = state["log"][world.rank]  # every rank's own losses and stitches
        losses, history = log["losses"], log["stitches"]
        set_rng_state(state["rng"][world.rank])

    saved_at = step

    def checkpoint(*, with_model: bool) -> None:
        """All ranks call this (RNG states are gathered); rank 0 writes."""
        nonlocal saved_at
        saved_at = step
        if run_dir is None:
            return
        rngs = distributed.gather(rng_state(), world)
        logs = distributed.gather({"losses": losses, "stitches": history}, world)
        if world.is_main:
            save_checkpoint(
                run_dir,
                {
                    "config": config.to_json(),
                    "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "sampler": sampler.state_dict(),
                    "step": step,
                    "epoch": epoch,
                    "position": position,
                    "world_size": world.world_size,
                    "rng": rngs,
                    "log": logs,
                },
            )
            record = {
                "config": config.to_json(),
                "step": step,
                "total_steps": total,
                "epoch": epoch,
            }
            record |= {"position": position, "world_size": world.world_size}
            record["last_loss"] = losses[-1] if losses else None
            atomic_write(
                run_dir / "train.json", lambda f: json.dump(record, f, indent=2, sort_keys=True)
            )
            if with_model:
                save(net, run_dir / "model")
        distributed.barrier(world)

    if run_dir is not None and not resume:
        checkpoint(with_model=True)  # the starting point (e.g. least-squares init) is a run too

    model = distributed.wrap(net, world)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    net.train()
    bar = tqdm(total=total, initial=step, unit="step", disable=not (progress and world.is_main))
    interrupted = 0
    started = time.perf_counter()
    with StopOnSignal() as stop:
        while step < total and epoch < config.epochs:
            for images, labels in _epoch(data, epoch, position):
                # 1. this step's learning rate, from the step alone
                lr = get_lr(step, lr=config.lr, min_lr=config.min_lr, warmup=warmup, total=total)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group["lr_scale"]

                # 2. every rank's stitch, drawn identically on all ranks; this rank runs its own
                stitches = sampler.draw()
                stitch = stitches[world.rank]

                # 3. forward, loss, backward
                images = images.to(device, non_blocking=True)  # (B, C, H, W)
                labels = labels.to(device, non_blocking=True)  # (B,)
                with autocast:
                    logits = model(images, stitch=stitch)  # (B, classes)
                    teacher_logits = None
                    if teacher is not None:
                        with torch.no_grad():
                            teacher_logits = teacher(images)
                    loss = loss_fn(logits, labels, teacher_logits, config)
                scaler.scale(loss).backward()

                # 4. DDP averaged over all ranks; a parameter only some ranks ran is averaged over those
                if world.distributed and config.rank_sampling != "same":
                    distributed.average_over_users(net, stitches)

                # 5. clip, step; set_to_none: parameters no rank ran keep grad None, so AdamW's
                #    decoupled weight decay and momentum leave them bit-identical
                scaler.unscale_(optimizer)
                if config.clip > 0:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), config.clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)

                step, position = step + 1, position + 1
                losses.append(loss.item())
                history.append(str(stitch))
                bar.update(1)
                bar.set_postfix(
                    loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}", stitch=str(stitch), refresh=False
                )

                # 6. stop on a signal (any rank's), at the step limit, or checkpoint every few steps
                if distributed.any_rank(stop.requested, world):
                    interrupted = int(stop.signum or signal.SIGTERM)  # another rank's signal
                    break
                if step >= total:
                    break
                if save_every and step % save_every == 0:
                    checkpoint(with_model=False)
            if not interrupted and (step < total or position == steps_per_epoch):
                epoch, position = epoch + 1, 0  # the epoch's batches ran out
                checkpoint(with_model=True)
            if interrupted or step >= total:
                break
    seconds = time.perf_counter() - started
    bar.close()
    if saved_at != step:
        checkpoint(with_model=True)
    return TrainResult(net, step, epoch, losses, history, interrupted, seconds, run_dir)


# -- the pipeline -------------------------------------------------------------------------------


def num_outputs(net: SNNet) -> int:
    """Classes the anchors' heads predict (they share the classifier size by construction)."""
    size = net.anchors[0].input_size
    p = next(net.parameters())
    was_training = net.training
    net.eval()
    with torch.no_grad():
        out = net(torch.zeros(1, *size, device=p.device, dtype=p.dtype), stitch=Stitch.anchor(0))
    net.train(was_training)
    return out.shape[-1]


def fit(
    net: SNNet,
    dataset: Dataset,
    config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    ls_init: int = 256,
    save_every: int = 0,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> TrainResult:
    """The whole training pipeline: least-squares init of the stitching layers on ``ls_init``
    training images (fresh runs only), then :func:`train_loop` over epoch-seeded batches of
    ``dataset`` (sharded across ranks under torchrun).

    Example:
        >>> from snnet.data import fashion_mnist
        >>> anchors, options = snnet.resolve_anchors("fmnist")
        >>> net = snnet.SNNet(anchors, **options)
        >>> result = fit(net, fashion_mnist("train"), TrainConfig(epochs=2), run_dir="runs/fmnist")
        >>> snnet.load("runs/fmnist/model")          # what evaluate / export open
    """
    world = distributed.setup(device)
    if ls_init < 0:
        raise ValueError(f"ls_init must be >= 0 images, got {ls_init}")
    if resume and run_dir is None:
        raise ValueError("resume needs the run directory (--out) holding checkpoint.pt")
    if resume and not checkpoint_path(run_dir).exists():
        load_checkpoint(run_dir)  # raises the clear FileNotFoundError
    if not resume and run_dir is not None and checkpoint_path(run_dir).exists():
        raise ValueError(
            f"{run_dir} already holds a checkpoint: pass --resume to continue it, or choose "
            "another --out"
        )
    if len(dataset) == 0:
        raise ValueError("the training set is empty")
    images = dataset[0][0]
    expected = tuple(net.anchors[0].input_size)
    if tuple(images.shape) != expected:
        raise ValueError(
            f"the anchors take {expected} inputs but the data gives {tuple(images.shape)}: pick "
            "data of that size (--img-size for an image folder) or anchors that fit the data"
        )
    classes = getattr(dataset, "classes", None)
    outputs = num_outputs(net)
    if classes is not None and len(classes) != outputs:
        raise ValueError(
            f"the anchors predict {outputs} classes but the data has {len(classes)}: "
            f"pass --num-classes {len(classes)}"
        )
    net.to(world.device)
    if not resume and ls_init > 0:
        init_least_squares(
            net,
            first_images(dataset, ls_init, seed=config.seed),
            progress=progress and world.is_main,
        )
    batches = EpochBatches(
        dataset,
        config.batch_size,
        seed=config.seed,
        rank=world.rank,
        world_size=world.world_size,
        num_workers=num_workers,
    )
    return train_loop(
        net,
        batches,
        config,
        teacher=teacher,
        run_dir=run_dir,
        resume=resume,
        save_every=save_every,
        device=world.device,
        progress=progress,
    )
