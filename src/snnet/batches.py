"""Training batches in an order fixed by (seed, epoch), split across ranks, startable mid-epoch.

A resumed run must see exactly the batches the interrupted one would have seen next, without
loading the ones it already trained on: :class:`EpochBatches` computes the epoch's order from the
seed and starts at any position.

Random augmentation (timm's transforms draw from Python's ``random`` and torch) must not depend
on which DataLoader worker loads an image, nor on how many images that worker loaded before: a
resumed run starts fresh workers at another position. So each image is loaded with every random
source (Python, NumPy, torch) seeded from ``(seed, epoch, index)`` (:func:`item_seed`), and the
caller's states are restored afterwards; an image's augmentation is then the same whatever the
worker count, rank or resume point.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

#: ``epoch`` of :func:`item_seed` for images read outside training's epochs (least squares).
OUTSIDE_EPOCHS = -1


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed every random source gets before image ``index`` of ``epoch`` is loaded: a
    63-bit mix of the three numbers (an index occurs once per epoch, so no two loads share it)."""
    mixed = ((seed * 1_000_003 + epoch + 2) * 2_147_483_647 + index) * 0x9E3779B97F4A7C15
    return mixed % (2**63 - 1)


class SeededItems(Dataset):
    """``dataset`` read with keys ``(index, seed)``: ``self[(i, s)]`` is ``dataset[i]`` with Python's
    ``random``, NumPy's and torch's global generators seeded from ``s``; the caller's generator
    states are put back afterwards, so reading consumes nothing from the training process's.

    Example:
        >>> items = SeededItems(image_folder("train", train=True))
        >>> items[(5, item_seed(0, 2, 5))]   # image 5 as epoch 2 of seed 0 augments it
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        py, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            return self.dataset[index]
        finally:
            random.setstate(py)
            np.random.set_state(np_state)
            torch.set_rng_state(torch_state)


class EpochBatches:
    """Shuffled, equal-sized batches of ``dataset`` for each epoch; rank ``rank`` of
    ``world_size`` gets its own shard, and every rank gets the same number of batches (DDP needs
    it). Datasets with ``get_batch(indices)`` (snnet's in-memory Fashion-MNIST) are read a batch
    at a time; others go through a DataLoader with ``num_workers``.

    Example:
        >>> batches = EpochBatches(fashion_mnist("train"), 128, seed=0)
        >>> for images, labels in batches(epoch=3, start=100):   # resumes mid-epoch
        ...     ...
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        if len(self) == 0:
            raise ValueError(
                f"{len(dataset)} images give no full batch of {batch_size} per rank "
                f"({world_size} ranks): lower --batch-size"
            )

    def __len__(self) -> int:
        return len(self.dataset) // self.world_size // self.batch_size

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's indices for ``epoch``, shape ``(len(self), batch_size)``."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(len(self.dataset), generator=g)
        mine = perm[self.rank :: self.world_size]
        return mine[: len(self) * self.batch_size].view(len(self), self.batch_size)

    def __call__(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rows = self.order(epoch)[start:]
        get_batch = getattr(self.dataset, "get_batch", None)
        if get_batch is not None and self.num_workers == 0:
            for row in rows:
                yield get_batch(row)
            return
        keys = [[(i, item_seed(self.seed, epoch, i)) for i in row] for row in rows.tolist()]
        loader = DataLoader(
            SeededItems(self.dataset),
            batch_sampler=keys,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            # Only the workers' own start-up draws from this; every image is seeded by its key.
            generator=torch.Generator().manual_seed(self.seed),
        )
        yield from loader

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self(0)


def first_images(dataset: Dataset, n: int, *, seed: int = 0) -> torch.Tensor:
    """``n`` images drawn without replacement with ``seed``, as one ``(n, C, H, W)`` tensor
    (e.g. calibration images for least squares); a random transform is seeded per image, so
    the same call gives the same images."""
    n = min(n, len(dataset))
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    get_batch = getattr(dataset, "get_batch", None)
    if get_batch is not None:
        return get_batch(idx)[0]
    items = SeededItems(dataset)
    return torch.stack([items[(int(i), item_seed(seed, OUTSIDE_EPOCHS, int(i)))][0] for i in idx])
