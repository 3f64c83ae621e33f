"""Choosing the stitch for each training step, outside ``forward`` and with an explicit generator."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from snnet.stitch import Stitch


def sample_stitch(stitches: Sequence[Stitch], generator: torch.Generator) -> Stitch:
    """One stitch, uniformly.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> net.stitch = sample_stitch(net.stitches, g)
    """
    if not stitches:
        raise ValueError("no stitches to sample from")
    return stitches[int(torch.randint(len(stitches), (1,), generator=generator))]


def flops_groups(costs: dict[Stitch, float], gap: float) -> list[list[Stitch]]:
    """Stitches sorted by cost and cut into bands of width ``gap`` (SN-Netv2's resource-
    constrained sampling): sampling a band, then a stitch in it, trains every cost range equally."""
    if gap <= 0:
        raise ValueError(f"gap must be positive, got {gap}")
    order = sorted(costs, key=lambda s: (costs[s], str(s)))
    groups: list[list[Stitch]] = []
    low = None
    for s in order:
        if low is None or costs[s] >= low + gap:
            groups.append([])
            low = costs[s]
        groups[-1].append(s)
    return groups


def sample_grouped(groups: Sequence[Sequence[Stitch]], generator: torch.Generator) -> Stitch:
    """A band uniformly, then a stitch inside it uniformly."""
    band = groups[int(torch.randint(len(groups), (1,), generator=generator))]
    return band[int(torch.randint(len(band), (1,), generator=generator))]
