"""The one meaning of "N images": a seeded sample with every class in proportion."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def stratified_indices(
    targets: Sequence[int] | torch.Tensor, n: int, *, seed: int = 0
) -> list[int]:
    """``n`` indices (sorted) drawn with ``seed``, every class in proportion to its share of
    ``targets`` (the largest remainders get the leftover places; with ``n`` at least the number
    of classes, each class keeps at least one image). The same seed gives the same sample.

    Why stratified: a sorted image folder's first N images are a few classes only, and a plain
    random sample of a few hundred images gives a noisier score than one in proportion.

    Example: ``stratified_indices([0, 0, 0, 1], 2)  # one image of each class``
    """
    labels = torch.as_tensor(targets, dtype=torch.long)
    total = len(labels)
    if n < 1:
        raise ValueError(f"a sample needs at least 1 image, got {n}")
    if n >= total:
        return list(range(total))
    classes, counts = labels.unique(return_counts=True)
    share = counts.double() * n / total
    take = share.floor().long()
    leftover = n - int(take.sum())
    order = sorted(range(len(classes)), key=lambda i: (-(share[i] - take[i]).item(), i))
    for i in order[:leftover]:
        take[i] += 1
    if n >= len(classes):
        for i in (take == 0).nonzero().flatten().tolist():  # tiny classes keep one image
            take[int(take.argmax())] -= 1
            take[i] = 1
    g = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for c, k in zip(classes.tolist(), take.tolist(), strict=True):
        members = (labels == c).nonzero().flatten()
        chosen += members[torch.randperm(len(members), generator=g)[:k]].tolist()
    return sorted(chosen)
