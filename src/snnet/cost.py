"""Cost of a stitch: multiply-adds (the paper's "FLOPs") and parameters.

Each part of each anchor (stem, every block, head) and each stitching layer is counted once with
``torch.utils.flop_counter`` (:func:`part_macs`); a stitch's cost is the sum over the parts it
runs, so listing every stitch costs one forward per anchor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from snnet.dense.levels import tap_key
from snnet.parts import Levels, Part, Step, parts_of, run_parts

if TYPE_CHECKING:
    from snnet.adapters import Anchor
    from snnet.dense.head import DenseHead

_aten = torch.ops.aten


def _sdpa_cpu(query, key, value, *args: Any, out_shape=None, **kwargs: Any) -> int:
    # PyTorch counts the CUDA fused-attention kernels but not the CPU one; same formula.
    return sdpa_flop_count(query, key, value)


_CUSTOM = {_aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu}


@dataclass(frozen=True, order=True)
class Cost:
    """Multiply-adds for one image at the anchors' input size, and parameters."""

    macs: int
    params: int

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def mparams(self) -> float:
        return self.params / 1e6

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.macs + other.macs, self.params + other.params)


def count_macs(fn: Callable[..., Any], *args: Any) -> tuple[int, Any]:
    """Multiply-adds of ``fn(*args)`` (FLOPs / 2, fused attention included) and its result."""
    with FlopCounterMode(display=False, custom_mapping=_CUSTOM) as counter:
        out = fn(*args)
    return counter.get_total_flops() // 2, out


def count_params(params: Any) -> int:
    return sum(p.numel() for p in params)


@torch.no_grad()
def part_macs(
    anchors: Sequence[Anchor],
    layers: Mapping[str, nn.Module],
    layer_inputs: Mapping[str, tuple[int, int]],
    dense: DenseHead | None = None,
) -> dict[Part, int]:
    """Multiply-adds of every part, each measured once on one zero image: each anchor's parts in
    order, then each stitching layer on the output of the block ``layer_inputs[key] = (anchor,
    block)``; with ``dense`` (a dense network's head) every tap on its block's output and the
    head on the head anchor's levels. Run in eval mode (the caller's), so dropout and BatchNorm
    behave as at inference."""
    macs: dict[Part, int] = {}
    leaving: dict[tuple[int, int], torch.Tensor] = {}  # (anchor, block) -> its output
    for a, anchor in enumerate(anchors):
        p = next(anchor.parameters())
        h = torch.zeros(1, *anchor.input_size, device=p.device, dtype=p.dtype)
        for part in parts_of([Step(a, 0, anchor.num_blocks, None)]):
            macs[part], h = count_macs(run_parts, (part,), anchors, layers, h)
            if part.kind == "block":
                leaving[a, part.block] = h
    for key, (a, block) in layer_inputs.items():
        part = Part("layer", layer=key)
        macs[part], _ = count_macs(run_parts, (part,), anchors, layers, leaving[a, block])
    if dense is not None:
        macs.update(_dense_macs(anchors, layers, dense, leaving))
    return macs


def _dense_macs(
    anchors: Sequence[Anchor],
    layers: Mapping[str, nn.Module],
    dense: DenseHead,
    leaving: Mapping[tuple[int, int], torch.Tensor],
) -> dict[Part, int]:
    """Every tap a stitch may run, and the head, on the head anchor's own levels."""
    macs: dict[Part, int] = {}
    head = len(anchors) - 1
    levels = None  # the head anchor's own levels, collected tap by tap
    for a, blocks in enumerate(dense.blocks):
        for level, b in enumerate(blocks):
            part = Part("tap", a, b, None if a == head else tap_key(a, level), level)
            h = Levels(leaving[a, b], levels) if a == head and levels else leaving[a, b]
            macs[part], out = count_macs(run_parts, (part,), anchors, layers, h, dense)
            if a == head:
                levels = out.levels
    h = Levels(leaving[head, anchors[head].num_blocks - 1], levels)
    macs[Part("decode")], _ = count_macs(run_parts, (Part("decode"),), anchors, layers, h, dense)
    return macs
