"""The exact Pareto front of cost against accuracy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import groupby
from typing import TypeVar

T = TypeVar("T")


def pareto_front(
    points: Sequence[T], cost: Callable[[T], float], value: Callable[[T], float]
) -> list[T]:
    """Points no other point beats: none is at most as costly and more valuable, or cheaper and
    at least as valuable. Sorted by cost.

    Exact duplicates (same cost and value) are all kept, since neither beats the other; of points
    with equal cost only the most valuable can be on the front, and a costlier point must be
    strictly more valuable than every cheaper one.

    Example:
        >>> pareto_front(rows, cost=lambda r: r.gmacs, value=lambda r: r.top1)
    """
    ordered = sorted(points, key=lambda p: (cost(p), -value(p)))
    front: list[T] = []
    best = float("-inf")  # best value among strictly cheaper points
    for _, same_cost in groupby(ordered, key=cost):
        group = list(same_cost)
        top = value(group[0])
        if top > best:
            front += [p for p in group if value(p) == top]
            best = top
    return front
