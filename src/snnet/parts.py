"""What a stitch runs, part by part: an anchor's stem, one of its blocks, its head, or a
stitching layer; in a dense network also the taps that keep a block's features for the dense
head, and that head (``decode``).

:meth:`SNNet.parts <snnet.network.SNNet.parts>` lists a stitch's parts in run order, and
everything that asks "what does this stitch run" reads that list: its cost, the parameters it
trains (and DDP rescales), the BatchNorm layers it recalibrates, what an export keeps, and the
prefix tree that evaluates every stitch on one batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
from torch import nn

if TYPE_CHECKING:
    from snnet.adapters import Anchor
    from snnet.dense.head import DenseHead


class Levels(NamedTuple):
    """What passes between the parts of a dense stitch: the features the next block takes, and
    the feature levels kept for the dense head so far (None where no tap has run yet)."""

    h: torch.Tensor
    levels: tuple[torch.Tensor | None, ...]


class Step(NamedTuple):
    """Run blocks ``start..stop-1`` of ``anchor``, then the stitching layer ``layer`` (if any)."""

    anchor: int
    start: int
    stop: int
    layer: str | None


@dataclass(frozen=True)
class Part:
    """One piece of computation: an anchor's ``"stem"``, its ``"block"`` ``block`` or its
    ``"head"``, or the stitching ``"layer"`` keyed ``layer``. A dense network adds ``"tap"``
    (the output of ``block`` of ``anchor`` kept as feature level ``level``, through the tap
    layer keyed ``layer``, None for the head anchor's own) and ``"decode"`` (the shared head).

    Example:
        >>> net.parts("0:1-1:2")[3]
        Part(kind='layer', anchor=None, block=None, layer='a0_a1_1')
        >>> str(net.parts("0:1-1:2")[4]), net.parts("0:1-1:2")[-1] == Part("head", 1)
        ('anchor 1 block 2', True)
    """

    kind: Literal["stem", "block", "head", "layer", "tap", "decode"]
    anchor: int | None = None
    block: int | None = None
    layer: str | None = None
    level: int | None = None

    @property
    def of_anchor(self) -> str | int:
        """The part as :meth:`Anchor.part_names` takes it: ``"stem"``, ``"head"`` or a block."""
        return self.block if self.kind == "block" else self.kind

    def __str__(self) -> str:
        if self.kind == "layer":
            return f"layer {self.layer}"
        if self.kind == "decode":
            return "dense head"
        if self.kind == "tap":
            return f"anchor {self.anchor} block {self.block} as level {self.level}"
        return f"anchor {self.anchor} " + (
            f"block {self.block}" if self.kind == "block" else self.kind
        )


def parts_of(steps: Sequence[Step]) -> tuple[Part, ...]:
    """The parts a plan runs, in order: the first anchor's stem, each step's blocks then its
    stitching layer, the last anchor's head."""
    out = [Part("stem", steps[0].anchor)]
    for step in steps:
        out += [Part("block", step.anchor, b) for b in range(step.start, step.stop)]
        if step.layer is not None:
            out.append(Part("layer", layer=step.layer))
    out.append(Part("head", steps[-1].anchor))
    return tuple(out)


def run_parts(
    parts: Sequence[Part],
    anchors: Sequence[Anchor],
    layers: Mapping[str, nn.Module],
    h: torch.Tensor | Levels,
    dense: DenseHead | None = None,
) -> torch.Tensor | Levels:
    """Run a stretch of parts on ``h`` (what enters the first of them); consecutive blocks of
    one anchor go through one ``forward_blocks`` call. For measuring parts one by one, for
    sharing prefixes between stitches and for dense stitches (``dense``: the network's dense
    head, which runs the taps and the decoding; between them a :class:`Levels` is passed on).
    A classification stitch runs through :func:`snnet.network.run_plan`."""
    levels = None
    if isinstance(h, Levels):
        h, levels = h
    i = 0
    while i < len(parts):
        p = parts[i]
        if p.kind == "block":
            j = i + 1
            while j < len(parts) and parts[j] == Part("block", p.anchor, parts[j - 1].block + 1):
                j += 1
            h = anchors[p.anchor].forward_blocks(h, p.block, parts[j - 1].block + 1)
            i = j
            continue
        if p.kind == "layer":
            h = layers[p.layer](h)
        elif p.kind == "stem":
            h = anchors[p.anchor].forward_stem(h)
        elif p.kind == "tap":
            levels = dense.tap(p, anchors[p.anchor], h, levels)
        elif p.kind == "decode":
            return dense.decode(levels)
        else:
            h = anchors[p.anchor].forward_head(h)
        i += 1
    return h if levels is None else Levels(h, levels)
