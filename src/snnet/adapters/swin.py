"""Swin Transformers from timm (``SwinTransformer``): four stages of channels-last maps."""

from __future__ import annotations

from torch import nn

from snnet.adapters.base import (
    Anchor,
    Stage,
    consecutive_stages,
    downsample_then_blocks,
    linear_layers,
    lora_kinds,
)


class SwinAnchor(Anchor):
    """timm ``SwinTransformer``: stem = patch embedding, head = norm + pooling + fc.

    A stage runs its patch merging, then its blocks; the merging is folded into the stage's first
    block, so every cut falls between two blocks at one resolution. Features are ``(B, H, W, C)``.
    """

    family = "swin"
    stem_names = ("patch_embed",)  # -> (B, H, W, C)
    head_names = ("norm", "head")  # timm's forward_head is head(norm(x)): pooling + fc
    #: Stitched by default (the paper): every stage but the last.
    default_stages = (0, 1, 2)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        from timm.models.swin_transformer import SwinTransformer

        return isinstance(model, SwinTransformer)

    def block_names(self) -> list[tuple[str, ...]]:
        return downsample_then_blocks("layers", self.model.layers)

    def stages(self) -> tuple[Stage, ...]:
        depths = [len(stage.blocks) for stage in self.model.layers]
        return consecutive_stages(depths, "nhwc", self.default_stages)

    def lora_targets(self, targets: str) -> tuple[str, ...]:
        # The attention's projections (and the MLP's Linears) inside the blocks.
        kinds = lora_kinds(targets, ("attn",), ("mlp",))
        return linear_layers(self.model, "layers", kinds)
