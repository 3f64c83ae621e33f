"""Stitching layers: an affine map over channels between two feature layouts."""

from __future__ import annotations

import copy
import math

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

    ``rank=r > 0`` makes it low-rank (SN-Netv2): ``W = W0 + (alpha / r) · B A`` where ``W0``
    (``weight``, the least-squares solution) is frozen and only ``lora_A`` ``(r, C_front)``,
    ``lora_B`` ``(C_end, r)`` and the bias train. ``B`` starts at zero, so training starts from
    exactly the least-squares layer; ``A`` starts like a Linear's weight (LoRA's convention),
    so ``B`` gets gradients at once. ``alpha`` defaults to ``r`` (scale 1): the update's size
    then does not depend on the rank chosen. The forward uses the merged ``W`` itself, so
    :meth:`merged` (one plain layer, for export) holds the very weight this layer runs.

    Example:
        >>> layer = StitchingLayer(src, dst, rank=4)           # 4 · (C_front + C_end) + C_end trained
        >>> layer.merged()                                      # a plain full-rank layer, same output
    """

    def __init__(
        self,
        src: FeatureShape,
        dst: FeatureShape,
        *,
        rank: int = 0,
        alpha: float | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if src.rows != dst.rows or (src.grid and dst.grid and src.grid != dst.grid):
            raise ValueError(f"cannot stitch {src} into {dst}: the resolutions differ")
        if rank < 0:
            raise ValueError(f"the stitching layers' rank must be >= 0 (0: full rank), got {rank}")
        if rank == 0 and alpha is not None:
            raise ValueError("alpha scales a low-rank update: give a rank > 0 with it")
        self.src, self.dst = src, dst
        self.weight = nn.Parameter(torch.empty(dst.channels, src.channels, device=device))
        self.bias = nn.Parameter(torch.zeros(dst.channels, device=device))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's default
        self.rank = rank
        self.alpha = float(alpha if alpha is not None else rank)
        # Layers sharing one weight (see share_weight_with): id(layer) -> its least-squares W.
        self._solutions: dict[int, torch.Tensor] | None = None
        if rank:
            self.weight.requires_grad_(False)  # W0: the least-squares solution stays as it is
            self.lora_A = nn.Parameter(torch.empty(rank, src.channels, device=device))
            self.lora_B = nn.Parameter(torch.zeros(dst.channels, rank, device=device))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank if self.rank else 0.0

    def effective_weight(self) -> torch.Tensor:
        """``W0 + (alpha / r) · B A`` for a low-rank layer, ``weight`` otherwise: ``(C_end, C_front)``."""
        if not self.rank:
            return self.weight
        return self.weight + self.scaling * (self.lora_B @ self.lora_A)

    def update_parameters(self) -> list[nn.Parameter]:
        """The parameters :meth:`merged` folds into the weight (none at full rank): a deployed
        stitch does not hold them, so costs do not count them."""
        return [self.lora_A, self.lora_B] if self.rank else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        src, dst = self.src.layout, self.dst.layout
        weight = self.effective_weight()
        if src == "nchw" and dst == "nchw":
            return F.conv2d(x, weight[:, :, None, None], self.bias)
        if src == "nchw":
            x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        y = F.linear(x, weight, self.bias)  # channels last: (B, N, C) or (B, H, W, C)
        if dst == src or (src == "nchw" and dst == "nhwc"):
            return y
        b = y.shape[0]
        if dst == "tokens":
            return y.reshape(b, self.dst.rows, self.dst.channels)
        h, w = self.dst.grid
        y = y.reshape(b, h, w, self.dst.channels)
        return y.permute(0, 3, 1, 2).contiguous() if dst == "nchw" else y

    def share_weight_with(self, other: StitchingLayer) -> None:
        """Use ``other``'s weight (and low-rank update); the two then differ only in their bias.

        Parameter-efficient mode gives every cut its own layer this way: one weight per window of
        cuts, as in SN-Net, and one bias per cut. Least squares then sets the shared weight to
        the mean of the cuts' own solutions (what the reference code did for cuts sharing a
        layer) and each bias to its cut's own solution.
        """
        if (self.src, self.dst, self.rank) != (other.src, other.dst, other.rank):
            raise ValueError(f"cannot share weights between {self} and {other}: shapes differ")
        self.weight = other.weight
        if self.rank:
            self.lora_A, self.lora_B = other.lora_A, other.lora_B
        if other._solutions is None:
            other._solutions = {}
        self._solutions = other._solutions

    @torch.no_grad()
    def set_affine(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Set ``W`` and ``b`` (least squares does). A low-rank layer takes ``weight`` as its
        frozen ``W0`` and zeroes its update, so it then computes exactly ``W x + b``. A layer
        sharing its weight sets it to the mean of the solutions given to the layers sharing it."""
        if self._solutions is not None:
            self._solutions[id(self)] = weight.detach().to(self.weight).clone()
            weight = torch.stack(list(self._solutions.values())).mean(dim=0)
        self.weight.copy_(weight)
        self.bias.copy_(bias)
        if self.rank:
            self.lora_B.zero_()

    @torch.no_grad()
    def merged(self) -> StitchingLayer:
        """A plain full-rank layer computing what this one computes (itself at full rank is
        copied); its weight is this layer's :meth:`effective_weight`."""
        if not self.rank and self._solutions is None:
            return copy.deepcopy(self)
        p = self.weight
        plain = StitchingLayer(self.src, self.dst, device=p.device).to(p.dtype)
        plain.set_affine(self.effective_weight(), self.bias)
        return plain.train(self.training)

    def extra_repr(self) -> str:
        low = f", rank={self.rank}, alpha={self.alpha:g}" if self.rank else ""
        return f"{self.src} -> {self.dst}{low}"
