"""Choosing the stitch for each training step, outside ``forward`` and with an explicit generator."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from snnet.stitch import Stitch
from snnet.train.bands import default_gap, flops_groups
from snnet.train.config import POLICIES, RANK_SAMPLING
from snnet.train.importance import StitchImportance


def sample_stitch(stitches: Sequence[Stitch], generator: torch.Generator) -> Stitch:
    """One stitch, uniformly.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> net.stitch = sample_stitch(net.stitches, g)
    """
    if not stitches:
        raise ValueError("no stitches to sample from")
    return stitches[int(torch.randint(len(stitches), (1,), generator=generator))]


def sample_grouped(groups: Sequence[Sequence[Stitch]], generator: torch.Generator) -> Stitch:
    """A band uniformly, then a stitch inside it uniformly."""
    band = groups[int(torch.randint(len(groups), (1,), generator=generator))]
    return band[int(torch.randint(len(band), (1,), generator=generator))]


class StitchSampler:
    """Picks every rank's stitch for each training step, identically on every rank.

    ``policy`` sets how often each stitch trains: ``"uniform"`` (the paper), ``"grouped"``
    (SN-Netv2: a cost band of width ``gap`` uniformly, then a stitch in it) or ``"importance"``
    (ESTA: in proportion to each stitch's estimated importance, ``importance``, which the training
    loop feeds through :meth:`observe`; see :mod:`snnet.train.importance`). ``rank_sampling`` sets
    how the ``world_size`` ranks of one step relate:

    - ``"independent"``: each rank its own draw (the reference code).
    - ``"same"``: every rank runs the same stitch.
    - ``"balanced"``: every rank draws from the same cost band, each its own stitch inside it, so
      no rank waits for one much larger. The band is chosen so that each rank's stitch still
      follows ``policy`` (for ``uniform``, a band with probability proportional to its size).

    ``anchor_probability`` p makes every draw an anchor's own path with probability p, else the
    policy's stitch (None: the policy alone).

    Every rank draws the whole world's stitches from generators seeded the same everywhere, so
    each rank knows which stitch every other rank runs (gradient averaging needs it), and the
    sampler state is the same on every rank (one checkpoint restores them all).

    Example:
        >>> sampler = StitchSampler(net.stitches, costs, policy="grouped", gap=0.5, seed=0)
        >>> stitch = sampler.draw()[0]          # this step's stitch for rank 0
    """

    def __init__(
        self,
        stitches: Sequence[Stitch],
        costs: dict[Stitch, float] | None = None,
        *,
        policy: str = "uniform",
        gap: float | None = None,
        rank_sampling: str = "independent",
        world_size: int = 1,
        seed: int = 0,
        importance: StitchImportance | None = None,
        anchor_probability: float | None = None,
    ) -> None:
        if anchor_probability is not None and not 0 <= anchor_probability <= 1:
            raise ValueError(f"anchor_probability must lie in [0, 1], got {anchor_probability}")
        if policy not in POLICIES:
            raise ValueError(f"unknown sampling policy {policy!r}; choose {' or '.join(POLICIES)}")
        if rank_sampling not in RANK_SAMPLING:
            raise ValueError(
                f"unknown rank sampling {rank_sampling!r}; choose one of {', '.join(RANK_SAMPLING)}"
            )
        if not stitches:
            raise ValueError("no stitches to sample from")
        if world_size < 1:
            raise ValueError(f"world_size must be at least 1, got {world_size}")
        self.stitches = list(stitches)
        self.policy, self.rank_sampling, self.world_size = policy, rank_sampling, world_size
        self.groups: list[list[Stitch]] = [self.stitches]
        if policy == "grouped" or rank_sampling == "balanced":
            if costs is None:
                raise ValueError(f"{policy}/{rank_sampling} sampling needs the stitches' costs")
            costs = {s: float(costs[s]) for s in self.stitches}
            self.gap = gap if gap is not None else default_gap(costs)
            self.groups = flops_groups(costs, self.gap)
        self._group_of = {s: i for i, g in enumerate(self.groups) for s in g}
        #: The importance estimate (policy "importance" only; None otherwise).
        self.importance: StitchImportance | None = None
        if policy == "importance":
            self.importance = importance or StitchImportance(self.stitches)
            if self.importance.stitches != self.stitches:
                raise ValueError("the importance estimate is for other stitches than the sampler's")
        # With anchor_probability p, a draw is an anchor's own path (uniformly among the anchors)
        # with probability p, else the policy's stitch: the shared blocks keep training on the
        # anchors' own paths instead of serving stitches almost every step. None draws nothing
        # extra from the generators.
        self.anchor_probability = anchor_probability
        self.anchors = [s for s in self.stitches if s.is_anchor]
        if anchor_probability and not self.anchors:
            raise ValueError("anchor_probability needs anchor paths among the stitches")
        # One generator shared by the world, one per rank; all of them live on every rank.
        self.shared = torch.Generator().manual_seed(seed)
        self.per_rank = [
            torch.Generator().manual_seed(seed + 1_000_003 * (r + 1)) for r in range(world_size)
        ]

    def _pick(self, g: torch.Generator) -> Stitch:
        p = self.anchor_probability
        if p is not None and float(torch.rand((), generator=g)) < p:
            return sample_stitch(self.anchors, g)
        if self.policy == "grouped":
            return sample_grouped(self.groups, g)
        if self.policy == "importance":
            return self._pick_important(g)
        return sample_stitch(self.stitches, g)

    def draw(self) -> list[Stitch]:
        """This step's stitch for each rank: ``draw()[rank]``."""
        if self.rank_sampling == "same":
            return [self._pick(self.shared)] * self.world_size
        if self.rank_sampling == "independent":
            return [self._pick(g) for g in self.per_rank]
        # balanced: the band from the shared generator, each rank's stitch from its own
        band = self.groups[self._group_of[self._pick(self.shared)]]
        return [band[int(torch.randint(len(band), (1,), generator=g))] for g in self.per_rank]

    def _pick_important(self, g: torch.Generator) -> Stitch:
        assert self.importance is not None
        return self.importance.pick(g)

    def observe(self, saliency: dict[Stitch, float]) -> None:
        """One step's saliencies of the stitches it ran (policy ``"importance"``; see
        :func:`snnet.train.importance.saliencies`); they update the importance estimate the next draws
        follow. Every rank passes the same values, so the sampler stays the same on every rank."""
        if self.importance is None:
            raise ValueError(f"the {self.policy!r} sampling policy keeps no importance estimate")
        self.importance.observe(saliency)

    def state_dict(self) -> dict:
        state = {
            "shared": self.shared.get_state(),
            "per_rank": [g.get_state() for g in self.per_rank],
        }
        if self.importance is not None:
            state["importance"] = self.importance.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if len(state["per_rank"]) != self.world_size:
            raise ValueError(
                f"the sampler state is for {len(state['per_rank'])} ranks, this run has "
                f"{self.world_size}: resume with the same number of processes"
            )
        self.shared.set_state(state["shared"])
        for g, s in zip(self.per_rank, state["per_rank"], strict=True):
            g.set_state(s)
        if self.importance is not None:
            if "importance" not in state:
                raise ValueError(
                    "the checkpoint holds no importance estimate: it was not trained with "
                    "sampling importance; resume with the run's original --sampling"
                )
            self.importance.load_state_dict(state["importance"])
