"""Training-time augmentation: the :class:`Augment` value and the transforms it stands for.

Every transform here takes an (image, target) pair and returns one, so a geometric change moves
a dense target (a mask, a depth map: ``(H, W)`` per image) with its image, while a class label
passes through. ``light`` works on uint8 tensors, a whole in-memory batch at once or one decoded
image at a time: the same function either way. ``timm`` is timm's ImageNet recipe on PIL images
(random resized crop, flip, colour jitter, optional AutoAugment), for class labels only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from snnet.data.config import DataConfig

AUGMENTS = ("none", "light", "timm")


@dataclass(frozen=True)
class Augment:
    """``none``, ``light`` (random shifts of up to 1/16 of the side with zero fill, flips only
    with ``hflip``: a flip changes the meaning of digits and text) or ``timm`` (timm's ImageNet
    recipe: random resized crop of ``scale``, flips, colour jitter, optional ``auto_augment``).

    ``None`` knobs take the kind's default (timm: scale (0.08, 1), hflip 0.5, colour jitter 0.4;
    light: hflip 0). ``auto``: the kind :func:`default_augment` picks for the data.

    Example:
        >>> Augment("timm", scale=(0.5, 1.0), auto_augment="rand-m9-mstd0.5")
    """

    kind: str = "none"
    scale: tuple[float, float] | None = None
    hflip: float | None = None
    color_jitter: float | None = None
    auto_augment: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in (*AUGMENTS, "auto"):
            raise ValueError(f"unknown augmentation {self.kind!r}; choose {', '.join(AUGMENTS)}")
        if self.hflip is None and self.kind in ("light", "timm"):  # equal values, equal recipes
            object.__setattr__(self, "hflip", 0.5 if self.kind == "timm" else 0.0)
        if self.kind == "none" and self.hflip:
            raise ValueError("--hflip needs an augmentation: add --augment light or timm")
        if self.hflip is not None and not 0 <= self.hflip <= 1:
            raise ValueError(f"hflip is a probability in [0, 1], got {self.hflip}")
        if self.scale is not None and not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        only_timm = {"scale": self.scale, "color_jitter": self.color_jitter}
        only_timm["auto_augment"] = self.auto_augment
        given = [k.replace("_", "-") for k, v in only_timm.items() if v is not None]
        if given and self.kind != "timm":  # auto too: these knobs choose timm
            raise ValueError(
                f"--{', --'.join(given)} apply to timm's augmentation only: add --augment timm "
                f"(or drop them for --augment {self.kind})"
            )

    @property
    def flip(self) -> float:
        """Probability of a horizontal flip."""
        if self.hflip is not None:
            return self.hflip
        return 0.5 if self.kind == "timm" else 0.0

    @property
    def active(self) -> bool:
        """Whether it changes any image."""
        return self.kind in ("light", "timm")

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "scale": list(self.scale) if self.scale else None,
            "hflip": self.flip,
            "color_jitter": self.color_jitter,
            "auto_augment": self.auto_augment,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Augment:
        scale = d.get("scale")
        return cls(
            d.get("kind", "none"),
            scale=tuple(scale) if scale else None,
            hflip=d.get("hflip"),
            color_jitter=d.get("color_jitter"),
            auto_augment=d.get("auto_augment"),
        )


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

    from snnet.data.config import pil_steps

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
