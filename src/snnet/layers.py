"""Stitching layers: an affine map over channels between two feature layouts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from snnet.adapters.base import FeatureShape


def to_rows(x: torch.Tensor, layout: str) -> torch.Tensor:
    """``(B, N, C)`` / ``(B, C, H, W)`` / ``(B, H, W, C)`` -> ``(B * rows, C)``."""
    if layout == "nchw":
        x = x.permute(0, 2, 3, 1)
    return x.reshape(-1, x.shape[-1])


class StitchingLayer(nn.Module):
    """``y = W x + b`` per token or per pixel, from the front anchor's width to the end anchor's.

    A Linear on tokens and channels-last maps, a 1×1 convolution on channels-first maps; between
    layouts (a CNN feeding a ViT stage) it maps channels and then lays the result out as the end
    stage expects. ``weight`` is ``(C_end, C_front)`` in every case, so least squares fills it the
    same way.
    """

    def __init__(
        self, src: FeatureShape, dst: FeatureShape, *, device: torch.device | str | None = None
    ) -> None:
        super().__init__()
        if src.rows != dst.rows or (src.grid and dst.grid and src.grid != dst.grid):
            raise ValueError(f"cannot stitch {src} into {dst}: the resolutions differ")
        self.src, self.dst = src, dst
        self.weight = nn.Parameter(torch.empty(dst.channels, src.channels, device=device))
        self.bias = nn.Parameter(torch.zeros(dst.channels, device=device))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        src, dst = self.src.layout, self.dst.layout
        if src == "nchw" and dst == "nchw":
            return F.conv2d(x, self.weight[:, :, None, None], self.bias)
        if src == "nchw":
            x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        y = F.linear(x, self.weight, self.bias)  # channels last: (B, N, C) or (B, H, W, C)
        if dst == src or (src == "nchw" and dst == "nhwc"):
            return y
        b = y.shape[0]
        if dst == "tokens":
            return y.reshape(b, self.dst.rows, self.dst.channels)
        h, w = self.dst.grid
        y = y.reshape(b, h, w, self.dst.channels)
        return y.permute(0, 3, 1, 2).contiguous() if dst == "nchw" else y

    @torch.no_grad()
    def set_affine(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.weight.copy_(weight)
        self.bias.copy_(bias)

    def extra_repr(self) -> str:
        return f"{self.src} -> {self.dst}"
