"""The decoders of a dense head, on feature levels ``(B, C_l, H_l, W_l)`` at the head anchor's
widths: :class:`NaiveDecoder` (SETR-naive) and :class:`FpnDecoder` (a feature pyramid).

Normalisation is per pixel over channels (LayerNorm), never BatchNorm: one head serves every
stitch, and BatchNorm's running statistics would mix the stitches' feature statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class NaiveDecoder(nn.Module):
    """SETR-naive: the last level, normalised, through a 1×1 convolution and a GELU, then a 1×1
    convolution to ``outputs`` per pixel, at the level's resolution.

    Example:
        >>> NaiveDecoder([32], 64, 11)([torch.zeros(2, 32, 8, 8)]).shape
        torch.Size([2, 11, 8, 8])
    """

    def __init__(self, in_channels: Sequence[int], channels: int, outputs: int) -> None:
        super().__init__()
        c = in_channels[-1]
        self.norm = LayerNorm2d(c)
        self.conv = nn.Conv2d(c, channels, 1)
        self.act = nn.GELU()
        self.out = nn.Conv2d(channels, outputs, 1)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.out(self.act(self.conv(self.norm(levels[-1]))))


class FpnDecoder(nn.Module):
    """A feature pyramid over the levels (UPerNet's FPN without its pooling module): each level
    normalised and projected to ``channels`` (lateral 1×1), summed top-down from the last level
    (resized to each level's resolution), smoothed (3×3 + GELU), then all levels resized to the
    finest, concatenated and fused (1×1, LayerNorm, GELU) before the 1×1 to ``outputs``.
    Levels of a plain ViT share one resolution; the pyramid then fuses depth, not scale.

    Example:
        >>> FpnDecoder([32] * 4, 64, 11)([torch.zeros(2, 32, 8, 8)] * 4).shape
        torch.Size([2, 11, 8, 8])
    """

    def __init__(self, in_channels: Sequence[int], channels: int, outputs: int) -> None:
        super().__init__()
        self.norms = nn.ModuleList(LayerNorm2d(c) for c in in_channels)
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.GELU())
            for _ in in_channels
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(channels * len(in_channels), channels, 1), LayerNorm2d(channels), nn.GELU()
        )
        self.out = nn.Conv2d(channels, outputs, 1)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        x = [lat(norm(f)) for f, norm, lat in zip(levels, self.norms, self.lateral, strict=True)]
        for i in range(len(x) - 2, -1, -1):  # top-down: each level gets the one after it
            x[i] = x[i] + _resize(x[i + 1], x[i].shape[-2:])
        x = [smooth(f) for f, smooth in zip(x, self.smooth, strict=True)]
        finest = max((f.shape[-2:] for f in x), key=lambda s: s[0] * s[1])
        return self.out(self.fuse(torch.cat([_resize(f, finest) for f in x], dim=1)))


DECODERS = {"naive": NaiveDecoder, "fpn": FpnDecoder}
