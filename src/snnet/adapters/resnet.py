"""ResNets from timm (``ResNet``: ResNet, ResNet-D, ResNeXt, SE-ResNet and relatives)."""

from __future__ import annotations

import torch
from torch import nn

from snnet.adapters.base import Anchor, Stage, consecutive_stages


class ResNetAnchor(Anchor):
    """timm ``ResNet``: stem = conv1, bn1, act1, maxpool; blocks = the residual blocks of
    ``layer1..4`` (each stage's downsampling lives in its first block already); head = global
    pooling, dropout and fc. Features are ``(B, C, H, W)``.

    A CNN takes any input size; the anchor's ``input_size`` (timm's default, or ``img_size`` given
    to :func:`snnet.timm_anchor`) fixes the resolution the stitching space is built at.
    """

    family = "resnet"
    stem_names = ("conv1", "bn1", "act1", "maxpool")
    head_names = ("global_pool", "fc")
    #: Stitched by default (the paper): the two middle stages.
    default_stages = (1, 2)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        from timm.models.resnet import ResNet

        return isinstance(model, ResNet)

    def _stage_names(self) -> list[str]:
        names, i = [], 1
        while isinstance(getattr(self.model, f"layer{i}", None), nn.Module):
            names.append(f"layer{i}")
            i += 1
        return names

    def forward_head(self, h: torch.Tensor) -> torch.Tensor:
        # timm's own: pooling, a functional dropout (training only) that no named module runs, fc.
        return self.model.forward_head(h)

    def block_names(self) -> list[tuple[str, ...]]:
        return [
            (f"{stage}.{b}",)
            for stage in self._stage_names()
            for b in range(len(self.model.get_submodule(stage)))
        ]

    def stages(self) -> tuple[Stage, ...]:
        depths = [len(self.model.get_submodule(stage)) for stage in self._stage_names()]
        return consecutive_stages(depths, "nchw", self.default_stages)
