"""The head one dense SN-Net shares across every stitch: :class:`DenseHead`.

The head works at the head anchor's (the last anchor's) widths. A stitch's level features come
from whichever anchors it runs (:mod:`snnet.dense.levels`): the head anchor's are read as they
are, every other anchor's pass through a *tap layer* of their own, an affine map per pixel
(a :class:`~snnet.layers.StitchingLayer` between two maps) from that anchor's width to the head
anchor's, initialised by least squares on the head anchor's features at that level, as
SN-Netv2 maps a small anchor's outputs through a stitching layer into the large anchor's width.
So every stitch's features reach the head at one width, and one decoder serves them all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from snnet.adapters.base import Anchor, FeatureShape
from snnet.dense.decoders import DECODERS
from snnet.dense.levels import dense_parts, level_blocks, tap_key
from snnet.layers import StitchingLayer
from snnet.parts import Part, Step
from snnet.task import Task


def map_shape(x: torch.Tensor) -> FeatureShape:
    """The shape of one image's ``(B, C, H, W)`` map."""
    return FeatureShape.of(x, "nchw")


@torch.no_grad()
def level_shapes(anchor: Anchor, blocks: Sequence[int]) -> list[FeatureShape]:
    """The shape of ``anchor``'s map at each of ``blocks`` (measured on one zero image)."""
    was_training = anchor.training
    anchor.eval()
    p = next(iter(anchor.parameters()), None)
    x = torch.zeros(1, *anchor.input_size, device=p.device if p is not None else None)
    feats = anchor.boundaries(x)
    anchor.train(was_training)
    return [map_shape(anchor.feature_map(feats[b + 1], b)) for b in blocks]


class DenseHead(nn.Module):
    """The tap layers (``taps``, keyed ``a{anchor}_l{level}``) and the decoder of a dense task;
    ``blocks[a]``: the blocks anchor ``a`` gives its levels at. Its output is at ``size``
    (the input's height and width): ``(B, classes, H, W)`` logits for segmentation, ``(B, H,
    W)`` metres for depth (a sigmoid scaled to ``(0, max_depth)``). Build it from the anchors
    with :meth:`build`; an exported stitch rebuilds it from shapes alone.

    Example:
        >>> head = DenseHead.build(Task("segmentation", num_classes=11), net.anchors)
        >>> sorted(head.taps)
        ['a0_l0', 'a1_l0']
    """

    def __init__(
        self,
        task: Task,
        levels: Sequence[FeatureShape],
        taps: Mapping[str, tuple[FeatureShape, FeatureShape]],
        size: Sequence[int],
        blocks: Sequence[Sequence[int]] = (),
    ) -> None:
        super().__init__()
        if not task.dense:
            raise ValueError(f"a dense head is for segmentation or depth, not {task.kind}")
        self.task = task
        self.levels = tuple(levels)  # the head anchor's level shapes: what the decoder reads
        self.size = tuple(int(v) for v in size)
        self.blocks = tuple(tuple(b) for b in blocks)
        self.taps = nn.ModuleDict({k: StitchingLayer(*shapes) for k, shapes in taps.items()})
        self.decoder = DECODERS[task.head](
            [s.channels for s in self.levels], task.channels, task.outputs
        )

    @classmethod
    def build(cls, task: Task, anchors: Sequence[Anchor]) -> DenseHead:
        """The head of ``anchors`` (the last one the head anchor), on their device."""
        blocks = level_blocks(anchors, task.levels)
        shapes = [level_shapes(a, b) for a, b in zip(anchors, blocks, strict=True)]
        taps = {}
        for a, anchor in enumerate(anchors[:-1]):
            for level, (src, dst) in enumerate(zip(shapes[a], shapes[-1], strict=True)):
                if src.grid != dst.grid:
                    raise ValueError(
                        f"{anchor.name} gives level {level} at {src}, {anchors[-1].name} at {dst}: "
                        "a dense head needs the anchors' levels at one resolution (same input "
                        "and patch sizes)"
                    )
                taps[tap_key(a, level)] = (src, dst)
        head = cls(task, shapes[-1], taps, anchors[-1].input_size[1:], blocks)
        p = next(iter(anchors[-1].parameters()), None)
        return head.to(p.device) if p is not None else head

    def parts(self, steps: Sequence[Step]) -> tuple[Part, ...]:
        """What a stitch of these steps runs: its blocks, its taps, this head."""
        return dense_parts(steps, self.blocks)

    def tap(
        self,
        part: Part,
        anchor: Anchor,
        h: torch.Tensor,
        levels: tuple[torch.Tensor | None, ...] | None,
    ) -> tuple[torch.Tensor | None, ...]:
        """``levels`` with ``part.level`` set to ``h`` (what leaves ``part.block``) as a map at
        the head's width."""
        x = anchor.feature_map(h, part.block)
        if part.layer is not None:
            x = self.taps[part.layer](x)
        out = list(levels) if levels is not None else [None] * len(self.levels)
        out[part.level] = x
        return tuple(out)

    def decode(self, levels: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """The prediction at the input's size from every level."""
        out = self.decoder(levels)  # (B, outputs, h, w)
        out = F.interpolate(out, size=self.size, mode="bilinear", align_corners=False)
        if self.task.kind == "depth":
            return out[:, 0].sigmoid() * self.task.max_depth  # (B, H, W) metres
        return out  # (B, classes, H, W) logits

    def extra_repr(self) -> str:
        return f"task={self.task.kind}, head={self.task.head}, levels={len(self.levels)}"
