"""Which blocks feed a dense head: the feature levels of each anchor, and the parts a stitch
runs to collect them.

Plain anchors (one stage) read their levels at the head anchor's out indices, evenly spaced
over its depth (``2, 5, 8, 11`` for 4 levels of 12 blocks); an anchor of another depth reads
them at SN-Netv2's remapped indices, the nearest-neighbour map of its blocks onto the head
anchor's (``floor(i * d / D)``). Hierarchical anchors read the last block of each of their last
stages. A stitch takes each level from the last of its steps that runs that level's block of
its own anchor, so a route hands the head one feature map per level, whatever its cuts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from snnet.parts import Part, Step

if TYPE_CHECKING:
    from snnet.adapters import Anchor


def level_blocks(anchors: Sequence[Anchor], levels: int) -> tuple[tuple[int, ...], ...]:
    """For each anchor, the block whose output is each level; the last anchor is the head
    anchor, whose widths the head works at.

    Example:
        >>> level_blocks([vit_depth12, vit_depth24], 4)
        ((2, 5, 8, 11), (5, 11, 17, 23))
    """
    head = anchors[-1]
    if all(len(a.stages()) == 1 for a in anchors):
        depth = head.num_blocks
        out = [depth * (i + 1) // levels - 1 for i in range(levels)]
        if levels > depth:
            raise ValueError(f"{head.name} has {depth} blocks: it gives at most {depth} levels")
        # SN-Netv2's remapping: F.interpolate(mode="nearest") of an anchor's block ids to D.
        return tuple(tuple(i * a.num_blocks // depth for i in out) for a in anchors)
    counts = {len(a.stages()) for a in anchors}
    if len(counts) > 1 or min(counts) < levels:
        raise ValueError(
            f"the anchors have {sorted(counts)} stages; a dense head reads the last block of "
            f"each of the last {levels} stages, so every anchor needs as many stages (--levels)"
        )
    return tuple(tuple(s.blocks[-1] for s in a.stages()[-levels:]) for a in anchors)


def tap_key(anchor: int, level: int) -> str:
    """The key of the tap layer that brings ``anchor``'s ``level`` to the head's width."""
    return f"a{anchor}_l{level}"


def level_sources(
    steps: Sequence[Step], blocks: Sequence[Sequence[int]]
) -> dict[tuple[int, int], int]:
    """``(step index, block) -> level``: where a plan takes each level (the last step running
    the block of that level of its anchor). A level no step runs is an error."""
    source: dict[int, tuple[int, int]] = {}
    for k, s in enumerate(steps):
        for level, b in enumerate(blocks[s.anchor]):
            if s.start <= b < s.stop:
                source[level] = (k, b)
    missing = [lv for lv in range(len(blocks[0])) if lv not in source]
    if missing:
        route = " -> ".join(f"{s.anchor}[{s.start}:{s.stop}]" for s in steps)
        raise ValueError(
            f"the route {route} runs no block of level {missing[0]}: a dense head cannot read it "
            "(fewer --levels, or another stitching mode)"
        )
    return {where: level for level, where in source.items()}


def dense_parts(steps: Sequence[Step], blocks: Sequence[Sequence[int]]) -> tuple[Part, ...]:
    """The parts of a dense stitch: the classification parts without the anchor's head, a tap
    after each block that gives a level, and the shared head last.

    Example:
        >>> [str(p) for p in dense_parts(net.plan("1"), net.dense.blocks)][-2:]
        ['anchor 1 block 11 as level 0', 'dense head']
    """
    taps = level_sources(steps, blocks)
    head = len(blocks) - 1
    out = [Part("stem", steps[0].anchor)]
    for k, s in enumerate(steps):
        for b in range(s.start, s.stop):
            out.append(Part("block", s.anchor, b))
            if (k, b) in taps:
                level = taps[k, b]
                key = None if s.anchor == head else tap_key(s.anchor, level)
                out.append(Part("tap", s.anchor, b, key, level))
        if s.layer is not None:
            out.append(Part("layer", layer=s.layer))
    out.append(Part("decode"))
    return tuple(out)
