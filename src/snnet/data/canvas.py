"""Dense sets built from real images that are already here: Fashion-MNIST items placed on a
larger canvas, for the offline dense demo.

- Segmentation (:func:`fashion_mnist_canvas`): ``items`` items per canvas, each at a random
  place on the 7-pixel patch grid of the shipped anchors (so an item covers 4×4 patches, as in
  the anchors' own training); a later item covers an earlier one where its pixels are lit.
  Each pixel is labelled with the class of the item it shows (class ``i + 1`` for Fashion-MNIST
  class ``i``), or 0 (``background``) where no item is lit (value below :data:`LIT`).
- Depth (``depth=True``): the same items drawn at one of three scales (28, 21 or 14 px) at a
  distance that the scale tells (1.5 m / scale: 1.5, 2 or 3 m), in front of a floor that
  recedes from 4 m (bottom row) to 8 m (top row): apparent size and height in the image are
  the monocular cues.

Both are seeded: one seed gives the same canvases on every machine.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from snnet.data.config import FASHION_MNIST_CLASSES, DataConfig
from snnet.data.dense import DenseTargets
from snnet.data.images import ImageSet, fashion_mnist

#: A pixel at least this bright belongs to its item.
LIT = 16
CANVAS_CLASSES = ("background", *FASHION_MNIST_CLASSES)
DEPTH_SCALES = (1.0, 0.75, 0.5)
ITEM_DISTANCE = 1.5  # metres at scale 1
FLOOR = (8.0, 4.0)  # metres at the top and bottom rows
MAX_DEPTH = 10.0
_SPLIT_SEED = {"train": 0, "test": 1}


def canvas_config(size: int) -> DataConfig:
    """Fashion-MNIST's preprocessing at ``size``×``size`` (the whole canvas, no crop)."""
    fm = DataConfig.fashion_mnist()
    return DataConfig(1, (size, size), fm.mean, fm.std, crop_mode="squash")


def fashion_mnist_canvas(
    split: str = "train",
    n: int = 1000,
    *,
    size: int = 56,
    items: int = 3,
    seed: int = 0,
    depth: bool = False,
    root: str | Path | None = None,
) -> ImageSet:
    """``n`` canvases of ``size``×``size`` pixels, their items drawn from Fashion-MNIST's
    ``split``, held in memory with a label map (or with ``depth``, a depth map) each.

    Example:
        >>> train = fashion_mnist_canvas("train", 20_000)
        >>> x, masks = train.batch(torch.arange(8))       # (8, 1, 56, 56), (8, 56, 56) uint8
    """
    if size < 28 or size % 7:
        raise ValueError("a canvas holds 28-px items on a 7-px grid: give a multiple of 7 >= 28")
    source = fashion_mnist(split, root=root)
    g = torch.Generator().manual_seed(seed * 1_000_003 + _SPLIT_SEED.get(split, 2))
    picks = torch.randint(len(source), (n, items), generator=g)
    scales = torch.randint(len(DEPTH_SCALES), (n, items), generator=g) if depth else None
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    if depth:
        rows = torch.linspace(FLOOR[0], FLOOR[1], size).view(size, 1).expand(size, size)
        targets = rows.repeat(n, 1, 1).contiguous()
    else:
        targets = torch.zeros(n, size, size, dtype=torch.uint8)
    items_by_scale = {
        k: _scaled(source.memory, s) for k, s in enumerate(DEPTH_SCALES if depth else (1.0,))
    }
    for k in range(items):
        scale = scales[:, k] if depth else torch.zeros(n, dtype=torch.long)
        for s, pixels in items_by_scale.items():
            who = (scale == s).nonzero().flatten()
            side = pixels.shape[-1]
            cells = (size - side) // 7 + 1
            at = torch.randint(cells, (len(who), 2), generator=g) * 7
            for i, (y, x), item in zip(
                who.tolist(), at.tolist(), picks[who, k].tolist(), strict=True
            ):
                patch = pixels[item, 0]
                lit = patch >= LIT
                images[i, 0, y : y + side, x : x + side][lit] = patch[lit]
                value = ITEM_DISTANCE / DEPTH_SCALES[s] if depth else int(source.targets[item]) + 1
                targets[i, y : y + side, x : x + side][lit] = value
    kind = "depth" if depth else "mask"
    dense = DenseTargets(kind, memory=targets, num_classes=None if depth else len(CANVAS_CLASSES))
    name = f"Fashion-MNIST {split} on {n} {size}-px canvases ({kind}, seed {seed})"
    return ImageSet(
        canvas_config(size), None, classes=CANVAS_CLASSES if not depth else (), memory=images,
        name=name, dense=dense,
    )  # fmt: skip


def _scaled(items: torch.Tensor, scale: float) -> torch.Tensor:
    """Fashion-MNIST's 28-px items at ``scale`` (antialiased), as uint8."""
    if scale == 1.0:
        return items
    side = round(28 * scale)
    x = F.interpolate(items.float(), size=(side, side), mode="bilinear", antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)
