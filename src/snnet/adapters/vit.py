"""Plain ViTs from timm (``VisionTransformer``: ViT, DeiT, DeiT-3 and relatives)."""

from __future__ import annotations

import torch
from torch import nn

from snnet.adapters.base import Anchor, Stage, linear_layers, lora_kinds


class ViTAnchor(Anchor):
    """timm ``VisionTransformer``: stem = patch + position embedding, head = norm + pooling + fc."""

    family = "vit"
    stem_names = (
        "patch_embed",
        "cls_token",
        "reg_token",
        "pos_embed",
        "pos_drop",
        "patch_drop",
        "norm_pre",
    )
    head_names = ("norm", "attn_pool", "fc_norm", "head_drop", "head")

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        from timm.models.vision_transformer import VisionTransformer

        return isinstance(model, VisionTransformer)

    def __init__(self, model: nn.Module, **kwargs) -> None:
        if getattr(model, "dynamic_img_size", False):
            raise ValueError(
                "ViT anchors with dynamic_img_size=True have a token count that depends on the "
                "input; create them with dynamic_img_size=False so stitches see fixed shapes"
            )
        super().__init__(model, **kwargs)
        # The patch grid, kept here: a stitch's later anchors are exported without their stem.
        self.grid = tuple(int(v) for v in model.patch_embed.grid_size)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.patch_embed(x)
        x = m._pos_embed(x)  # timm's own position-embedding step (no public equivalent)
        x = m.patch_drop(x)
        return m.norm_pre(x)

    def forward_head(self, h: torch.Tensor) -> torch.Tensor:
        # The final norm belongs to the head, so stitched paths get it too (the reference code's
        # stitched DeiT paths skipped the end anchor's final norm while its anchors applied it).
        return self.model.forward_head(self.model.norm(h))

    def feature_map(self, h: torch.Tensor, block: int) -> torch.Tensor:
        # The patch tokens on the patch grid; the class (and register) tokens are left out.
        b, _, c = h.shape
        rows, cols = self.grid
        patches = h[:, self.model.num_prefix_tokens :]
        return patches.transpose(1, 2).reshape(b, c, rows, cols)

    def block_names(self) -> list[tuple[str, ...]]:
        return [(f"blocks.{i}",) for i in range(len(self.model.blocks))]

    def stages(self) -> tuple[Stage, ...]:
        return (Stage(range(len(self.model.blocks)), "tokens"),)

    def lora_targets(self, targets: str) -> tuple[str, ...]:
        # The attention's projections (and the MLP's Linears) inside the blocks.
        kinds = lora_kinds(targets, ("attn",), ("mlp",))
        return linear_layers(self.model, "blocks", kinds)
