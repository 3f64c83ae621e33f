"""Following a cost budget that changes at runtime: the best stitch within it, by one search."""

from __future__ import annotations

from bisect import bisect_right
from typing import TYPE_CHECKING

from snnet.measure.results import FIELDS, Record, Results
from snnet.stitch import Stitch

if TYPE_CHECKING:
    from snnet.network import SNNet


class BudgetController:
    """Keeps ``net`` on the most accurate stitch that fits the current budget.

    Only stitches on the Pareto front of ``cost`` (``latency_ms``, ``gmacs`` or ``params``)
    against ``metric`` are candidates, so a budget maps to a stitch by one binary search, and
    switching only sets ``net.stitch`` (no weights move). A budget below the cheapest stitch
    runs the cheapest one and reports ``fits = False`` instead of failing a live service.

    With ``adapt=True`` (latency budgets), :meth:`observe` takes the latency actually seen and
    scales the measured table by a smoothed slowdown factor, so the controller steps down when
    the machine gets busier than it was when latency was measured, and back up when it calms.
    A server holding a latency SLO uses :class:`~snnet.control.SloController` instead.

    Example:
        >>> ctrl = BudgetController(net, results, cost="latency_ms", adapt=True)
        >>> ctrl.set_budget(20.0)          # net now runs the best stitch under 20 ms
        Stitch('1:9-2:10')
        >>> start = time.perf_counter(); y = net(x)
        >>> ctrl.observe((time.perf_counter() - start) * 1e3)   # adapts to the machine's load
    """

    def __init__(
        self,
        net: SNNet,
        results: Results,
        *,
        cost: str = "latency_ms",
        metric: str | None = None,
        adapt: bool = False,
        smoothing: float = 0.2,
    ) -> None:
        results.check_network(net)
        metric = metric or results.metric  # the task's: top1, miou or absrel
        self.net, self.results, self.cost, self.metric = net, results, cost, metric
        self.front: list[Record] = results.pareto(cost, metric, complete=True)
        self._costs = [getattr(r, cost) for r in self.front]
        self.adapt, self.smoothing = adapt, smoothing
        self.slowdown = 1.0  # observed / measured cost of the running stitch (smoothed)
        self.budget: float | None = None
        self.fits = True

    def choose(self, budget: float) -> Record:
        """The front row for ``budget`` (in units of ``cost``), without switching: the most
        accurate that fits, else the cheapest. Safe to call from several threads."""
        i = bisect_right(self._costs, budget / self.slowdown) - 1
        return self.front[max(i, 0)]

    def set_budget(self, budget: float) -> Stitch:
        """Switch ``net`` to the stitch for ``budget`` and return it."""
        row = self.choose(budget)
        self.budget = budget
        self.fits = getattr(row, self.cost) * self.slowdown <= budget
        self.net.stitch = row.stitch
        return row.stitch

    def observe(self, value: float) -> Stitch:
        """Report the cost actually seen for one call of the current stitch (e.g. measured ms);
        with ``adapt=True`` the stitch is re-chosen for the current budget."""
        if self.adapt and self.budget is not None:
            expected = getattr(self._row(self.net.stitch), self.cost)
            ratio = value / expected if expected > 0 else 1.0
            self.slowdown += self.smoothing * (ratio - self.slowdown)
            return self.set_budget(self.budget)
        return self.net.stitch

    def _row(self, stitch: Stitch) -> Record:
        for r in self.front:
            if r.stitch == stitch:
                return r
        raise ValueError(f"stitch {stitch} is not on the Pareto front the controller uses")

    def __repr__(self) -> str:
        budget = "none" if self.budget is None else FIELDS[self.cost].format(self.budget)
        return (
            f"BudgetController(cost={self.cost!r}, budget={budget}, stitch='{self.net.stitch}', "
            f"front={len(self.front)} stitches, slowdown={self.slowdown:.2f})"
        )
