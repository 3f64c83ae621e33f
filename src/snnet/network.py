"""The stitchable network: anchors plus stitching layers, running one stitch at a time."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import nn

from snnet.adapters import Anchor, as_anchor
from snnet.cost import Cost, count_macs, count_params
from snnet.layers import StitchingLayer
from snnet.space import SpaceConfig, StitchSpace
from snnet.stitch import Stitch


class Step(NamedTuple):
    """Run blocks ``start..stop-1`` of ``anchor``, then the stitching layer ``layer`` (if any)."""

    anchor: int
    start: int
    stop: int
    layer: str | None


def run_plan(
    steps: Sequence[Step],
    anchors: Sequence[Anchor],
    layers: Mapping[str, nn.Module],
    x: torch.Tensor,
) -> torch.Tensor:
    """One stitch's forward: the first anchor's stem, each step's blocks then stitching layer,
    the last anchor's head. Shared by :class:`SNNet` and an exported stitch."""
    h = anchors[steps[0].anchor].forward_stem(x)
    for step in steps:
        h = anchors[step.anchor].forward_blocks(h, step.start, step.stop)
        if step.layer is not None:
            h = layers[step.layer](h)
    return anchors[steps[-1].anchor].forward_head(h)


class SNNet(nn.Module):
    """Anchors ordered small to large, joined by stitching layers; every stitch is a network.

    ``forward`` runs the current stitch (``net.stitch``), or the one passed per call, which
    touches no shared state and is safe for concurrent callers. Training never samples inside
    ``forward``: pick the stitch outside (see :mod:`snnet.sampling`).

    Example:
        >>> net = SNNet([deit_ti, deit_s, deit_b])          # timm models or snnet.Anchor
        >>> len(net.stitches)
        71
        >>> net.stitch = "0:5-1:6"                           # switch: no weights move
        >>> logits = net(images)
        >>> with net.using("2"):                             # temporarily the largest anchor
        ...     logits = net(images)
        >>> logits = net(images, stitch="1")                 # per call
    """

    def __init__(
        self,
        anchors: Sequence[nn.Module | Anchor],
        *,
        config: SpaceConfig | None = None,
        **space_options: Any,
    ) -> None:
        super().__init__()
        if config is not None and space_options:
            raise ValueError("pass either config=SpaceConfig(...) or keyword options, not both")
        config = config or SpaceConfig(**space_options)
        self.anchors = nn.ModuleList([as_anchor(a) for a in anchors])
        self.space = StitchSpace.build(list(self.anchors), config)
        self.layers = nn.ModuleDict()
        for (f, e), positions in self.space.positions.items():
            for p in positions:
                src = self.anchors[f].feature_shapes()[p.cut.out_block + 1]
                dst = self.anchors[e].feature_shapes()[p.cut.in_block]
                if p.layer not in self.layers:
                    device = next(self.anchors[e].parameters()).device
                    self.layers[p.layer] = StitchingLayer(src, dst, device=device)
                elif (self.layers[p.layer].src, self.layers[p.layer].dst) != (src, dst):
                    raise ValueError(
                        f"cuts sharing layer {p.layer} see different shapes; set layer_per_position=True"
                    )
        self._plans: dict[Stitch, tuple[Step, ...]] = {}
        self._part_costs: list[tuple[Cost, list[Cost], Cost]] | None = None
        self._layer_costs: dict[str, Cost] = {}
        self._costs: dict[Stitch, Cost] = {}
        self._check_order()
        self._stitch = self.space.stitches[len(self.anchors) - 1]  # the largest anchor

    # -- the stitch ---------------------------------------------------------------------------
    @property
    def stitches(self) -> tuple[Stitch, ...]:
        return self.space.stitches

    @property
    def stitch(self) -> Stitch:
        """The stitch ``forward`` runs when none is passed. Setting it moves no weights."""
        return self._stitch

    @stitch.setter
    def stitch(self, stitch: Stitch | str) -> None:
        # Straight into __dict__: nn.Module.__setattr__'s checks would double the switch cost.
        self.__dict__["_stitch"] = self._resolve(stitch)

    def _resolve(self, stitch: Stitch | str) -> Stitch:
        if stitch.__class__ is Stitch and stitch in self.space:
            return stitch
        return self.space.check(stitch)

    @contextmanager
    def using(self, stitch: Stitch | str) -> Iterator[SNNet]:
        """Run ``stitch`` inside the block; the previous stitch comes back even on error."""
        previous, self.stitch = self._stitch, stitch
        try:
            yield self
        finally:
            self.__dict__["_stitch"] = previous

    def plan(self, stitch: Stitch | str) -> tuple[Step, ...]:
        """The steps ``forward`` takes for ``stitch`` (stem of ``steps[0].anchor`` first, head of
        ``steps[-1].anchor`` last)."""
        stitch = self._resolve(stitch)
        plan = self._plans.get(stitch)
        if plan is None:
            segs = stitch.segments(self.space.num_blocks)
            layers = [self.space.layer_for(f, e, c) for f, e, c in stitch.hops] + [None]
            plan = self._plans[stitch] = tuple(
                Step(a, start, stop, lay)
                for (a, start, stop), lay in zip(segs, layers, strict=True)
            )
        return plan

    def forward(self, x: torch.Tensor, stitch: Stitch | str | None = None) -> torch.Tensor:
        steps = self.plan(self._stitch if stitch is None else stitch)
        return run_plan(steps, self.anchors, self.layers, x)

    # -- cost ---------------------------------------------------------------------------------
    def cost(self, stitch: Stitch | str) -> Cost:
        """Multiply-adds per image and parameters of exactly the modules ``stitch`` runs."""
        stitch = self._resolve(stitch)
        c = self._costs.get(stitch)
        if c is None:
            parts = self._count_parts()
            steps = self.plan(stitch)
            c = parts[steps[0].anchor][0] + parts[steps[-1].anchor][2]
            for step in steps:
                for block_cost in parts[step.anchor][1][step.start : step.stop]:
                    c = c + block_cost
                if step.layer is not None:
                    c = c + self._layer_costs[step.layer]
            self._costs[stitch] = c
        return c

    def costs(self) -> dict[Stitch, Cost]:
        return {s: self.cost(s) for s in self.stitches}

    @torch.no_grad()
    def _count_parts(self) -> list[tuple[Cost, list[Cost], Cost]]:
        if self._part_costs is not None:
            return self._part_costs
        was_training = self.training
        self.eval()
        parts, boundary = [], []
        for anchor in self.anchors:
            p = next(anchor.parameters())
            x = torch.zeros(1, *anchor.input_size, device=p.device, dtype=p.dtype)
            macs, h = count_macs(anchor.forward_stem, x)
            stem = Cost(macs, count_params(anchor.part_parameters("stem")))
            blocks, feats = [], [h]
            for b in range(anchor.num_blocks):
                macs, h = count_macs(anchor.forward_blocks, h, b, b + 1)
                blocks.append(Cost(macs, count_params(anchor.part_parameters(b))))
                feats.append(h)
            macs, _ = count_macs(anchor.forward_head, h)
            parts.append((stem, blocks, Cost(macs, count_params(anchor.part_parameters("head")))))
            boundary.append(feats)
        for (f, _e), positions in self.space.positions.items():
            for pos in positions:
                if pos.layer not in self._layer_costs:
                    layer = self.layers[pos.layer]
                    macs, _ = count_macs(layer, boundary[f][pos.cut.out_block + 1])
                    self._layer_costs[pos.layer] = Cost(macs, count_params(layer.parameters()))
        self.train(was_training)
        self._part_costs = parts
        return parts

    def _check_order(self) -> None:
        macs = [self.cost(Stitch.anchor(i)).macs for i in range(len(self.anchors))]
        for i in range(len(macs) - 1):
            if macs[i] > macs[i + 1] * 1.001:
                a, b = self.anchors[i], self.anchors[i + 1]
                raise ValueError(
                    f"anchors must be ordered from small to large cost, but {a.name} "
                    f"({macs[i] / 1e9:.3g} GMACs) comes before {b.name} ({macs[i + 1] / 1e9:.3g} "
                    "GMACs): reorder them"
                )

    # -- training helpers ---------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        """The anchors' own no-weight-decay names, under this module's prefixes (the reference
        lost them behind its wrapper). timm may list names a model lacks; only real ones remain."""
        names = set()
        for i, anchor in enumerate(self.anchors):
            fn = getattr(anchor.model, "no_weight_decay", None)
            for n in fn() if callable(fn) else ():
                names.add(f"anchors.{i}.model.{n}")
        return names & dict(self.named_parameters()).keys()

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"anchors": [...], "layers": [...]}``: the two groups SN-Net trains at different rates."""
        return {
            "anchors": list(self.anchors.parameters()),
            "layers": list(self.layers.parameters()),
        }

    def describe(self, stitch: Stitch | str) -> str:
        """A readable account of a stitch, e.g. ``deit_tiny[0:4] -> deit_small[4:12]``."""
        steps = self.plan(stitch)
        return " -> ".join(f"{self.anchors[s.anchor].name}[{s.start}:{s.stop}]" for s in steps)

    def extra_repr(self) -> str:
        return f"stitches={len(self.stitches)}, layers={len(self.layers)}"
