"""The queueing model the SLO controller predicts with: a batched server in front of one worker.

Batches close at ``max_batch`` requests or after ``max_wait_ms``; a batch of ``size`` takes a time
linear between the measured batch-1 and full-batch times, times the machine's slowdown against
those measurements. Under load the next batch takes every waiting request (up to ``max_batch``),
so a backlog drains at the full-batch rate μ: that is the rate the queue is served at.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class QueueModel:
    """Compute times and the uncalibrated p99 of each front stitch (``i``: its index on the
    front, cheapest first). Rates are in requests per second, times in ms.

    Example:
        >>> m = QueueModel(one_ms=(1.0, 2.0), full_ms=(4.0, 8.0), max_batch=8, max_wait_ms=2.0)
        >>> m.batch_time(1, 8), m.capacity(0)
        (8.0, 2000.0)
    """

    one_ms: Sequence[float]  # batch-1 time per front stitch
    full_ms: Sequence[float]  # time of a batch of max_batch per front stitch
    max_batch: int
    max_wait_ms: float

    def batch_time(self, i: int, size: int, slowdown: float = 1.0) -> float:
        """Compute time of a batch of ``size``: linear between the batch-1 and the full-batch
        time, times ``slowdown``."""
        b = self.max_batch
        t1, tb = self.one_ms[i], self.full_ms[i]
        per_image = (tb - t1) / (b - 1) if b > 1 else 0.0
        return (t1 + per_image * (max(size, 1) - 1)) * slowdown

    def steady_batch(self, i: int, rate: float, slowdown: float = 1.0) -> int:
        """The batch size in steady state at ``rate``: what arrives while one batch waits and
        runs."""
        lam = rate / 1e3  # per ms
        waits = self.max_wait_ms + self.batch_time(i, 1, slowdown)
        return min(self.max_batch, max(1, round(lam * waits)))

    def own_batch(self, i: int, rate: float, slowdown: float = 1.0) -> float:
        """Compute time of the batch a request arriving at ``rate`` runs in."""
        return self.batch_time(i, self.steady_batch(i, rate, slowdown), slowdown)

    def ahead(self, i: int, queue_depth: int, slowdown: float = 1.0) -> float:
        """Compute time of the full batches ``queue_depth`` waiting requests form."""
        b = self.max_batch
        return math.ceil(queue_depth / b) * self.batch_time(i, b, slowdown)

    def capacity(self, i: int, slowdown: float = 1.0) -> float:
        """Requests per second stitch ``i`` carries in full batches."""
        return self.max_batch / self.batch_time(i, self.max_batch, slowdown) * 1e3

    def p99(
        self,
        i: int,
        rate: float,
        queue_depth: int,
        *,
        slowdown: float = 1.0,
        overhead_ms: float = 0.0,
    ) -> float:
        """End-to-end p99: forming the batch, clearing the queue ahead, waiting as in an M/M/1
        queue served at the full-batch rate (p99 wait = ln(100 ρ) / (μ − λ)) halved for
        near-constant batch times (M/D/1: the Pollaczek-Khinchine mean wait is half the
        exponential one's), computing its own batch, and ``overhead_ms`` outside the batcher;
        infinite at or beyond capacity. The figure is off by a factor that depends on the
        machine and the load, nearly uniform along the front: the controller calibrates it."""
        lam = rate / 1e3  # per ms
        b = self.steady_batch(i, rate, slowdown)
        own = self.batch_time(i, b, slowdown)
        full = self.batch_time(i, self.max_batch, slowdown)
        mu = self.max_batch / full if full > 0 else math.inf  # requests served per ms
        if lam >= mu:
            return math.inf
        form = min(self.max_wait_ms, b / lam) if lam > 0 else self.max_wait_ms
        ahead = self.ahead(i, queue_depth, slowdown)
        rho = lam / mu
        wait = 0.5 * max(0.0, math.log(100 * rho)) / (mu - lam) if rho > 0 else 0.0
        return form + ahead + wait + own + overhead_ms
