"""The stitching space: which cuts exist between which anchors, and which layer serves each cut."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from snnet.adapters.base import Anchor, FeatureShape
from snnet.stitch import Cut, Stitch


@dataclass(frozen=True)
class SpaceConfig:
    """How to stitch. The defaults reproduce the paper.

    Attributes:
        kernel_size, stride: the sliding window of paired stitching (equal-depth plain models).
        nearest: stitch only neighbouring anchors (0→1, 1→2, ...); otherwise every pair ``i < j``
            and every multi-hop route through increasing anchors.
        mode: ``"paired"`` (sliding window), ``"unpaired"`` (within stages) or ``"auto"``: paired
            when every anchor is one stage of equal depth, unpaired otherwise.
        stages: stages to stitch in unpaired mode (None: the families' defaults).
        layer_per_position: one stitching layer per cut instead of one per window / front block.
    """

    kernel_size: int = 2
    stride: int = 1
    nearest: bool = True
    mode: Literal["auto", "paired", "unpaired"] = "auto"
    stages: tuple[int, ...] | None = None
    layer_per_position: bool = False

    def __post_init__(self) -> None:
        if self.kernel_size < 1 or self.stride < 1:
            raise ValueError("kernel_size and stride must be at least 1")
        if self.mode not in ("auto", "paired", "unpaired"):
            raise ValueError(f"mode must be 'auto', 'paired' or 'unpaired', not {self.mode!r}")
        if self.stages is not None:
            object.__setattr__(self, "stages", tuple(int(s) for s in self.stages))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["stages"] = list(self.stages) if self.stages is not None else None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SpaceConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown stitching options {sorted(unknown)}")
        return cls(**d)


def sliding_windows(depth: int, kernel_size: int, stride: int) -> list[tuple[int, int, int]]:
    """Paired positions ``(front block, end block, window)``: each window of ``kernel_size``
    blocks, moved by ``stride``, adds every ordered pair inside it not seen yet; the pairs a window
    adds share one stitching layer."""
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, int, int]] = []
    window = 0
    for start in range(0, depth, stride):
        ids = range(start, min(start + kernel_size, depth))
        new = [(j, k) for j in ids for k in ids if (j, k) not in seen]
        if new:
            seen.update(new)
            out += [(j, k, window) for j, k in new]
            window += 1
    return out


def stage_positions(front_depth: int, end_depth: int) -> list[tuple[int, int]]:
    """Unpaired positions inside one stage, as local ``(front block, end block)`` indices.

    Equal depths: ``(j, j+1)``. A shallower front: end block ``i`` takes front block
    ``floor(i * d_f / d_e)`` for ``i = 1 .. d_e - 1`` (the SN-Net paper's rule for
    stages of unequal depth).
    """
    if front_depth == end_depth:
        return [(j, j + 1) for j in range(front_depth - 1)]
    if front_depth < end_depth:
        return [(i * front_depth // end_depth, i) for i in range(1, end_depth)]
    raise ValueError(
        f"unpaired stitching goes from a shallower stage into a deeper one; got a front stage of "
        f"{front_depth} blocks into {end_depth}: order the anchors small to large"
    )


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

    @classmethod
    def build(cls, anchors: Sequence[Anchor], config: SpaceConfig | None = None) -> StitchSpace:
        config = config or SpaceConfig()
        if len(anchors) < 2:
            raise ValueError(f"stitching needs at least 2 anchors, got {len(anchors)}")
        mode = config.mode
        if mode == "auto":
            plain = all(len(a.stages()) == 1 for a in anchors)
            mode = "paired" if plain and len({a.num_blocks for a in anchors}) == 1 else "unpaired"
        pairs = (
            [(i, i + 1) for i in range(len(anchors) - 1)]
            if config.nearest
            else list(itertools.combinations(range(len(anchors)), 2))
        )
        positions = {}
        for f, e in pairs:
            raw = (
                _paired(anchors[f], anchors[e], config)
                if mode == "paired"
                else _unpaired(anchors[f], anchors[e], config)
            )
            if not raw:
                raise ValueError(
                    f"anchors {anchors[f].name} and {anchors[e].name} have no cut to stitch"
                )
            for j, k, _ in raw:
                _check_shapes(anchors[f], anchors[e], j, k)
            groups = {}
            positions[(f, e)] = tuple(
                Position(
                    Cut(j, k),
                    f"a{f}_a{e}_{groups.setdefault((j, k) if config.layer_per_position else g, len(groups))}",
                )
                for j, k, g in raw
            )
        stitches = [Stitch.anchor(i) for i in range(len(anchors))]
        stitches += [Stitch((f, e), (p.cut,)) for (f, e), ps in positions.items() for p in ps]
        if not config.nearest:
            stitches += _multi_hop(len(anchors), positions)
        return cls(tuple(a.num_blocks for a in anchors), positions, tuple(stitches), config)

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
        n = len(self.num_blocks)
        if any(a >= n for a in s.route):
            raise ValueError(
                f"stitch {s} names anchor {max(s.route)}, but this network has anchors 0..{n - 1}"
            )
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
        raise ValueError(
            f"stitch {s} is not in this network: each middle anchor must run at least one block"
        )


def _paired(front: Anchor, end: Anchor, config: SpaceConfig) -> list[tuple[int, int, int]]:
    if front.num_blocks != end.num_blocks:
        raise ValueError(
            f"paired stitching needs anchors of equal depth; {front.name} has {front.num_blocks} "
            f"blocks and {end.name} {end.num_blocks}: use mode='unpaired'"
        )
    return sliding_windows(front.num_blocks, config.kernel_size, config.stride)


def _unpaired(front: Anchor, end: Anchor, config: SpaceConfig) -> list[tuple[int, int, int]]:
    fs, es = front.stages(), end.stages()
    if config.stages is not None:
        chosen = config.stages
        missing = [s for s in chosen if s >= min(len(fs), len(es)) or s < 0]
        if missing:
            raise ValueError(
                f"stage {missing[0]} does not exist: {front.name} has {len(fs)} stages and "
                f"{end.name} {len(es)} (stages count from 0)"
            )
    else:
        chosen = [s for s in range(min(len(fs), len(es))) if fs[s].stitchable and es[s].stitchable]
    out = []
    for s in chosen:
        f0, e0 = fs[s].blocks.start, es[s].blocks.start
        # Resolution first: mismatched families would otherwise fail on depth or order.
        src, dst = front.feature_shapes()[f0 + 1], end.feature_shapes()[e0 + 1]
        if src.rows != dst.rows:
            raise ValueError(
                f"cannot stitch stage {s}: {front.name} runs it at {src}, {end.name} at {dst}. "
                "Unpaired stitching joins stages of equal resolution; pick stages where the anchors "
                "match with stages=[...], or give them matching input and patch sizes"
            )
        for j, k in stage_positions(len(fs[s].blocks), len(es[s].blocks)):
            # One layer per front block: positions of different front blocks never share (the
            # reference code shared one layer across front blocks and averaged their LS solutions).
            out.append((f0 + j, e0 + k, f0 + j))
    return out


def _check_shapes(front: Anchor, end: Anchor, j: int, k: int) -> None:
    src: FeatureShape = front.feature_shapes()[j + 1]
    dst: FeatureShape = end.feature_shapes()[k]
    if src.rows != dst.rows or (src.grid and dst.grid and src.grid != dst.grid):
        raise ValueError(
            f"cannot stitch {front.name} block {j} ({src}) into {end.name} block {k} ({dst}): "
            "the anchors must see the same number of tokens / the same resolution there; give them "
            "the same img_size and patch size, or stitch other stages"
        )


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
