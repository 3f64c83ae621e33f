"""Dense sets built from real images that are already here: Fashion-MNIST items placed on a
larger canvas, for the offline dense demo.

- Segmentation (:func:`fashion_mnist_canvas`): ``items`` items per canvas, each at a random
  place on the 7-pixel patch grid of the shipped anchors (so an item covers 4×4 patches, as in
  the anchors' own training); a later item covers an earlier one where its pixels are lit.
  Each pixel is labelled with the class of the item it shows (class ``i + 1`` for Fashion-MNIST
  class ``i``), or 0 (``background``) where no item is lit (value below :data:`LIT`).
- Depth (``depth=True``): the same canvases, each item standing at the distance of its kind
  (Fashion-MNIST class ``i`` at ``1 + 0.5 i`` metres: t-shirts at 1 m, ankle boots at 5.5 m),
  in front of a floor that recedes from 6 m (bottom row) to 9 m (top row): what an item is and
  where a pixel lies in the image are the cues, so recognising the items is most of the task.

Both are seeded: one seed gives the same canvases on every machine.
"""

from __future__ import annotations

from pathlib import Path

import torch

from snnet.data.config import FASHION_MNIST_CLASSES, DataConfig
from snnet.data.dense import DenseTargets
from snnet.data.images import ImageSet, fashion_mnist

#: A pixel at least this bright belongs to its item.
LIT = 16
CANVAS_CLASSES = ("background", *FASHION_MNIST_CLASSES)
NEAREST, STEP = 1.0, 0.5  # metres: class i stands at NEAREST + STEP * i
FLOOR = (9.0, 6.0)  # metres at the top and bottom rows
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
    at = torch.randint((size - 28) // 7 + 1, (n, items, 2), generator=g) * 7
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    if depth:
        rows = torch.linspace(FLOOR[0], FLOOR[1], size).view(size, 1).expand(size, size)
        targets = rows.repeat(n, 1, 1).contiguous()
    else:
        targets = torch.zeros(n, size, size, dtype=torch.uint8)
    for i in range(n):
        for k in range(items):
            item, (y, x) = int(picks[i, k]), at[i, k].tolist()
            patch = source.memory[item, 0]
            lit = patch >= LIT
            label = int(source.targets[item])
            images[i, 0, y : y + 28, x : x + 28][lit] = patch[lit]
            value = NEAREST + STEP * label if depth else label + 1
            targets[i, y : y + 28, x : x + 28][lit] = value
    kind = "depth" if depth else "mask"
    dense = DenseTargets(kind, memory=targets, num_classes=None if depth else len(CANVAS_CLASSES))
    name = f"Fashion-MNIST {split} on {n} {size}-px canvases ({kind}, seed {seed})"
    return ImageSet(
        canvas_config(size), None, classes=CANVAS_CLASSES if not depth else (), memory=images,
        name=name, dense=dense,
    )  # fmt: skip
