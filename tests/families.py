"""Tiny random-initialised anchor families for contract tests: one entry per supported family.

A new family costs one builder here; every contract test in test_contract.py then covers it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

import snnet


def perturb(net: snnet.SNNet) -> None:
    """Non-trivial stitching layers and BatchNorm statistics (seeded), so that copies, exports
    and loads are really checked."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in net.layers.values():
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g))
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)


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


# Full-size depths as in the paper, widths and resolution shrunk: 32×32 inputs, patch 4 and
# window 4 keep Swin's shifted-window masks in play (stage 0 is 8×8 = 2×2 windows).
_SWIN = {"img_size": 32, "window_size": 4}


def swin_family() -> list[nn.Module]:
    """Swin-T/S/B in miniature: S is T with a deeper stage 2, B is S made wider."""
    return [
        _timm("swin_tiny_patch4_window7_224", embed_dim=e, depths=d, num_heads=h, **_SWIN)
        for e, d, h in (
            (8, (2, 2, 2, 1), (1, 2, 2, 4)),
            (8, (2, 2, 6, 1), (1, 2, 2, 4)),
            (16, (2, 2, 6, 1), (2, 2, 4, 4)),
        )
    ]


# zero_init_last=False: with timm's zero-initialised last BN every residual branch would start
# as a no-op, and the contracts would test little more than the shortcuts.
_RESNET = {"img_size": 32, "channels": (8, 16, 32, 64), "zero_init_last": False}


def resnet_family() -> list[nn.Module]:
    """ResNet-18 (basic blocks, 2-2-2-2) into a bottleneck ResNet of depths 1-3-4-1."""
    return [_timm("resnet18", **_RESNET), _timm("resnet50", layers=(1, 3, 4, 1), **_RESNET)]


def resnet_swin_family() -> list[nn.Module]:
    """ResNet-18 into Swin-T: both reduce by 4, 8, 16, 32 over their stages, so stage i of one
    meets stage i of the other at the same resolution (NCHW maps into NHWC maps)."""
    swin = _timm(
        "swin_tiny_patch4_window7_224",
        embed_dim=24,
        depths=(2, 2, 6, 2),
        num_heads=(2, 2, 4, 4),
        **_SWIN,
    )
    return [_timm("resnet18", **_RESNET), swin]


def _levit(name: str) -> list[nn.Module]:
    return [
        _timm(name, img_size=64, key_dim=8, embed_dim=e, num_heads=h, depth=d)
        for e, h, d in (((16, 24, 32), (2, 3, 4), (2, 2, 2)), ((32, 48, 64), (4, 6, 8), (2, 3, 2)))
    ]


def levit_family() -> list[nn.Module]:
    """LeViT-192/256 in miniature (tokens; the distillation head is part of the head)."""
    return _levit("levit_128s")


def levit_conv_family() -> list[nn.Module]:
    """The same with ``use_conv=True``: the stages run on (B, C, H, W) maps instead of tokens."""
    return _levit("levit_conv_128s")


# -- the user's own family: README, "Your own family" ------------------------------------------
class TinyConvNet(nn.Module):
    """A model timm does not have: a patchify stem, stages of residual conv blocks (each stage
    after the first starts with a stride-2 conv), and a pooled classifier."""

    def __init__(self, widths: tuple[int, ...], depths: tuple[int, ...], num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, widths[0], kernel_size=4, stride=4)
        self.stages = nn.ModuleList()
        for i, (w, d) in enumerate(zip(widths, depths, strict=True)):
            down = nn.Conv2d(widths[max(i - 1, 0)], w, 2, stride=2) if i else nn.Identity()
            self.stages.append(nn.Sequential(down, *[_Block(w) for _ in range(d)]))
        self.norm = nn.LayerNorm(widths[-1])
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.fc(self.norm(x.mean(dim=(2, 3))))


