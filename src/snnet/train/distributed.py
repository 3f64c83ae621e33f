"""Several processes training one SN-Net (torchrun + DDP), each rank possibly on its own stitch.

torchrun sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`setup` reads them (never a
``--local_rank`` argument) and joins the process group: nccl on GPUs, gloo on CPUs.

Why ``find_unused_parameters=True`` in every rank-sampling mode: a stitch never runs every
parameter (anchor 0 alone leaves the other anchors and all stitching layers idle), so DDP must
learn each step which parameters received no gradient, even when every rank runs the same stitch.
With ``same`` nothing more is needed. With ``independent`` or ``balanced``, a parameter may run on
only some ranks; DDP then averages over all ``W`` ranks, counting zeros for the others, which
shrinks that parameter's step by ``n/W`` compared with training on one rank. :func:`average_over_users`
rescales those gradients to the mean over the ``n`` ranks that ran the parameter. Parameters no rank
ran keep ``grad=None``, so the optimizer leaves them exactly as they were.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from snnet.network import SNNet
from snnet.parts import Part
from snnet.stitch import Stitch
from snnet.threads import usable_cores


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``world_size``, on ``device``."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(device: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """``device`` if given, else this rank's GPU when there is one, else the CPU."""
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device cuda requested but no GPU is visible: use --device cpu")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
        return device
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def setup(device: str | torch.device | None = None) -> World:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); safe to call twice.

    Example:
        $ torchrun --nproc_per_node=4 -m snnet train fmnist --out runs/fmnist
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return World(0, 0, 1, pick_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device, local_rank)
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Ranks sharing a machine's cores: more threads than cores makes every rank crawl.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        torch.set_num_threads(max(1, usable_cores() // local_world))
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(rank, local_rank, world_size, device)


def wrap(net: SNNet, world: World) -> nn.Module:
    """``net`` itself on one rank, else DDP over it (see the module docstring for why
    ``find_unused_parameters`` is always on)."""
    if not world.distributed:
        return net
    device_ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=device_ids, find_unused_parameters=True)


@torch.no_grad()
def average_over_users(net: SNNet, stitches: list[Stitch]) -> None:
    """After DDP's backward (gradients summed over ranks, divided by ``W``): rescale each
    parameter run by ``n`` of the ``W`` ranks' ``stitches`` to the mean over those ``n``.

    Every rank computes the same counts from the same list, so gradients stay identical."""
    world_size = len(stitches)
    # By part first: the ranks' stitches share most parts, and each part's parameters are then
    # looked up once per step (nothing cached, so weights assigned since are seen).
    ranks_of_part: dict[Part, set[int]] = {}
    for rank, s in enumerate(stitches):
        for part in net.parts(s):
            ranks_of_part.setdefault(part, set()).add(rank)
    users: dict[int, set[int]] = {}  # parameter id -> the ranks that ran it
    for part, ranks in ranks_of_part.items():
        for p in net.part_parameters(part):
            users.setdefault(id(p), set()).update(ranks)
    for p in net.parameters():
        n = len(users.get(id(p), ()))
        if p.grad is not None and 0 < n < world_size:
            p.grad.mul_(world_size / n)


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank if ``flag`` is true on any rank (e.g. one rank got SIGTERM)."""
    if not world.distributed:
        return flag
    t = torch.tensor([int(flag)], device=world.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather(obj: object, world: World) -> list[object]:
    """``obj`` from every rank, in rank order, on every rank."""
    if not world.distributed:
        return [obj]
    out: list[object] = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
