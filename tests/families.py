"""Tiny random-initialised anchor families for contract tests: one entry per supported family.

A new family costs one builder here; every contract test in test_contract.py then covers it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

import snnet


def _timm(name: str, **kwargs) -> nn.Module:
    """Through snnet's own loader, so the anchor records how to rebuild itself."""
    torch.manual_seed(0)
    return snnet.timm_anchor(name, pretrained=False, num_classes=10, **kwargs).eval()


def vit_family() -> list[nn.Module]:
    return [
        _timm("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=d, depth=4, num_heads=h)
        for d, h in ((16, 2), (32, 2), (64, 4))
    ]


class _Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.norm(self.conv(x)))


def sequential_family() -> list[nn.Module]:
    """The README's worked example: a user's own small CNNs with two stages."""
    torch.manual_seed(0)
    out = []
    for width in (8, 16):
        stem = nn.Conv2d(3, width, 3, padding=1)
        blocks = [
            _Block(width),
            _Block(width),
            nn.Sequential(nn.MaxPool2d(2), _Block(width)),
            _Block(width),
        ]
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))
        out.append(
            snnet.SequentialAnchor(
                stem, blocks, head, input_size=(3, 32, 32), layout="nchw", stages=[2, 2]
            ).eval()
        )
    return out


#: family -> (builder, expected number of networks with default stitching options)
FAMILIES: dict[str, tuple[Callable[[], list[nn.Module]], int]] = {
    "vit": (vit_family, 3 + 2 * 10),  # depth 4, kernel 2: 4 + 3 * 2 = 10 cuts per pair
    "sequential": (sequential_family, 2 + 1 + 1),  # equal stages of 2 blocks: one cut each
}
