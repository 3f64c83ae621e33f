"""Training an SN-Net: one stitch per step, drawn outside ``forward``; one loop, top to bottom.

:func:`train_loop` trains any :class:`~snnet.SNNet` on any iterable of ``(images, labels)``
batches; :func:`fit` is the whole pipeline (least-squares init, epoch-seeded batches, the loop)
that ``snnet train`` runs. Launched by torchrun, both run data-parallel (see
:mod:`snnet.train.distributed`). Checkpoints (:mod:`snnet.train.checkpoint`) go to ``run_dir`` every epoch,
every ``save_every`` steps and on SIGTERM/SIGINT; ``resume=True`` continues exactly.

What a run writes into ``run_dir`` (``checkpoint.pt``, ``steps.csv``, ``train.json``, ``model/``)
and how it resumes lives in :mod:`snnet.train.checkpoint`; validation on a held-out split, ``val.csv``
and TensorBoard logs in :mod:`snnet.train.monitor`; this module holds the knobs, the pieces of a step,
the loop and the pipeline.

Every random source is seeded from ``config.seed`` (and the rank): Python's ``random`` and NumPy,
which augmentations may use, as well as torch; images loaded through :class:`EpochBatches` are
seeded per (epoch, image) on top. Two runs of one command give the same weights on one machine
and thread count, and a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from snnet.batches import EpochBatches, first_images
from snnet.data import check_classes
from snnet.files import atomic_write
from snnet.lstsq import init_least_squares
from snnet.network import SNNet
from snnet.preprocess import DataConfig
from snnet.rundir import RunDir
from snnet.settings import knob as _knob
from snnet.stitch import Stitch
from snnet.train import distributed
from snnet.train.checkpoint import Diverged, Run, check_run, open_log, restore, save_state
from snnet.train.distributed import World
from snnet.train.importance import StitchImportance, saliencies
from snnet.train.monitor import Monitor, Validation
from snnet.train.sampling import POLICIES, RANK_SAMPLING, StitchSampler

OPTIMIZERS = ("adamw", "sgd")
AMP = ("auto", "off", "bf16", "fp16")
#: Soft distillation from the network's own anchors (see TrainConfig.distill).
DISTILL = ("none", "end", "largest")
#: The anchors' weights at the start of a run with soft distillation: the teachers' source on resume.
TEACHER_FILE = "teacher.safetensors"


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Every knob of a training run. Each field is also an ``snnet train`` option of the same
    name (``anchor_lr_scale`` is ``--anchor-lr-scale``), with the field's help text; the
    learning-rate schedule spans ``min(steps, epochs × batches per epoch)``.

    Example:
        >>> config = TrainConfig(epochs=5, lr=1e-3, anchor_lr_scale=0.1, sampling="grouped")
        >>> TrainConfig.from_json(config.to_json()) == config
        True
    """

    epochs: int = _knob(1, "passes over the data")
    steps: int | None = _knob(None, "stop after this many steps in all (default: no limit)")
    batch_size: int = _knob(128, "images per step and process")
    lr: float = _knob(1e-3, "stitching layers' peak learning rate")
    min_lr: float = _knob(1e-5, "stitching layers' final learning rate (cosine schedule)")
    anchor_lr_scale: float = _knob(
        0.1, "anchors' learning rates = the layers' × this (paper: 0.1 Swin/ResNets, 1 DeiT)"
    )
    weight_decay: float = _knob(0.05, "AdamW/SGD weight decay (not on biases, norms, embeddings)")
    optimizer: str = _knob("adamw", "adamw, or sgd (Nesterov, --momentum)", OPTIMIZERS)
    momentum: float = _knob(0.9, "SGD (Nesterov) momentum")
    warmup: int | None = _knob(None, "linear warmup steps (default: 5% of the run)")
    clip: float = _knob(1.0, "max gradient norm (0: no clipping)")
    label_smoothing: float = _knob(0.1, "label smoothing of the cross-entropy")
    sampling: str = _knob(
        "uniform",
        "stitch sampling: uniform, grouped (cost bands of --gap GMACs), or importance (ESTA: "
        "by each stitch's estimated importance, ranked in RUN/importance.json)",
        POLICIES,
    )
    gap: float | None = _knob(None, "cost-band width in GMACs (grouped, balanced; default 8 bands)")
    rank_sampling: str = _knob(
        "independent",
        "under torchrun: each rank its own stitch, the same stitch, or stitches of one cost band",
        RANK_SAMPLING,
    )
    distill_weight: float = _knob(
        0.5,
        "with a teacher: loss = (1-w)·CE(labels) + w·CE(teacher's argmax) for --teacher, "
        "+ w·T²·KL(teacher/T ‖ student/T) for --distill",
    )
    amp: str = _knob(
        "auto", "mixed precision: auto (bf16, or fp16 with a grad scaler, on GPUs only)", AMP
    )
    seed: int = _knob(0, "seed of the batches' order, stitch sampling and dropout")
    importance_momentum: float = _knob(
        0.9, "importance sampling: moving-average weight on a stitch's past importance"
    )
    importance_warmup: int = _knob(
        100, "importance sampling: steps of uniform sampling while the estimate forms"
    )
    importance_floor: float = _knob(
        0.2, "importance sampling: share of draws that stay uniform (every stitch keeps floor/N)"
    )
    importance_temperature: float = _knob(
        1.0, "importance sampling: > 1 flattens, < 1 sharpens the importance weights"
    )
    distill: str = _knob(
        "none",
        "soft distillation from the anchors as they were before training: end (each stitch from "
        "the anchor it ends in, each anchor from itself) or largest (from the last anchor)",
        DISTILL,
    )
    distill_temperature: float = _knob(2.0, "temperature T of --distill's soft targets")
    anchor_probability: float | None = _knob(
        None, "draw an anchor's own path with this probability, else the sampling policy's stitch"
    )
    cache_teachers: bool = _knob(
        False,
        "--distill on un-augmented images held in memory (Fashion-MNIST): compute the teachers' "
        "logits of every training image once instead of at every step",
    )

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        for f in fields(self):  # inf and nan pass most range checks below, and train to nan
            value = getattr(self, f.name)
            if isinstance(value, float):
                need(math.isfinite(value), f"{f.name} must be a finite number, got {value}")
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
        need(
            0 <= self.importance_momentum < 1,
            f"importance_momentum must lie in [0, 1), got {self.importance_momentum}",
        )
        need(
            self.importance_warmup >= 0,
            f"importance_warmup must be >= 0, got {self.importance_warmup}",
        )
        need(
            0 < self.importance_floor <= 1,
            f"importance_floor must lie in (0, 1] (every stitch keeps a chance), "
            f"got {self.importance_floor}",
        )
        need(
            self.importance_temperature > 0,
            f"importance_temperature must be positive, got {self.importance_temperature}",
        )
        need(
            self.distill in DISTILL,
            f"unknown distill {self.distill!r}; choose one of {', '.join(DISTILL)}",
        )
        need(
            self.distill_temperature > 0,
            f"distill_temperature must be positive, got {self.distill_temperature}",
        )
        need(
            self.anchor_probability is None or 0 <= self.anchor_probability <= 1,
            f"anchor_probability must lie in [0, 1], got {self.anchor_probability}",
        )

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
    """What a run did: this rank's ``losses`` and ``stitches`` per step (including the steps of
    the runs it resumed, read back from ``steps.csv``), ``interrupted``: the signal number it
    stopped on (0: it ran to the end), ``seconds`` spent in the loop itself."""

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


