"""Training-time augmentation: the transforms an :class:`~snnet.data.config.Augment` stands for.

Every transform here takes an (image, target) pair and returns one, so a geometric change moves
a dense target (a mask, a depth map: ``(H, W)`` per image) with its image, while a class label
passes through. ``light`` works on uint8 tensors, a whole in-memory batch at once or one decoded
image at a time: the same function either way. ``timm`` is timm's ImageNet recipe on PIL images
(random resized crop, flip, colour jitter, optional AutoAugment), for class labels only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from snnet.data.config import Augment, DataConfig, pil_steps

if TYPE_CHECKING:
    import torch


def default_augment(
    config: DataConfig, image_sizes: Sequence[tuple[int, int, str]], *, hflip: float | None = None
) -> Augment:
    """The augmentation for data whose images have ``(width, height, PIL mode)``
    ``image_sizes`` (a few samples): timm's ImageNet recipe only for natural RGB images of at
    least 128 px fed to RGB anchors; none for small or grey images, whose content a random crop
    of 8 % of the area would destroy, and where even ``light``'s shifts cost accuracy in the few
    epochs SN-Net trains. ``hflip`` overrides the kind's flip rate (a flip alone makes it
    ``light``)."""
    rgb = config.channels == 3 and all(
        m not in ("1", "L", "LA", "I", "I;16", "F") for *_, m in image_sizes
    )
    large = bool(image_sizes) and min(min(w, h) for w, h, _ in image_sizes) >= 128
    if rgb and large:
        return Augment("timm", hflip=hflip)
    return Augment("light", hflip=hflip) if hflip else Augment("none")


# -- the transforms -------------------------------------------------------------------------------
def shift_pad(size: Sequence[int]) -> int:
    """How far ``light`` shifts an image of ``size`` (H, W): 1/16 of the short side, at least 1."""
    return max(1, round(min(size) / 16))


def shift_and_flip(
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    pad: int,
    flip: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``light``: each image shifted by up to ``pad`` pixels (zero fill) and flipped with
    probability ``flip``; ``images`` (B, C, H, W), ``targets`` (B,) labels, or (B, H, W) dense
    targets that move with their images (filled with 255, the ignore index, where the shift
    uncovers nothing). Draws from ``generator`` (torch's global one when None)."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = images.shape
    dense = targets.ndim == 3
    if pad > 0:
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
        batch = torch.arange(b)[:, None, None]
        padded = F.pad(images, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
        images = padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # (B, C, H, W)
        if dense:
            fill = 255 if targets.dtype == torch.uint8 or not targets.is_floating_point() else 0
            targets = F.pad(targets, (pad, pad, pad, pad), value=fill)[batch, rows, cols]
    if flip > 0:
        mask = torch.rand(b, generator=generator) < flip
        images = torch.where(mask[:, None, None, None], images.flip(-1), images)
        if dense:
            targets = torch.where(mask[:, None, None], targets.flip(-1), targets)
    return images, targets


@functools.lru_cache(maxsize=8)
def timm_steps(config: DataConfig, augment: Augment) -> list[Any]:
    """timm's training recipe for ``config``'s input as PIL steps (random resized crop, flip,
    colour jitter, AutoAugment), without the conversion to a normalised tensor."""
    from timm.data import create_transform

    jitter = augment.color_jitter if augment.color_jitter is not None else 0.4
    transform = create_transform(
        input_size=config.input_size,
        is_training=True,
        mean=config.mean,
        std=config.std,
        interpolation=config.interpolation,
        scale=augment.scale,
        hflip=augment.flip,
        color_jitter=jitter if config.channels == 3 else None,  # jitter assumes RGB
        auto_augment=augment.auto_augment,
    )
    return pil_steps(list(transform.transforms))
