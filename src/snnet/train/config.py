"""``TrainConfig``: every knob of a training run, one definition.

Each field carries its help text, choices and valid range as metadata (:func:`snnet.settings.knob`):
``snnet train``'s options are generated from it, :func:`snnet.settings.check` reads it, and a
checkpoint records the config as JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from snnet.settings import check, knob

OPTIMIZERS = ("adamw", "sgd")
#: How a step's stitch is drawn (see :class:`snnet.train.sampling.StitchSampler`).
POLICIES = ("uniform", "grouped", "importance")
#: How ranks of a data-parallel run draw their stitches.
RANK_SAMPLING = ("independent", "same", "balanced")
AMP = ("auto", "off", "bf16", "fp16")
#: Soft distillation from the network's own anchors (see TrainConfig.distill).
DISTILL = ("none", "end", "largest")


Rule = tuple[str, Callable[[Any], bool]]
AT_LEAST_1: Rule = ("be at least 1", lambda v: v >= 1)
NON_NEGATIVE: Rule = ("be >= 0", lambda v: v >= 0)
POSITIVE: Rule = ("be positive", lambda v: v > 0)
PROBABILITY: Rule = ("lie in [0, 1]", lambda v: 0 <= v <= 1)
BELOW_1: Rule = ("lie in [0, 1)", lambda v: 0 <= v < 1)


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

    epochs: int = knob(1, "passes over the data", rule=AT_LEAST_1)
    steps: int | None = knob(
        None, "stop after this many steps in all (default: no limit)", rule=AT_LEAST_1
    )
    batch_size: int = knob(128, "images per step and process", rule=AT_LEAST_1)
    lr: float = knob(1e-3, "stitching layers' peak learning rate", rule=POSITIVE)
    min_lr: float = knob(
        1e-5, "stitching layers' final learning rate (cosine schedule)", rule=NON_NEGATIVE
    )
    anchor_lr_scale: float = knob(
        0.1,
        "anchors' learning rates = the layers' × this (paper: 0.1 Swin/ResNets, 1 DeiT)",
        rule=NON_NEGATIVE,
    )
    weight_decay: float = knob(
        0.05, "AdamW/SGD weight decay (not on biases, norms, embeddings)", rule=NON_NEGATIVE
    )
    optimizer: str = knob("adamw", "adamw, or sgd (Nesterov, --momentum)", OPTIMIZERS)
    momentum: float = knob(0.9, "SGD (Nesterov) momentum", rule=BELOW_1)
    warmup: int | None = knob(
        None, "linear warmup steps (default: 5% of the run)", rule=NON_NEGATIVE
    )
    clip: float = knob(1.0, "max gradient norm (0: no clipping)", rule=NON_NEGATIVE)
    label_smoothing: float = knob(0.1, "label smoothing of the cross-entropy", rule=BELOW_1)
    sampling: str = knob(
        "uniform",
        "stitch sampling: uniform, grouped (cost bands of --gap GMACs), or importance (ESTA: "
        "by each stitch's estimated importance, ranked in RUN/importance.json)",
        POLICIES,
    )
    gap: float | None = knob(
        None, "cost-band width in GMACs (grouped, balanced; default 8 bands)", rule=POSITIVE
    )
    rank_sampling: str = knob(
        "independent",
        "under torchrun: each rank its own stitch, the same stitch, or stitches of one cost band",
        RANK_SAMPLING,
    )
    distill_weight: float = knob(
        0.5,
        "with a teacher: loss = (1-w)·CE(labels) + w·CE(teacher's argmax) for --teacher, "
        "+ w·T²·KL(teacher/T ‖ student/T) for --distill",
        rule=PROBABILITY,
    )
    amp: str = knob(
        "auto", "mixed precision: auto (bf16, or fp16 with a grad scaler, on GPUs only)", AMP
    )
    seed: int = knob(0, "seed of the batches' order, stitch sampling and dropout")
    importance_momentum: float = knob(
        0.9,
        "importance sampling: moving-average weight on a stitch's past importance",
        rule=BELOW_1,
    )
    importance_warmup: int = knob(
        100,
        "importance sampling: steps of uniform sampling while the estimate forms",
        rule=NON_NEGATIVE,
    )
    importance_floor: float = knob(
        0.2,
        "importance sampling: share of draws that stay uniform (every stitch keeps floor/N)",
        rule=("lie in (0, 1] (every stitch keeps a chance)", lambda v: 0 < v <= 1),
    )
    importance_temperature: float = knob(
        1.0,
        "importance sampling: > 1 flattens, < 1 sharpens the importance weights",
        rule=POSITIVE,
    )
    distill: str = knob(
        "none",
        "soft distillation from the anchors as they were before training: end (each stitch from "
        "the anchor it ends in, each anchor from itself) or largest (from the last anchor)",
        DISTILL,
    )
    distill_temperature: float = knob(
        2.0, "temperature T of --distill's soft targets", rule=POSITIVE
    )
    anchor_probability: float | None = knob(
        None,
        "draw an anchor's own path with this probability, else the sampling policy's stitch",
        rule=PROBABILITY,
    )
    cache_teachers: bool = knob(
        False,
        "--distill on un-augmented images held in memory (Fashion-MNIST): compute the teachers' "
        "logits of every training image once instead of at every step",
    )
    anchor_epochs: int = knob(
        0,
        "fine-tune each anchor alone for this many epochs before training the SN-Net (anchors "
        "re-headed for your classes or input size; 0: off)",
        rule=NON_NEGATIVE,
    )

    def __post_init__(self) -> None:
        check(self)
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr must lie in [0, lr={self.lr}], got {self.min_lr}")

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