def parameter_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    *,
    weight_decay: float,
    no_weight_decay: Collection[str] = (),
    lr_scale: float = 1.0,
    name: str = "params",
) -> list[dict[str, Any]]:
    """Optimizer groups ``name/decay`` and ``name/no_decay`` of any module's named parameters.
    No decay for the ``no_weight_decay`` names (position embeddings, class tokens), biases and
    every 1-D parameter (norms), like timm's ``param_groups_weight_decay``. Each group carries
    ``lr_scale``: the loop sets a group's learning rate to the schedule's times this.

    Example:
        >>> groups = parameter_groups(vit.named_parameters(), weight_decay=0.05,
        ...                           no_weight_decay=vit.no_weight_decay())
        >>> optimizer = torch.optim.AdamW(groups, lr=1e-3)
    """
    decay, no_decay = [], []
    for pname, p in named_parameters:
        if not p.requires_grad:
            continue
        plain = p.ndim <= 1 or pname.endswith(".bias") or pname in no_weight_decay
        (no_decay if plain else decay).append(p)
    groups = []
    for params, wd, kind in ((decay, weight_decay, "decay"), (no_decay, 0.0, "no_decay")):
        if params:
            groups.append(
                {
                    "params": params,
                    "weight_decay": wd,
                    "lr_scale": lr_scale,
                    "name": f"{name}/{kind}",
                }
            )
    return groups


