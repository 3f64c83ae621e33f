"""LeViT from timm (``Levit``, ``LevitDistilled``): token stages that subsample between them."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from snnet.adapters.base import (
    Anchor,
    Stage,
    consecutive_stages,
    downsample_then_blocks,
    linear_layers,
    lora_kinds,
)


def _clear_attention_bias_caches(module: nn.Module, *_: Any) -> None:
    for m in module.modules():
        if getattr(m, "attention_bias_cache", None):
            m.attention_bias_cache = {}


class LevitAnchor(Anchor):
    """timm ``Levit`` / ``LevitDistilled``: stem = convolutions (then flattened to tokens), head =
    pooling + classifier (+ the distillation classifier, averaged with it at inference).

    A stage runs its attention-subsampling block, then its blocks; the subsampling is folded into
    the stage's first block. Features are tokens ``(B, N, C)``, or maps ``(B, C, H, W)`` for the
    ``levit_conv_*`` models (``use_conv=True``).
    """

    family = "levit"
    stem_names = ("stem",)
    head_names = ("head", "head_dist")
    #: Stitched by default (the paper): the first two stages.
    default_stages = (0, 1)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        from timm.models.levit import Levit

        return isinstance(model, Levit)

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        # In eval mode timm's LeViT attention caches its bias table. snnet runs eval forwards when
        # it builds a network, so loading weights afterwards must drop the cache, or the old
        # biases would keep being used.
        self.register_load_state_dict_post_hook(_clear_attention_bias_caches)

    def _infer_input_size(self) -> tuple[int, int, int]:
        # timm's pretrained_cfg keeps 224 even for img_size=64; the attention tables know better.
        m = self.model
        first = m.stages[0].blocks[0] if len(m.stages[0].blocks) else None
        stride = getattr(m.stem, "stride", None)
        if first is None or stride is None:
            return super()._infer_input_size()
        h, w = first.attn.resolution
        return (int(m.in_chans), int(h * stride), int(w * stride))

    @property
    def layout(self) -> str:
        return "nchw" if self.model.use_conv else "tokens"

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward_stem(x)  # the convolutions: (B, C, H, W)
        return x if self.model.use_conv else x.flatten(2).transpose(1, 2)  # (B, N, C)

    def forward_blocks(self, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        if self.training or not torch.is_grad_enabled():
            return super().forward_blocks(h, start, stop)
        # Eval mode with autograd on (e.g. fine-tuning with frozen BN): a cached bias table would
        # tie every forward to the first one's graph and miss weight updates, so compute it fresh.
        _clear_attention_bias_caches(self.model.stages)
        try:
            return super().forward_blocks(h, start, stop)
        finally:
            _clear_attention_bias_caches(self.model.stages)

    def forward_head(self, h: torch.Tensor) -> torch.Tensor:
        # timm's own: pooling, then head and head_dist averaged at inference (not run in order).
        return self.model.forward_head(h)

    def block_names(self) -> list[tuple[str, ...]]:
        return downsample_then_blocks("stages", self.model.stages)

    def stages(self) -> tuple[Stage, ...]:
        depths = [len(stage.blocks) for stage in self.model.stages]
        return consecutive_stages(depths, self.layout, self.default_stages)

    def lora_targets(self, targets: str) -> tuple[str, ...]:
        # The attention's projections (and the MLP's Linears) inside the blocks.
        kinds = lora_kinds(targets, ("attn", "attn_downsample"), ("mlp",))
        return linear_layers(self.model, "stages", kinds)
