"""The pieces of a training step: the learning-rate schedule, the optimizer's parameter groups,
mixed precision and the loss."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from snnet.measure.scores import silog
from snnet.network import SNNet
from snnet.task import IGNORE_INDEX, Task
from snnet.train.config import TrainConfig


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
    and a dense task's head in ``head/...``, at the full rate (new weights, like the stitching
    layers)."""
    skip = net.no_weight_decay()
    named = dict(net.named_parameters())
    by_group = {k: {id(p) for p in ps} for k, ps in net.parameter_groups().items()}
    return [
        group
        for part, lr_scale in (
            ("anchors", config.anchor_lr_scale),
            ("layers", 1.0),
            ("lora", 1.0),
            ("head", 1.0),
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
    # on CUDA). The same arithmetic, bit for bit, and faster on the CPU for many small tensors.
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


def dense_loss(
    output: torch.Tensor, target: torch.Tensor, task: Task, config: TrainConfig
) -> torch.Tensor:
    """A dense task's loss: per-pixel cross-entropy over the pixels not labelled 255 (with the
    config's label smoothing) for segmentation, the scale-invariant log loss over the pixels
    with a depth for depth (:func:`snnet.measure.scores.silog`).

    Example:
        >>> loss = dense_loss(net(x, stitch=s), masks, net.task, TrainConfig())
    """
    if task.kind == "depth":
        return silog(output, target)
    return F.cross_entropy(
        output, target.long(), ignore_index=IGNORE_INDEX, label_smoothing=config.label_smoothing
    )


def loss_fn(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    config: TrainConfig,
    task: Task | None = None,
) -> torch.Tensor:
    """Cross-entropy with label smoothing, mixed with distillation when there are teacher logits:
    ``(1 - w)·CE + w·D``, ``w = config.distill_weight``. ``D`` is hard distillation (cross-entropy
    against the teacher's argmax, as DeiT and SN-Net do) for an external teacher
    (``config.distill == "none"``), and soft distillation ``T²·KL(softmax(t/T) ‖ softmax(s/T))``
    (Hinton et al.; T² keeps its gradients on the scale of the CE's) for the anchors' own teachers.

    Example:
        >>> loss = loss_fn(net(x, stitch=s), y, teacher(x, stitch=Stitch.anchor(s.route[-1])),
        ...                TrainConfig(distill="end"))

    A dense ``task`` takes :func:`dense_loss` (no distillation).
    """
    if task is not None and task.dense:
        return dense_loss(logits, labels, task, config)
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