def network_groups(net: SNNet, config: TrainConfig) -> list[dict[str, Any]]:
    """An SN-Net's groups: ``anchors/...`` at ``anchor_lr_scale`` × the learning rate, and
    ``layers/...`` (the stitching layers) at the full rate. Frozen parameters (PEFT mode's
    anchors, low-rank layers' ``W0``) are in no group; PEFT mode's LoRA trains in ``lora/...``
    at the full rate (new weights, like the stitching layers)."""
    skip = net.no_weight_decay()
    named = dict(net.named_parameters())
    by_group = {k: {id(p) for p in ps} for k, ps in net.parameter_groups().items()}
    return [
        group
        for part, lr_scale in (
            ("anchors", config.anchor_lr_scale),
            ("layers", 1.0),
            ("lora", 1.0),
        )
        for group in parameter_groups(
            [(n, p) for n, p in named.items() if id(p) in by_group.get(part, ())],
            weight_decay=config.weight_decay,
            no_weight_decay=skip,
            lr_scale=lr_scale,
            name=part,
        )
    ]


def make_optimizer(net: SNNet, config: TrainConfig) -> torch.optim.Optimizer:
    groups = network_groups(net, config)
    # foreach: one batched call per group, not a Python loop over tensors (PyTorch picks it only
    # on CUDA). The same arithmetic, bit for bit, and ~5 ms less per demo step on the CPU.
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, nesterov=True, foreach=True
        )
    return torch.optim.AdamW(groups, lr=config.lr, foreach=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's learning rate: ``lr`` times the group's ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


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
    """Cross-entropy with label smoothing, mixed with distillation when there are teacher logits:
    ``(1 - w)·CE + w·D``, ``w = config.distill_weight``. ``D`` is hard distillation (cross-entropy
    against the teacher's argmax, as DeiT and SN-Net do) for an external teacher
    (``config.distill == "none"``), and soft distillation ``T²·KL(softmax(t/T) ‖ softmax(s/T))``
    (Hinton et al.; T² keeps its gradients on the scale of the CE's) for the anchors' own teachers.

    Example:
        >>> loss = loss_fn(net(x, stitch=s), y, teacher(x, stitch=Stitch.anchor(s.route[-1])),
        ...                TrainConfig(distill="end"))
    """
    ce = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
    if teacher_logits is None:
        return ce
    if config.distill == "none":
        distill = F.cross_entropy(logits, teacher_logits.argmax(dim=-1))
    else:
        t = config.distill_temperature
        distill = (
            t
            * t
            * F.kl_div(
                F.log_softmax(logits.float() / t, dim=-1),
                F.log_softmax(teacher_logits.float() / t, dim=-1),
                reduction="batchmean",
                log_target=True,
            )
        )
    return (1 - config.distill_weight) * ce + config.distill_weight * distill


def teacher_anchor(stitch: Stitch, config: TrainConfig, num_anchors: int) -> int:
    """The anchor whose frozen copy teaches ``stitch`` under soft distillation: the anchor the
    stitch ends in (``"end"``; an anchor's own path is taught by its starting self, which holds
    it near its pretrained function), or the largest, last anchor (``"largest"``)."""
    return stitch.route[-1] if config.distill == "end" else num_anchors - 1


def make_teachers(net: SNNet, world: World, run_dir: Path | None, *, resume: bool) -> SNNet:
    """A frozen copy of ``net`` whose anchors are the anchors as this run started (after
    least-squares init, which moves only the stitching layers). A fresh run writes those weights
    to ``run_dir/teacher.safetensors``; a resumed run reads them back, so its teachers are the
    ones the interrupted run used. The copy never enters the checkpoint."""
    from safetensors.torch import load_file, save_file

    teachers = copy.deepcopy(net)
    path = RunDir(run_dir).training / TEACHER_FILE if run_dir is not None else None
    if resume and path is not None:
        if not path.is_file():
            raise FileNotFoundError(
                f"--resume with --distill needs the run's {path} (the anchors as the run started); "
                "it is missing: start a new run"
            )
        teachers.anchors.load_state_dict(load_file(str(path)))
    elif path is not None and world.is_main:
        state = {k: v.detach().cpu().contiguous() for k, v in net.anchors.state_dict().items()}
        atomic_write(path, lambda tmp: save_file(state, tmp), mode="path")
    return teachers.eval().requires_grad_(False)


class TeacherLogits:
    """The frozen teachers' logits of every training image, each anchor's computed once, the
    first time it teaches (with ``distill="largest"`` only the last anchor ever does).

    Why: a teacher is frozen and un-augmented images are the same every epoch, so its logits
    are too; on the demo family the teacher's forward was ~30 % of a step. Computed in fixed
    chunks in image order, so a resumed run reads exactly what the uninterrupted one read (but
    not bit for bit what a forward over the step's batch would give).
    """

    def __init__(
        self, teachers: SNNet, batches: EpochBatches, device: torch.device, autocast: Any
    ) -> None:
        if not (hasattr(batches, "order") and hasattr(batches, "dataset")):
            raise ValueError("cache_teachers needs the data as EpochBatches (fit builds them)")
        dataset = batches.dataset
        if not hasattr(dataset, "get_batch") or getattr(dataset, "augment", True):
            raise ValueError(
                "cache_teachers needs un-augmented images held in memory (snnet's Fashion-MNIST "
                "without augmentation); drop --cache-teachers for this data"
            )
        self.teachers, self.batches = teachers, batches
        self.device, self.autocast = device, autocast
        self.logits: dict[int, torch.Tensor] = {}  # anchor -> (N, classes)
        self._order: tuple[int, torch.Tensor] | None = None

    def __call__(self, anchor: int, epoch: int, position: int) -> torch.Tensor:
        """Anchor ``anchor``'s logits of batch ``position`` of ``epoch``."""
        if anchor not in self.logits:
            dataset = self.batches.dataset
            with torch.no_grad(), self.autocast:
                self.logits[anchor] = torch.cat(
                    [
                        self.teachers(
                            dataset.get_batch(i)[0].to(self.device), stitch=Stitch.anchor(anchor)
                        )
                        for i in torch.arange(len(dataset)).split(1024)
                    ]
                ).float()
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self.batches.order(epoch).to(self.device))
        return self.logits[anchor][self._order[1][position]]


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


