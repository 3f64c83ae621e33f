"""Which cuts exist between two anchors: the rules that say where a front anchor's block can feed
an end anchor's block, and which cuts share a stitching layer.

- paired (equal-depth plain models): the paper's sliding windows (:func:`sliding_windows`);
- unpaired (within stages of equal resolution): the paper's rule for stages of equal or unequal
  depth (:func:`stage_positions`);
- mapped: SN-Netv2's nearest-neighbour depth map, in either direction (:func:`mapped_positions`).

Each rule gives positions ``(front block, end block, group)``; the positions of one group share a
stitching layer. :class:`snnet.space.StitchSpace` applies them to every stitched pair.
"""

from __future__ import annotations

from collections.abc import Sequence

from snnet.adapters.base import Anchor, FeatureShape


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


def mapped_positions(front_depth: int, end_depth: int) -> list[tuple[int, int]]:
    """SN-Netv2's positions inside one stage, as local ``(front block, end block)`` indices, in
    either direction (a shallower or a deeper front).

    The nearest-neighbour depth map gives block ``i`` of the deeper stage its counterpart
    ``m(i) = floor(i * d_shallow / d_deep)`` in the shallower one (``F.interpolate(mode="nearest")``
    of the shallow block ids to the deep length, as SN-Netv2 computes it). Every hop continues
    where the front stopped, so no block's work is run twice or skipped:

    - shallow → deep: block ``j`` feeds the first deep block whose counterpart is ``j + 1``;
    - deep → shallow: the last deep block of each counterpart group ``m(i)`` feeds shallow block
      ``m(i) + 1`` (the other blocks of the group would feed the same block).

    The last position is always ``(d_f - 1, d_e)``: past the stage (or into the head).

    Example:
        >>> mapped_positions(2, 4), mapped_positions(4, 2), mapped_positions(3, 2)
        ([(0, 2), (1, 4)], [(1, 1), (3, 2)], [(1, 1), (2, 2)])
    """
    deep, shallow = max(front_depth, end_depth), min(front_depth, end_depth)

    def m(i: int) -> int:
        return i * shallow // deep

    if front_depth <= end_depth:
        return [
            (j, next((k for k in range(end_depth) if m(k) > j), end_depth))
            for j in range(front_depth)
        ]
    return [(i, m(i) + 1) for i in range(front_depth) if i == front_depth - 1 or m(i + 1) != m(i)]


def paired_cuts(
    front: Anchor, end: Anchor, kernel_size: int, stride: int
) -> list[tuple[int, int, int]]:
    """Paired positions ``(front block, end block, window)`` of two anchors of equal depth:
    :func:`sliding_windows`."""
    if front.num_blocks != end.num_blocks:
        raise ValueError(
            f"paired stitching needs anchors of equal depth; {front.name} has {front.num_blocks} "
            f"blocks and {end.name} {end.num_blocks}: use mode='unpaired'"
        )
    return sliding_windows(front.num_blocks, kernel_size, stride)


def stage_cuts(
    front: Anchor,
    end: Anchor,
    stages: Sequence[int] | None,
    *,
    mapped: bool = False,
    head: bool = False,
) -> list[tuple[int, int, int]]:
    """Positions ``(front block, end block, front block)`` inside the stitched ``stages`` (None:
    every stage both anchors mark stitchable): :func:`stage_positions` (small→large, SN-Net), or
    with ``mapped`` :func:`mapped_positions` (SN-Netv2; every large→small pair uses it). The
    mapped rule's last position leaves the stage; it is kept only with ``head`` and only where
    it enters the end anchor's head."""
    fs, es = front.stages(), end.stages()
    if stages is not None:
        chosen = stages
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
        df, de = len(fs[s].blocks), len(es[s].blocks)
        if mapped:
            last = f0 + df == front.num_blocks and e0 + de == end.num_blocks
            local = mapped_positions(df, de)
            local = local if last and head else local[:-1]
        else:
            local = stage_positions(df, de)
        for j, k in local:
            # One layer per front block: positions of different front blocks never share (the
            # reference code shared one layer across front blocks and averaged their LS solutions).
            out.append((f0 + j, e0 + k, f0 + j))
    return out


def check_shapes(front: Anchor, end: Anchor, j: int, k: int) -> None:
    """Refuse a cut where the two anchors see a different number of tokens or resolution."""
    src: FeatureShape = front.feature_shapes()[j + 1]
    dst: FeatureShape = end.feature_shapes()[k]
    if src.rows != dst.rows or (src.grid and dst.grid and src.grid != dst.grid):
        raise ValueError(
            f"cannot stitch {front.name} block {j} ({src}) into {end.name} block {k} ({dst}): "
            "the anchors must see the same number of tokens / the same resolution there; give them "
            "the same img_size and patch size, or stitch other stages"
        )
