"""The offline demo anchor family: plain timm ViTs trained on Fashion-MNIST, shipped with snnet.

Five ViTs of depth 12 and widths 8, 16, 24, 32 and 64 (``ZOO_ANCHORS``); the demo family
(``DEMO_FAMILY``, the ``fmnist`` preset) is widths 8, 16 and 32. They are timm's own
``VisionTransformer`` on 28x28 grey images cut into 7x7 patches (16 tokens + cls). Their weights live
in ``snnet/weights`` as float16 safetensors files (loaded as float32) next to a JSON record of how
each was trained and what it scored.

Why widths 8 / 16 / 32: a stitch between two anchors can only beat the smaller one when the anchors
are further apart than what stitching loses, and Fashion-MNIST saturates. Neighbours 3.4-3.7x apart
in MACs put the cheapest stitch after each anchor within 1.25x of its cost, and anchors this narrow
keep a training step cheap enough for the demo's time budget (the families compared:
``benchmarks/recipe/FINDINGS.md``, section G). Every anchor stays shipped: saved networks name their
anchors.

This module holds the architectures and the records; the recipe that trains them is
:mod:`snnet.train.zoo_recipe` (``snnet zoo train --all``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from snnet.presets import PRESETS

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
REBUILD_COMMAND = "snnet zoo train --all"


@dataclass(frozen=True)
class DemoAnchorConfig:
    """Architecture of one demo anchor (arguments of timm's ``VisionTransformer``)."""

    embed_dim: int
    num_heads: int
    depth: int = 12
    img_size: int = 28
    patch_size: int = 7
    in_chans: int = 1
    num_classes: int = 10
    mlp_ratio: float = 4.0


# Every shipped anchor, by name. Saved networks name their anchors ("zoo=fmnist_vit_s"), so an anchor
# stays here, with its weights, after the demo stops using it: those networks must keep loading.
ZOO_ANCHORS: dict[str, DemoAnchorConfig] = {
    "fmnist_vit_xs": DemoAnchorConfig(embed_dim=8, num_heads=1),
    "fmnist_vit_s": DemoAnchorConfig(embed_dim=16, num_heads=1),
    "fmnist_vit_sm": DemoAnchorConfig(embed_dim=24, num_heads=2),
    "fmnist_vit_m": DemoAnchorConfig(embed_dim=32, num_heads=2),
    "fmnist_vit_l": DemoAnchorConfig(embed_dim=64, num_heads=4),
}

# The demo family, ordered small to large: the anchors of the ``fmnist`` preset.
DEMO_FAMILY: dict[str, DemoAnchorConfig] = {
    n: ZOO_ANCHORS[n] for n in (source.removeprefix("zoo=") for source in PRESETS["fmnist"][0])
}


def demo_family_names() -> list[str]:
    """Names of the demo anchors, ordered from cheapest to most expensive.

    Example: ``anchors = [create_demo_anchor(n) for n in demo_family_names()]``
    """
    return list(DEMO_FAMILY)


def demo_anchor_config(name: str) -> DemoAnchorConfig:
    """The architecture of demo anchor ``name``; an unknown name lists the valid ones.

    Example: ``demo_anchor_config("fmnist_vit_s").embed_dim == 16``
    """
    if name not in ZOO_ANCHORS:
        raise ValueError(f"unknown demo anchor {name!r}; valid names: {', '.join(ZOO_ANCHORS)}")
    return ZOO_ANCHORS[name]


def build_demo_anchor(cfg: DemoAnchorConfig, *, img_size: int | None = None) -> nn.Module:
    """A freshly initialised timm ``VisionTransformer`` of architecture ``cfg``, taking
    ``img_size`` pixels a side (default ``cfg.img_size``: 28).

    Example: ``model = build_demo_anchor(DemoAnchorConfig(embed_dim=16, num_heads=1))``
    """
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        img_size=img_size or cfg.img_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        num_classes=cfg.num_classes,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
    )
    # timm's plain attention is faster than fused SDPA on CPU at head dim 16 (on GPU the fused
    # kernel wins). Numerically the two paths are the same function.
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    return model


def weights_path(name: str, weights_dir: str | Path | None = None) -> Path:
    """Path of the safetensors file of demo anchor ``name``."""
    demo_anchor_config(name)
    return Path(weights_dir or WEIGHTS_DIR) / f"{name}.safetensors"


def create_demo_anchor(
    name: str,
    *,
    pretrained: bool = True,
    weights_dir: str | Path | None = None,
    img_size: int | None = None,
) -> nn.Module:
    """Build demo anchor ``name`` (a timm ``VisionTransformer``), with its shipped weights if pretrained.

    ``img_size`` (a multiple of the 7-px patch) builds it for larger images: its position
    embeddings, trained on the 4×4 patch grid of 28 px, are resampled to the new grid (timm's
    ``resample_abs_pos_embed``, as re-heading a checkpoint does); every other weight is used as
    it is. The model is returned in eval mode when pretrained, in float32.

    Example: ``model = create_demo_anchor("fmnist_vit_s"); logits = model(torch.zeros(8, 1, 28, 28))``
    """
    cfg = demo_anchor_config(name)
    if img_size is not None and (img_size < cfg.patch_size or img_size % cfg.patch_size):
        raise ValueError(
            f"zoo={name} takes {cfg.in_chans}×{cfg.img_size}×{cfg.img_size} images and cannot be "
            f"resized to {img_size} px: its {cfg.patch_size}-px patches need a multiple of "
            f"{cfg.patch_size} (e.g. {2 * cfg.img_size})"
        )
    model = build_demo_anchor(cfg, img_size=img_size)
    if pretrained:
        from safetensors.torch import load_file

        path = weights_path(name, weights_dir)
        if not path.is_file():
            raise FileNotFoundError(
                f"weights of demo anchor {name!r} not found at {path}; build them with "
                f"`snnet zoo train --name {name}` (or `{REBUILD_COMMAND}`)"
            )
        state = {k: v.float() for k, v in load_file(str(path)).items()}
        if img_size is not None and img_size != cfg.img_size:
            state["pos_embed"] = _resampled(state["pos_embed"], model)
        model.load_state_dict(state, strict=True)
        model.eval()
    return model


def _resampled(pos_embed: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """The shipped position embeddings on ``model``'s patch grid (bicubic, prefix tokens kept)."""
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(
        pos_embed,
        new_size=list(model.patch_embed.grid_size),
        num_prefix_tokens=model.num_prefix_tokens,
    )


def demo_anchor_record(name: str, weights_dir: str | Path | None = None) -> dict:
    """The JSON record written when demo anchor ``name`` was trained (recipe, accuracy, cost)."""
    path = weights_path(name, weights_dir).with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"no training record {path}; run `snnet zoo train --name {name}`")
    return json.loads(path.read_text())