# -- a run's set-up -----------------------------------------------------------------------------


def start_run(
    net: SNNet, config: TrainConfig, world: World, run_dir: Path | None, total: int
) -> Run:
    """A fresh run: the optimizer, the grad scaler (fp16 only) and the stitch sampler."""
    dtype = amp_dtype(config.amp, world.device)
    stitches = net.trained_stitches()  # PEFT mode: the anchors have nothing to train
    sampler = StitchSampler(
        stitches,
        {s: net.cost(s).gmacs for s in stitches},
        policy=config.sampling,
        gap=config.gap,
        rank_sampling=config.rank_sampling,
        world_size=world.world_size,
        seed=config.seed,
        importance=StitchImportance(
            stitches,
            momentum=config.importance_momentum,
            warmup=config.importance_warmup,
            floor=config.importance_floor,
            temperature=config.importance_temperature,
        )
        if config.sampling == "importance"
        else None,
        anchor_probability=config.anchor_probability,
    )
    scaler = torch.amp.GradScaler(world.device.type, enabled=dtype == torch.float16)
    return Run(config, world, net, make_optimizer(net, config), scaler, sampler, run_dir, total)


def _length(data: Any, config: TrainConfig) -> tuple[int | None, int]:
    """Batches per epoch (None: unknown) and steps of the whole run."""
    steps_per_epoch = len(data) if hasattr(data, "__len__") else None
    if steps_per_epoch is None and config.steps is None:
        raise ValueError("data has no len(): give steps (--steps) to bound the run")
    if steps_per_epoch == 0:
        raise ValueError("data yields no batch: use more images or a smaller batch size")
    total = config.epochs * steps_per_epoch if steps_per_epoch else config.steps
    return steps_per_epoch, min(total, config.steps or total)


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
    :class:`~snnet.batches.EpochBatches` (exact order on resume without reloading skipped
    batches). Under torchrun each rank passes its own shard, with the same number of batches.
    A non-finite loss stops the run with :class:`Diverged` before anything saves it.
    ``val`` (a :class:`~snnet.train.monitor.Validation`) runs every ``val_every`` epochs and at the end.

    Example:
        >>> batches = EpochBatches(fashion_mnist("train"), 128)
        >>> result = train_loop(net, batches, TrainConfig(epochs=2), run_dir="runs/a")
        >>> result = train_loop(net, batches, TrainConfig(epochs=2), run_dir="runs/a", resume=True)
    """
    world = distributed.setup(device)
    run_dir = check_run(run_dir, resume=resume, save_every=save_every)
    return _train(
        net, data, config, world, teacher, run_dir, resume, save_every, progress, val, val_every
    )


def _train(
    net: SNNet,
    data: Any,
    config: TrainConfig,
    world: World,
    teacher: nn.Module | None,
    run_dir: Path | None,
    resume: bool,
    save_every: int,
    progress: bool,
    val: Validation | None = None,
    val_every: int = 1,
) -> TrainResult:
    steps_per_epoch, total = _length(data, config)
    warmup = config.warmup if config.warmup is not None else total // 20
    net.to(world.device)
    if teacher is not None and config.distill != "none":
        raise ValueError(
            f"distill={config.distill!r} distils from the anchors themselves: drop the external "
            "teacher (--teacher), or set distill to 'none' to distil from it"
        )
    if teacher is not None:
        teacher.to(world.device).eval().requires_grad_(False)
    teachers = None
    if config.distill != "none":  # before restore(): the anchors as they started
        teachers = make_teachers(net, world, run_dir, resume=resume)
    run = start_run(net, config, world, run_dir, total)
    # Dropout / drop-path differ per rank; Python's and NumPy's generators serve augmentations
    # that draw from them (a resume restores all three from the checkpoint).
    torch.manual_seed(config.seed + world.rank)
    random.seed(config.seed + world.rank)
    np.random.seed(config.seed + world.rank)
    old_log = restore(run) if resume else None
    losses, history = open_log(run, resume=resume, old_log=old_log)  # this rank's steps so far
    monitor = Monitor(  # validation, val.csv and TensorBoard: the main rank only
        val,
        run_dir,
        val_every=val_every,
        resumed_at=run.step if resume else None,
        enabled=world.is_main,
    )
    if run_dir is not None and not resume:  # the starting point (least-squares init) is saved too
        save_state(run, with_model=True)

    model = distributed.wrap(net, world)
    dtype = amp_dtype(config.amp, world.device)
    autocast = torch.autocast(world.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    cached = None
    if config.cache_teachers and teachers is not None:
        cached = TeacherLogits(teachers, data, world.device, autocast)
    net.train()
    # Listed once: net.parameters() walks every module, ~4 ms a step on the demo's network.
    trainable = [p for p in net.parameters() if p.requires_grad]
    bar = tqdm(total=total, initial=run.step, unit="step", disable=not (progress and world.is_main))
    interrupted, started = 0, time.perf_counter()
    with StopOnSignal() as stop, bar, run.log or contextlib.nullcontext(), monitor:
        while run.step < total and run.epoch < config.epochs:
            for images, labels in _epoch(data, run.epoch, run.position):
                # 1. this step's learning rate, from the step alone
                lr = get_lr(
                    run.step, lr=config.lr, min_lr=config.min_lr, warmup=warmup, total=total
                )
                set_lr(run.optimizer, lr)

                # 2. every rank's stitch, drawn identically on all ranks; this rank runs its own
                stitches = run.sampler.draw()
                stitch = stitches[world.rank]

                # 3. forward, loss
                images = images.to(world.device, non_blocking=True)  # (B, C, H, W)
                labels = labels.to(world.device, non_blocking=True)  # (B,)
                with autocast:
                    logits = model(images, stitch=stitch)  # (B, classes)
                    teacher_logits = None
                    if teacher is not None:
                        with torch.no_grad():
                            teacher_logits = teacher(images)
                    elif teachers is not None:
                        own = teacher_anchor(stitch, config, len(net.anchors))
                        if cached is not None:
                            teacher_logits = cached(own, run.epoch, run.position)
                        else:
                            with torch.no_grad():
                                teacher_logits = teachers(images, stitch=Stitch.anchor(own))
                    loss = loss_fn(logits, labels, teacher_logits, config)

                # 4. backward; DDP averaged over all ranks, rescaled to the ranks that ran
                #    each parameter
                run.scaler.scale(loss).backward()
                if world.distributed and config.rank_sampling != "same":
                    distributed.average_over_users(net, stitches)

                # 5. clip, step; set_to_none: parameters no rank ran keep grad None, so
                #    AdamW's decoupled weight decay and momentum leave them bit-identical
                run.scaler.unscale_(run.optimizer)
                # 5a. importance sampling: the saliency of every rank's stitch, read (never
                #     changed) from the unscaled, unclipped gradients DDP made identical on all ranks
                if run.sampler.importance is not None:
                    run.sampler.observe(saliencies(net, stitches))
                if config.clip > 0:
                    torch.nn.utils.clip_grad_norm_(trainable, config.clip)
                run.scaler.step(run.optimizer)
                run.scaler.update()
                run.optimizer.zero_grad(set_to_none=True)

                # 6. record the step: in memory (this rank) and in steps.csv (every rank); a
                #    non-finite loss on any rank stops every rank before anything saves it
                step_losses = distributed.gather(loss.item(), world)
                if not all(math.isfinite(x) for x in step_losses):
                    raise Diverged(
                        f"the loss became {step_losses} at step {run.step + 1} (lr {lr:.3g}): "
                        "training diverged; start a new run (another --out) with a lower --lr "
                        "or gradient clipping (--clip)"
                    )
                run.step, run.position = run.step + 1, run.position + 1
                run.last_loss = step_losses[world.rank]
                losses.append(run.last_loss)
                history.append(str(stitch))
                if run.log is not None:
                    run.log.append(run.step, [str(s) for s in stitches], step_losses, lr)
                monitor.step(run.step, run.last_loss, lr)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{run.last_loss:.4f}",
                    lr=f"{lr:.2e}",
                    stitch=str(stitch),
                    **({"val": monitor.summary} if monitor.summary else {}),
                    refresh=False,
                )

                # 7. stop on a signal (any rank's), at the step limit, or checkpoint every few steps
                if distributed.any_rank(stop.requested, world):
                    interrupted = int(stop.signum or signal.SIGTERM)  # another rank's signal
                    break
                if run.step >= total:
                    break
                if save_every and run.step % save_every == 0:
                    save_state(run, with_model=False)
            if not interrupted and (run.step < total or run.position == steps_per_epoch):
                run.epoch, run.position = run.epoch + 1, 0  # the epoch's batches ran out
                if monitor.due(run.epoch, run.step, finished=run.step >= total):
                    monitor.validate(net, run.epoch, run.step, autocast=autocast)
                save_state(run, with_model=True)
            if interrupted or run.step >= total:
                break
        if not interrupted and run.step >= total and monitor.due(run.epoch, run.step, True):
            monitor.validate(net, run.epoch, run.step, autocast=autocast)  # ended mid-epoch
    seconds = time.perf_counter() - started
    if run.saved_at != run.step or run.model_at != run.step:
        save_state(run, with_model=True)  # also mends a model/ older than the checkpoint
    if run_dir is not None and world.is_main and run.sampler.importance is not None:
        run.sampler.importance.save(RunDir(run_dir).importance, step=run.step)
    return TrainResult(net, run.step, run.epoch, losses, history, interrupted, seconds, run_dir)


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


def check_data(net: SNNet, dataset: Dataset) -> None:
    """The data fits the anchors: not empty, their input size, their number of classes."""
    if len(dataset) == 0:
        raise ValueError("the training set is empty")
    images = dataset[0][0]
    expected = tuple(net.anchors[0].input_size)
    if tuple(images.shape) != expected:
        raise ValueError(
            f"the anchors take {expected} inputs but the data gives {tuple(images.shape)}: pick "
            "data of that size (--img-size for an image folder) or anchors that fit the data"
        )
    check_classes(dataset, num_outputs(net), what="the training data")


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
    val: Dataset | None = None,
    val_every: int = 1,
    val_images: int | None = 1000,
    ls_dataset: Dataset | None = None,
    data_config: DataConfig | None = None,
) -> TrainResult:
    """The whole training pipeline: least-squares init of the stitching layers on ``ls_init``
    training images (fresh runs only), then the training loop over epoch-seeded batches of
    ``dataset`` (sharded across ranks under torchrun). Every option and the data are checked
    before anything is computed or written.

    With ``val`` (a held-out dataset), the anchors and three stitches spread over cost are
    evaluated on up to ``val_images`` of its images every ``val_every`` epochs and at the end
    (``val.csv``, TensorBoard, the progress bar); it changes no trained weight.
    Least squares reads ``ls_dataset`` (the same images as ``dataset`` without augmentation,
    e.g. :attr:`snnet.data.Data.plain`; default ``dataset``). ``data_config``, the preprocessing
    (default: ``dataset.data_config`` when the dataset has one, as snnet's datasets do), is
    saved with the network, so evaluate and serve use what training used.

    Example:
        >>> from snnet.data import fashion_mnist
        >>> anchors, options = snnet.resolve_anchors("fmnist")
        >>> net = snnet.SNNet(anchors, **options)
        >>> result = fit(net, fashion_mnist("train"), TrainConfig(epochs=2), run_dir="runs/fmnist")
        >>> snnet.load("runs/fmnist/model")          # what evaluate / export open
    """
    world = distributed.setup(device)
    run_dir = check_run(
        run_dir, resume=resume, save_every=save_every, ls_init=ls_init, num_workers=num_workers
    )
    check_data(net, dataset)
    validation = None
    if val is not None:
        if val_every < 1:
            raise ValueError(f"--val-every must be at least 1 epoch, got {val_every}")
        validation = Validation(
            net, val, max_images=val_images, num_workers=num_workers, seed=config.seed
        )
        check_data(net, val)
    ls_dataset = dataset if ls_dataset is None else ls_dataset
    if len(ls_dataset) != len(dataset):
        raise ValueError(
            f"ls_dataset has {len(ls_dataset)} images, the training set {len(dataset)}: give "
            "the training images without augmentation"
        )
    data_config = data_config or getattr(dataset, "data_config", None)
    if data_config is not None:
        net.data_config = data_config
    batches = EpochBatches(
        dataset,
        config.batch_size,
        seed=config.seed,
        rank=world.rank,
        world_size=world.world_size,
        num_workers=num_workers,
    )
    net.to(world.device)
    if not resume and ls_init > 0:
        init_least_squares(
            net,
            first_images(ls_dataset, ls_init, seed=config.seed),
            progress=progress and world.is_main,
        )
    return _train(
        net,
        batches,
        config,
        world,
        teacher,
        run_dir,
        resume,
        save_every,
        progress,
        validation,
        val_every,
    )
