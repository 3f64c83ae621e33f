"""Batches: the one path from an image set to normalised batches, and the training order.

:func:`load_batches` turns rows of indices into batches, for every reader of images (training,
least squares, validation, evaluation, the teachers' cache). Images held in memory are indexed a
batch at a time; files are decoded in ``num_workers`` processes and normalised once per batch.

Random augmentation must not depend on which worker loads an image, nor on how many images that
worker loaded before: a resumed run starts fresh workers at another position. So each file is
loaded with every random source (Python, NumPy, torch) seeded from ``(seed, epoch, index)``
(:func:`item_seed`) and the caller's states are restored afterwards, and an in-memory batch
draws from a generator seeded from ``(seed, epoch, position)``. An image's augmentation is then
the same whatever the worker count, rank or resume point.

:class:`EpochBatches` fixes each epoch's order from the seed and starts at any position, so a
resumed run sees exactly the batches the interrupted one would have seen next.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from snnet.threads import usable_cores

#: ``epoch`` of :func:`item_seed` for images read outside training's epochs.
OUTSIDE_EPOCHS = -1

Batch = tuple[torch.Tensor, torch.Tensor]


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed every random source gets before image ``index`` of ``epoch`` is loaded: a
    63-bit mix of the three numbers (an index occurs once per epoch, so no two loads share it)."""
    mixed = ((seed * 1_000_003 + epoch + 2) * 2_147_483_647 + index) * 0x9E3779B97F4A7C15
    return mixed % (2**63 - 1)


def default_workers(images: Dataset) -> int:
    """Data-loading processes when none are asked for: none for images in memory (workers
    would only add copying), else one per usable core but one (left to the network), at most 8."""
    if getattr(images, "memory", None) is not None:
        return 0
    return min(8, max(1, usable_cores() - 1))


class SeededItems(Dataset):
    """``dataset`` read with keys ``(index, seed)``: ``self[(i, s)]`` is ``dataset[i]`` with Python's
    ``random``, NumPy's and torch's global generators seeded from ``s``; the caller's generator
    states are put back afterwards, so reading consumes nothing from the process's own.

    Example:
        >>> items = SeededItems(image_folder("train", config, augment=Augment("timm")))
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


def load_batches(
    images: Dataset,
    rows: Iterable[Sequence[int] | torch.Tensor],
    *,
    seed: int = 0,
    epoch: int = OUTSIDE_EPOCHS,
    start: int = 0,
    num_workers: int | None = None,
) -> Iterator[Batch]:
    """One ``(images (B, C, H, W) float, targets)`` batch per row of indices, in order.

    ``images`` is an :class:`~snnet.data.images.ImageSet` (or any map-style dataset of
    ``(tensor, label)`` items, batched as they are). ``seed``, ``epoch`` and ``start`` (the
    position of the first row in its epoch) fix the augmentation's draws; ``num_workers``
    defaults to :func:`default_workers`.

    Example:
        >>> rows = torch.arange(len(test)).split(256)
        >>> for x, y in load_batches(test, rows): ...
    """
    rows = [torch.as_tensor(r, dtype=torch.long) for r in rows]
    memory = getattr(images, "memory", None) is not None
    if memory:
        for position, row in enumerate(rows, start=start):
            g = torch.Generator().manual_seed(item_seed(seed, epoch, position))
            yield images.batch(row, generator=g)
        return
    workers = default_workers(images) if num_workers is None else num_workers
    keys = [[(i, item_seed(seed, epoch, i)) for i in row.tolist()] for row in rows]
    loader = DataLoader(
        SeededItems(images),
        batch_sampler=keys,
        num_workers=min(workers, len(keys)),
        pin_memory=torch.cuda.is_available(),
        # Only the workers' own start-up draws from this; every image is seeded by its key.
        generator=torch.Generator().manual_seed(seed),
    )
    normalize = getattr(getattr(images, "config", None), "normalize", None)
    for x, y in _own_errors(loader):
        yield (normalize(x) if normalize is not None else x), y


def _own_errors(loader: DataLoader) -> Iterator[Any]:
    """The loader's batches; a ValueError raised in a worker (a malformed file, named by the
    data layer in one line) is raised here with that line alone, not the worker's traceback."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except ValueError as e:
            lines = str(e).strip().splitlines()
            if len(lines) > 1 and lines[-1].startswith("ValueError: "):
                raise ValueError(lines[-1].removeprefix("ValueError: ")) from None
            raise
        yield batch


def in_order(n: int, batch_size: int, indices: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Rows of ``batch_size`` indices over ``indices`` (default ``0..n-1``), in order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    idx = torch.arange(n) if indices is None else torch.as_tensor(indices, dtype=torch.long)
    return [row for row in idx.split(batch_size) if len(row)]


class EpochBatches:
    """Shuffled, equal-sized batches of ``images`` for each epoch; rank ``rank`` of
    ``world_size`` gets its own shard, and every rank gets the same number of batches (DDP
    needs it).

    Example:
        >>> batches = EpochBatches(fashion_mnist("train"), 128, seed=0)
        >>> for images, labels in batches(epoch=3, start=100):   # resumes mid-epoch
        ...     ...
    """

    def __init__(
        self,
        images: Dataset,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.images, self.batch_size, self.seed = images, batch_size, seed
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        if len(self) == 0:
            raise ValueError(
                f"{len(images)} images give no full batch of {batch_size} per rank "
                f"({world_size} ranks): lower --batch-size"
            )

    def __len__(self) -> int:
        return len(self.images) // self.world_size // self.batch_size

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's indices for ``epoch``, shape ``(len(self), batch_size)``."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(len(self.images), generator=g)
        mine = perm[self.rank :: self.world_size]
        return mine[: len(self) * self.batch_size].view(len(self), self.batch_size)

    def __call__(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        return load_batches(
            self.images,
            self.order(epoch)[start:],
            seed=self.seed,
            epoch=epoch,
            start=start,
            num_workers=self.num_workers,
        )

    def __iter__(self) -> Iterator[Batch]:
        return self(0)
