"""Training batches in an order fixed by (seed, epoch), split across ranks, startable mid-epoch.

A resumed run must see exactly the batches the interrupted one would have seen next, without
loading the ones it already trained on: :class:`EpochBatches` computes the epoch's order from the
seed and starts at any position.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset


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
        loader = DataLoader(
            self.dataset,
            batch_sampler=rows.tolist(),
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            # Workers' augmentations are seeded per (epoch, start), not continued across a resume.
            generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch * 7919 + start),
        )
        yield from loader

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self(0)


def first_images(dataset: Dataset, n: int, *, seed: int = 0) -> torch.Tensor:
    """``n`` images drawn without replacement with ``seed``, as one ``(n, C, H, W)`` tensor
    (e.g. calibration images for least squares)."""
    n = min(n, len(dataset))
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    get_batch = getattr(dataset, "get_batch", None)
    if get_batch is not None:
        return get_batch(idx)[0]
    return torch.stack([dataset[int(i)][0] for i in idx])
