"""The stitching space: every stitch of a set of anchors (the routes through the cuts that
:mod:`snnet.cuts` finds between each stitched pair), and which layer serves each cut."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from snnet.adapters.base import Anchor
from snnet.cuts import check_shapes, paired_cuts, stage_cuts
from snnet.stitch import Cut, Stitch


@dataclass(frozen=True)
class SpaceConfig:
    """How to stitch. The defaults reproduce the paper.

    Attributes:
        kernel_size, stride: the sliding window of paired stitching (equal-depth plain models).
        nearest: stitch only neighbouring anchors (0→1, 1→2, ...); otherwise every pair ``i < j``
            and every multi-hop route through increasing anchors.
        mode: ``"paired"`` (sliding window), ``"unpaired"`` (within stages), ``"mapped"``
            (SN-Netv2's nearest-neighbour depth map, within stages; see below) or ``"auto"``:
            paired when every anchor is one stage of equal depth, unpaired otherwise.
        stages: stages to stitch in unpaired / mapped mode (None: the families' defaults).
        layer_per_position: one stitching layer per cut instead of one per window / front block.
        directions: ``"up"`` stitches small→large only (SN-Net). ``"both"`` (SN-Netv2's two-way
            stitching) also stitches each pair of neighbouring anchors large→small, through
            stitching layers of their own (keyed ``a{large}_a{small}_{n}``), and adds the routes
            that visit two neighbours as ``a, b, a``: large→small→large and small→large→small
            (``"1:3-0:4:7-1:8"``). Each hop of such a route is one of the pair's one-hop cuts, so
            it reuses that cut's layer: no parameters beyond the large→small layers. The middle
            anchor runs at least one block, and the return resumes past the block the route
            left, so no block runs twice. Large→small cuts: paired mode mirrors the sliding
            windows (they are symmetric); otherwise they follow the nearest-neighbour depth map
            (:func:`snnet.cuts.mapped_positions`). Multi-hop increasing routes
            (``nearest=False``) stay as they are; two-way routes join neighbours only.
        exclude_last: in ``mode="mapped"``, leave out the last small→large position, the cut into
            the end anchor's head (the small anchor runs all its blocks, the large one only its
            head), as SN-Netv2 does; False keeps it (and the routes through it). No large→small
            cut enters a head, as in SN-Netv2. The other modes never cut into a head; there it
            must stay True.

    ``mode="mapped"`` is SN-Netv2's rule: inside each stitched stage, front block ``j`` feeds the
    first end block past ``j``'s counterpart under the nearest-neighbour depth map, one position
    and one layer per front block (see :func:`snnet.cuts.mapped_positions`). With
    ``directions="both"`` it reproduces SN-Netv2's 134 networks for two plain ViTs of depth 12
    and 12, or 12 and 24 (2 anchors + 11 SL + 11 LS + 55 LSL + 55 SLS); ``exclude_last=False``
    gives 146 (+1 SL, +11 LSL). For equal depths ``mode="unpaired"`` gives the same 134.

    DeiT-Ti/S/B (three anchors, depth 12) with ``directions="both"``: 2211 networks with the
    default paired windows (3 anchors + 2 × (34 up + 34 down + 518 + 518 routes back), 44
    layers), 267 with ``mode="mapped"`` (3 + 2 × 132). The default ``"up"`` space has 71.

    Example:
        >>> net = SNNet([deit_s, deit_b], config=SpaceConfig(mode="mapped", directions="both"))
        >>> len(net.stitches), len(net.layers), net.stitches[-1]
        (134, 22, Stitch('0:9-1:10:10-0:11'))
    """

    kernel_size: int = 2
    stride: int = 1
    nearest: bool = True
    mode: Literal["auto", "paired", "unpaired", "mapped"] = "auto"
    stages: tuple[int, ...] | None = None
    layer_per_position: bool = False
    directions: Literal["up", "both"] = "up"
    exclude_last: bool = True

    def __post_init__(self) -> None:
        if self.kernel_size < 1 or self.stride < 1:
            raise ValueError("kernel_size and stride must be at least 1")
        if self.mode not in ("auto", "paired", "unpaired", "mapped"):
            raise ValueError(
                f"mode must be 'auto', 'paired', 'unpaired' or 'mapped', not {self.mode!r}"
            )
        if self.directions not in ("up", "both"):
            raise ValueError(f"directions must be 'up' or 'both', not {self.directions!r}")
        if not self.exclude_last and self.mode != "mapped":
            raise ValueError(
                "exclude_last=False adds the cut into the end anchor's head, which only "
                "mode='mapped' builds: pass mode='mapped' too, or keep exclude_last=True"
            )
        if self.stages is not None:
            object.__setattr__(self, "stages", tuple(int(s) for s in self.stages))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["stages"] = list(self.stages) if self.stages is not None else None
        # SN-Netv2's options are written only when set: the JSON of a space that does not use
        # them (and so the fingerprint of its results files) does not name them. from_json reads
        # an absent key as its default.
        for key in _WRITTEN_WHEN_SET:
            if d[key] == getattr(SpaceConfig, key):
                del d[key]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SpaceConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown stitching options {sorted(unknown)}")
        return cls(**d)


_WRITTEN_WHEN_SET = ("directions", "exclude_last")


@dataclass(frozen=True)
class Position:
    cut: Cut
    layer: str  # key of the stitching layer serving this cut


@dataclass
class StitchSpace:
    """Every stitch of a set of anchors, and the stitching layer each cut uses.

    Example:
        >>> space = StitchSpace.build(anchors)          # DeiT-Ti/S/B
        >>> len(space), space.stitches[3]
        (71, Stitch('0:0-1:0'))
    """

    num_blocks: tuple[int, ...]
    positions: dict[tuple[int, int], tuple[Position, ...]]
    stitches: tuple[Stitch, ...]
    config: SpaceConfig = field(default_factory=SpaceConfig)
    #: Whether :meth:`restrict` kept only some of the stitches the config gives (a front).
    restricted: bool = False

    @classmethod
    def build(cls, anchors: Sequence[Anchor], config: SpaceConfig | None = None) -> StitchSpace:
        config = config or SpaceConfig()
        if len(anchors) < 2:
            raise ValueError(f"stitching needs at least 2 anchors, got {len(anchors)}")
        mode = config.mode
        up_only = config.directions == "up"
        if mode == "auto":
            plain = all(len(a.stages()) == 1 for a in anchors)
            mode = "paired" if plain and len({a.num_blocks for a in anchors}) == 1 else "unpaired"
        pairs = (
            [(i, i + 1) for i in range(len(anchors) - 1)]
            if config.nearest
            else list(itertools.combinations(range(len(anchors)), 2))
        )
        if not up_only:  # large→small between neighbours, after the small→large pairs
            pairs += [(i + 1, i) for i in range(len(anchors) - 1)]
        positions = {}
        for f, e in pairs:
            if mode == "paired":
                raw = paired_cuts(anchors[f], anchors[e], config.kernel_size, config.stride)
            else:
                # Large→small pairs always take the mapped rule, and never cut into a head.
                head = mode == "mapped" and not config.exclude_last and f < e
                raw = stage_cuts(
                    anchors[f],
                    anchors[e],
                    config.stages,
                    mapped=mode == "mapped" or f > e,
                    head=head,
                )
            if not raw:
                raise ValueError(
                    f"anchors {anchors[f].name} and {anchors[e].name} have no cut to stitch"
                )
            for j, k, _ in raw:
                check_shapes(anchors[f], anchors[e], j, k)
            groups = {}
            positions[(f, e)] = tuple(
                Position(
                    Cut(j, k),
                    f"a{f}_a{e}_{groups.setdefault((j, k) if config.layer_per_position else g, len(groups))}",
                )
                for j, k, g in raw
            )
        # The "up" space first, in its own order, then what "both" adds: a two-way space holds
        # the one-way space as its prefix, so results of one line up with the other's.
        hops = [((f, e), Stitch((f, e), (p.cut,))) for (f, e), ps in positions.items() for p in ps]
        stitches = [Stitch.anchor(i) for i in range(len(anchors))]
        stitches += [s for (f, e), s in hops if f < e]
        if not config.nearest:
            stitches += _multi_hop(len(anchors), positions)
        if not up_only:
            stitches += [s for (f, e), s in hops if f > e]
            stitches += _return_routes(len(anchors), positions)
        return cls(tuple(a.num_blocks for a in anchors), positions, tuple(stitches), config)

    def restrict(self, stitches: Sequence[Stitch]) -> StitchSpace:
        """The space of ``stitches`` only (each checked to be in this one), in this space's order,
        with the positions their hops use.

        Example:
            >>> space.restrict([Stitch.parse("0"), Stitch.parse("0:5-1:6")]).layer_keys()
            ['a0_a1_5']
        """
        kept = {self.check(s) for s in stitches}
        hops = {(f, e, cut) for s in kept for f, e, cut in s.hops}
        positions = {
            pair: tuple(p for p in ps if (*pair, p.cut) in hops)
            for pair, ps in self.positions.items()
        }
        return StitchSpace(
            self.num_blocks,
            {pair: ps for pair, ps in positions.items() if ps},
            tuple(s for s in self.stitches if s in kept),
            self.config,
            restricted=True,
        )

    # -- queries ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.stitches)

    def __iter__(self) -> Iterator[Stitch]:
        return iter(self.stitches)

    def __contains__(self, stitch: object) -> bool:
        return stitch in self._index

    @property
    def _index(self) -> dict[Stitch, int]:
        idx = self.__dict__.get("_idx")
        if idx is None:
            idx = self.__dict__["_idx"] = {s: i for i, s in enumerate(self.stitches)}
        return idx

    def index(self, stitch: Stitch) -> int:
        return self._index[stitch]

    def layer_keys(self) -> list[str]:
        return list(dict.fromkeys(p.layer for ps in self.positions.values() for p in ps))

    def layer_for(self, front: int, end: int, cut: Cut) -> str:
        return self._layer_of[(front, end, cut)]

    @property
    def _layer_of(self) -> dict[tuple[int, int, Cut], str]:
        m = self.__dict__.get("_lay")
        if m is None:
            m = self.__dict__["_lay"] = {
                (f, e, p.cut): p.layer for (f, e), ps in self.positions.items() for p in ps
            }
        return m

    def check(self, stitch: Stitch | str) -> Stitch:
        """Return ``stitch`` as a :class:`Stitch` if it belongs to this space, else explain why not."""
        s = Stitch.parse(stitch)
        if s in self._index:
            return s
        if self.restricted:
            listed = ", ".join(str(k) for k in self.stitches[:8])
            more = ", ..." if len(self.stitches) > 8 else ""
            raise ValueError(
                f"stitch {s} is not in this network: it keeps only {len(self.stitches)} "
                f"stitches ({listed}{more})"
            )
        n = len(self.num_blocks)
        if any(a >= n for a in s.route):
            raise ValueError(
                f"stitch {s} names anchor {max(s.route)}, but this network has anchors 0..{n - 1}"
            )
        route_error = self._route_error(s)
        if route_error:
            raise ValueError(f"stitch {s} is not in this network: {route_error}")
        for f, e, cut in s.hops:
            if (f, e, cut) not in self._layer_of:
                cuts = [
                    str(p.cut.out_block) + ":" + str(p.cut.in_block)
                    for p in self.positions.get((f, e), ())
                ]
                hint = (
                    f"cuts from anchor {f} into {e} are (out:in) {', '.join(cuts)}"
                    if cuts
                    else f"anchors {f} and {e} are not stitched together ({'nearest' if self.config.nearest else 'increasing'} pairs only)"
                )
                raise ValueError(f"stitch {s} is not in this network: {hint}")
        if any(p.in_block > q.out_block for p, q in itertools.pairwise(s.cuts)):
            raise ValueError(
                f"stitch {s} is not in this network: each middle anchor must run at least one block"
            )
        raise ValueError(
            f"stitch {s} is not in this network: it leaves anchor {s.route[0]} after block "
            f"{s.cuts[0].out_block} and returns at block {s.cuts[-1].in_block}, which would run "
            "blocks twice; a return hop resumes past the block the route left"
        )

    def _route_error(self, s: Stitch) -> str | None:
        """Why the route itself (which anchors, in which order) cannot be in this space."""
        route, two_way = s.route, self.config.directions == "both"
        if any(f == e for f, e in itertools.pairwise(route)):
            return "it hops from an anchor into itself; each hop joins two different anchors"
        down = [(f, e) for f, e in itertools.pairwise(route) if f > e]
        if down and not two_way:
            f, e = down[0]
            return (
                f"it goes from anchor {f} back to anchor {e}, but this space stitches small to "
                "large only; large→small hops and routes like 1:3-0:4:7-1:8 need "
                "directions='both' (snnet train --directions both)"
            )
        if down:
            f, e = down[0]
            if f - e != 1:
                return (
                    f"it goes from anchor {f} to anchor {e}; large→small hops join neighbouring "
                    "anchors only (i+1 into i)"
                )
            if len(route) > 2 and not (len(route) == 3 and route[0] == route[2]):
                return (
                    "a route with a large→small hop visits at most three anchors, two "
                    "neighbours as a-b-a (e.g. 1:3-0:4:7-1:8 or 0:3-1:4:7-0:8)"
                )
            return None
        if len(route) > 2 and self.config.nearest:
            return (
                "routes through three or more increasing anchors need nearest=False "
                "(snnet train --all-pairs)"
            )
        return None


def _return_routes(n: int, positions: dict[tuple[int, int], tuple[Position, ...]]) -> list[Stitch]:
    """Routes that visit neighbouring anchors ``a, b, a`` (SN-Netv2's LSL and SLS), each hop
    through one of the pair's existing positions, so the return hop reuses a stitching layer.
    The middle anchor runs at least one block, and the return resumes past the block the route
    left ``a`` after, so no block runs twice. Per pair, large→small→large first."""
    out = []
    for s in range(n - 1):
        for a, b in ((s + 1, s), (s, s + 1)):
            back = positions[(b, a)]
            for p in positions[(a, b)]:
                out += [
                    Stitch((a, b, a), (p.cut, q.cut))
                    for q in back
                    if p.cut.in_block <= q.cut.out_block and q.cut.in_block > p.cut.out_block
                ]
    return out


def _multi_hop(n: int, positions: dict[tuple[int, int], tuple[Position, ...]]) -> list[Stitch]:
    """Routes through three or more increasing anchors; every middle anchor runs >= 1 block."""
    out = []
    for length in range(3, n + 1):
        for route in itertools.combinations(range(n), length):
            hops = [positions[(a, b)] for a, b in itertools.pairwise(route)]
            for combo in itertools.product(*hops):
                if all(p.cut.in_block <= q.cut.out_block for p, q in itertools.pairwise(combo)):
                    out.append(Stitch(route, tuple(p.cut for p in combo)))
    return out
