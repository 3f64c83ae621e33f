"""Choosing a stitch: the best stitch for a budget (the Pareto front is :meth:`Results.pareto`)."""

from __future__ import annotations

import math

from snnet.measure.results import COSTS, FIELDS, METRICS, Record, Results


def select(
    results: Results,
    *,
    max_gmacs: float | None = None,
    max_params: float | None = None,
    max_latency_ms: float | None = None,
    min_top1: float | None = None,
    cost: str | None = None,
    metric: str | None = None,
    bound: float | None = None,
) -> Record:
    """The stitch to deploy for a budget, by ``metric`` (default: the results' task metric,
    ``top1``, ``miou`` or ``absrel``), knowing which way it is better (:data:`FIELDS`).

    With one or more ``max_*`` budgets: the best stitch within all of them (and within
    ``bound`` if given). With only ``bound``: the cheapest stitch that reaches it, by ``cost``
    (default GMACs). ``bound`` is a floor for a metric where higher is better (mIoU at least
    ``bound``) and a ceiling where lower is better (AbsRel at most ``bound``); ``min_top1`` is
    ``metric="top1", bound=min_top1``. Ties go to the cheaper stitch (GMACs, then params, then
    latency), then to the one listed first. A budget no stitch meets is a ``ValueError``
    naming the nearest stitch; a budget on a field not measured names the command that
    measures it.

    Example:
        >>> select(results, max_gmacs=3.0).stitch
        Stitch('0:5-1:6')
        >>> select(results, min_top1=80, cost="latency_ms").stitch
        >>> select(depth_results, metric="absrel", bound=0.12).stitch   # AbsRel at most 0.12
    """
    if min_top1 is not None:
        if bound is not None or metric not in (None, "top1"):
            raise ValueError("give min_top1, or a metric and its bound, not both")
        if not 0 <= min_top1 <= 100:
            raise ValueError(f"min_top1 is a percentage: give 0 to 100, got {min_top1}")
        metric, bound = "top1", min_top1
    metric = metric or results.metric
    if metric not in METRICS:
        raise ValueError(f"{metric!r} is not a metric; choose from {', '.join(METRICS)}")
    limits = {"gmacs": max_gmacs, "params": max_params, "latency_ms": max_latency_ms}
    budgets = {field: limit for field, limit in limits.items() if limit is not None}
    if not budgets and bound is None:
        raise ValueError(
            "give a budget (max_gmacs, max_params, max_latency_ms) or a bound on the metric "
            "(min_top1; --at-least / --at-most)"
        )
    for field, limit in budgets.items():
        if math.isnan(limit) or limit <= 0:
            raise ValueError(f"max_{field} must be a number above 0, got {limit}")
    if cost is not None and cost not in COSTS:
        raise ValueError(f"cost {cost!r} is not a cost; choose from {', '.join(COSTS)}")
    for field in [*budgets, metric, *([cost] if cost else [])]:
        results.require(field)
    higher = FIELDS[metric].better == "higher"
    rows = list(results)
    order = {r.stitch: i for i, r in enumerate(rows)}

    def goodness(r: Record) -> float:  # larger is better, whichever way the metric points
        return getattr(r, metric) if higher else -getattr(r, metric)

    def fits(r: Record) -> bool:
        reached = bound is None or goodness(r) >= (bound if higher else -bound)
        return reached and all(getattr(r, f) <= lim for f, lim in budgets.items())

    def cheapness(r: Record) -> tuple:
        latency = r.latency_ms if r.latency_ms is not None else 0.0
        first = (getattr(r, cost),) if cost else ()
        return (*first, r.gmacs, r.params, latency, order[r.stitch])

    feasible = [r for r in rows if fits(r)]
    if not feasible:
        raise ValueError(_infeasible(rows, budgets, metric, bound))
    if budgets:
        return min(feasible, key=lambda r: (-goodness(r), *cheapness(r)))
    return min(feasible, key=cheapness)


def _infeasible(
    rows: list[Record], budgets: dict[str, float], metric: str, bound: float | None
) -> str:
    """'no stitch fits 0.5 GMACs; the cheapest is '0' at 1.25 GMACs', or the nearest miss."""
    f = FIELDS[metric]
    higher = f.better == "higher"
    wants = [FIELDS[b].format(lim) for b, lim in budgets.items()]
    if bound is not None:
        wants.append(f"{'at least' if higher else 'at most'} {f.format(bound)}")

    # The nearest stitch overshoots its worst constraint the least (ratios: 1.1 = 10 % over).
    def overshoot(r: Record) -> float:
        ratios = [getattr(r, b) / lim if lim > 0 else float("inf") for b, lim in budgets.items()]
        worst = max(ratios, default=0.0)
        if bound is not None:
            value = getattr(r, metric)
            miss = bound / value if higher else value / bound if bound > 0 else float("inf")
            worst = max(worst, miss if value > 0 else float("inf"))
        return worst

    nearest = min(rows, key=overshoot)
    shown = [*budgets] + ([metric] if bound is not None else [])
    at = ", ".join(FIELDS[s].format(getattr(nearest, s)) for s in shown)
    if len(shown) == 1 and bound is None:
        what = "the cheapest"
    elif len(shown) == 1:
        what = "the most accurate"
    else:
        what = "the nearest"
    return f"no stitch fits {' and '.join(wants)}; {what} is '{nearest.stitch}' at {at}"