@snnet.register_adapter
class TinyConvNetAnchor(snnet.Anchor):
    family = "tinyconvnet"
    stem_names = ("stem",)
    head_names = ("norm", "fc")

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, TinyConvNet)

    def __init__(self, model: TinyConvNet, **kwargs) -> None:
        kwargs.setdefault("input_size", (3, 32, 32))  # the resolution to stitch at
        super().__init__(model, **kwargs)

    # forward_stem: the default runs stem_names in order. The head pools first, so it is spelled out.
    def forward_head(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.fc(self.model.norm(h.mean(dim=(2, 3))))

    def block_names(self) -> list[tuple[str, ...]]:
        names = []
        for i, stage in enumerate(self.model.stages):  # stage = (downsample, block, block, ...)
            names.append((f"stages.{i}.0", f"stages.{i}.1"))  # downsample folded into block 0
            names += [(f"stages.{i}.{b}",) for b in range(2, len(stage))]
        return names

    def stages(self) -> tuple[snnet.Stage, ...]:
        out, start = [], 0
        for stage in self.model.stages:
            out.append(snnet.Stage(range(start, start + len(stage) - 1), "nchw"))
            start += len(stage) - 1
        return tuple(out)


def own_family() -> list[nn.Module]:
    torch.manual_seed(0)
    return [TinyConvNet((8, 16), (2, 2)).eval(), TinyConvNet((16, 32), (2, 4)).eval()]


#: family -> (builder, expected number of networks with default stitching options)
FAMILIES: dict[str, tuple[Callable[[], list[nn.Module]], int]] = {
    "vit": (vit_family, 3 + 2 * 10),  # depth 4, kernel 2: 4 + 3 * 2 = 10 cuts per pair
    "sequential": (sequential_family, 2 + 1 + 1),  # equal stages of 2 blocks: one cut each
    # stages 0-2 stitched: 2→2, 2→2, 2→6 (1 + 1 + 5), then 2→2, 2→2, 6→6 (1 + 1 + 5)
    "swin": (swin_family, 3 + 7 + 7),
    "resnet": (resnet_family, 2 + 2 + 3),  # stages 1-2 stitched: 2→3 (2 cuts), 2→4 (3 cuts)
    "resnet-swin": (resnet_swin_family, 2 + 1 + 5),  # stages 1-2: 2→2 (1 cut), 2→6 (5 cuts)
    "levit": (levit_family, 2 + 1 + 2),  # stages 0-1 stitched: 2→2 (1 cut), 2→3 (2 cuts)
    "levit-conv": (levit_conv_family, 2 + 1 + 2),
    "own": (own_family, 2 + 1 + 3),  # every stage stitched: 2→2 (1 cut), 2→4 (3 cuts)
}

#: family -> expected number of networks with directions="both" (SN-Netv2's two-way routes):
#: anchors + small→large cuts + large→small cuts + large→small→large + small→large→small routes
#: (the middle anchor runs >= 1 block; the return resumes past the block the route left).
#: Large→small cuts in stages follow the nearest-neighbour depth map (cuts.mapped_positions).
TWO_WAY: dict[str, int] = {
    "vit": 3 + 20 + 20 + 68 + 68,  # paired windows both ways: 10 + 10 cuts per pair
    "sequential": 2 + 2 + 2 + 1 + 1,  # down (0,1), (2,3): 1:0-0:1:2-1:3 and 0:0-1:1:2-0:3
    "swin": 3 + 14 + 10 + 35 + 26,  # down per pair: 2→2, 2→2, 6→2 (1 + 1 + 1); 1 + 1 + 5
    "resnet": 2 + 5 + 2 + 6 + 4,  # down: stage 1 3→2 (1:1), stage 2 4→2 (1:1)
    "resnet-swin": 2 + 6 + 2 + 8 + 3,  # down: stage 1 2→2, stage 2 6→2
    "levit": 2 + 3 + 2 + 3 + 2,  # down: stage 0 2→2, stage 1 3→2
    "levit-conv": 2 + 3 + 2 + 3 + 2,
    "own": 2 + 4 + 2 + 5 + 2,  # down: stage 0 2→2, stage 1 4→2
}
