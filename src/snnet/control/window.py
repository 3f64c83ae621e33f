"""Samples over a sliding time window, and the one percentile the serving side reports.

Every serving statistic that looks back in time (arrivals, end-to-end latencies, the time outside
the batcher, batches run, the event loop's lag) keeps its samples in a :class:`TimeWindow`.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0 < q <= 100) by nearest rank: the smallest value with at least
    ``q`` % of the values at or below it, always one of the values.

    The SLO controller decides on it and ``/v1/status`` reports it, so the p99 a user reads is
    the p99 the controller acts on.

    Example:
        >>> percentile(range(1, 101), 99), percentile([5.0, 1.0, 3.0], 50)
        (99, 3.0)
    """
    xs = sorted(values)
    if not xs:
        raise ValueError("no values to take a percentile of")
    return xs[min(len(xs) - 1, max(1, math.ceil(q / 100 * len(xs))) - 1)]


class TimeWindow(Generic[T]):
    """Values stamped with the time they happened, kept while younger than ``span_s``.

    Stamps come in time order (any monotonic clock, in seconds); :meth:`forget` drops from the
    oldest end, so a stamp slightly out of order leaves with its neighbours.

    Example:
        >>> w = TimeWindow[float](10.0)
        >>> w.add(0.0, 12.5); w.add(4.0, 30.0)
        >>> w.forget(now=12.0); list(w.values())
        [30.0]
    """

    __slots__ = ("_times", "_values", "span_s")

    def __init__(self, span_s: float) -> None:
        self.span_s = span_s
        self._times: deque[float] = deque()
        self._values: deque[T] = deque()

    def add(self, t: float, value: T, count: int = 1) -> None:
        """``count`` samples of ``value`` at ``t``."""
        if count == 1:
            self._times.append(t)
            self._values.append(value)
        else:
            self._times.extend([t] * count)
            self._values.extend([value] * count)

    def forget(self, now: float) -> None:
        """Drop the samples older than ``span_s`` at ``now``."""
        self.drop_before(now - self.span_s)

    def drop_before(self, t: float) -> None:
        """Drop the samples stamped before ``t``, oldest first."""
        times, values = self._times, self._values
        while times and times[0] < t:
            times.popleft()
            values.popleft()

    def count_since(self, t: float) -> int:
        """Samples stamped at ``t`` or later (by bisection: the stamps are in order)."""
        return len(self._times) - bisect_left(self._times, t)

    def values(self) -> Iterator[T]:
        return iter(self._values)

    def items(self) -> Iterator[tuple[float, T]]:
        """``(stamp, value)`` pairs, oldest first."""
        return zip(self._times, self._values, strict=True)

    def __len__(self) -> int:
        return len(self._times)
