"""Choosing a stitch: the best stitch for a budget (the Pareto front is :meth:`Results.pareto`)."""

from __future__ import annotations

import math

from snnet.measure.results import COSTS, FIELDS, Record, Results


def select(
    results: Results,
    *,
    max_gmacs: float | None = None,
    max_params: float | None = None,
    max_latency_ms: float | None = None,
    min_top1: float | None = None,
    cost: str | None = None,
) -> Record:
    """The stitch to deploy for a budget.

    With one or more ``max_*`` budgets: the most accurate stitch within all of them (and at
    least ``min_top1`` if given). With only ``min_top1``: the cheapest stitch at least that
    accurate, by ``cost`` (default GMACs). Ties go to the cheaper stitch (GMACs, then params,
    then latency), then to the one listed first. A budget no stitch meets is a ``ValueError``
    naming the nearest stitch; a budget on a field not measured names the command that
    measures it.

    Example:
        >>> select(results, max_gmacs=3.0).stitch
        Stitch('0:5-1:6')
        >>> select(results, min_top1=80, cost="latency_ms").stitch
    """
    limits = {"gmacs": max_gmacs, "params": max_params, "latency_ms": max_latency_ms}
    budgets = {field: limit for field, limit in limits.items() if limit is not None}
    if not budgets and min_top1 is None:
        raise ValueError(
            "give a budget (max_gmacs, max_params, max_latency_ms) or an accuracy floor (min_top1)"
        )
    for field, limit in budgets.items():
        if math.isnan(limit) or limit <= 0:
            raise ValueError(f"max_{field} must be a number above 0, got {limit}")
    if min_top1 is not None and not 0 <= min_top1 <= 100:
        raise ValueError(f"min_top1 is a percentage: give 0 to 100, got {min_top1}")
    if cost is not None and cost not in COSTS:
        raise ValueError(f"cost {cost!r} is not a cost; choose from {', '.join(COSTS)}")
    for field in [*budgets, "top1", *([cost] if cost else [])]:
        results.require(field)
    rows = list(results)
    order = {r.stitch: i for i, r in enumerate(rows)}

    def fits(r: Record) -> bool:
        return all(getattr(r, f) <= lim for f, lim in budgets.items()) and (
            min_top1 is None or r.top1 >= min_top1
        )

    def cheapness(r: Record) -> tuple:
        latency = r.latency_ms if r.latency_ms is not None else 0.0
        first = (getattr(r, cost),) if cost else ()
        return (*first, r.gmacs, r.params, latency, order[r.stitch])

    feasible = [r for r in rows if fits(r)]
    if not feasible:
        raise ValueError(_infeasible(rows, budgets, min_top1))
    if budgets:
        return min(feasible, key=lambda r: (-r.top1, *cheapness(r)))
    return min(feasible, key=cheapness)


def _infeasible(rows: list[Record], budgets: dict[str, float], min_top1: float | None) -> str:
    """'no stitch fits 0.5 GMACs; the cheapest is '0' at 1.25 GMACs', or the nearest miss."""
    wants = [FIELDS[f].format(lim) for f, lim in budgets.items()]
    if min_top1 is not None:
        wants.append(f"at least {FIELDS['top1'].format(min_top1)}")

    # The nearest stitch overshoots its worst constraint the least (ratios: 1.1 = 10 % over).
    def overshoot(r: Record) -> float:
        ratios = [getattr(r, f) / lim if lim > 0 else float("inf") for f, lim in budgets.items()]
        worst = max(ratios, default=0.0)
        if min_top1 is not None:
            worst = max(worst, min_top1 / r.top1 if r.top1 > 0 else float("inf"))
        return worst

    nearest = min(rows, key=overshoot)
    shown = [*budgets] + (["top1"] if min_top1 is not None else [])
    at = ", ".join(FIELDS[f].format(getattr(nearest, f)) for f in shown)
    if len(shown) == 1 and min_top1 is None:
        what = "the cheapest"
    elif len(shown) == 1:
        what = "the most accurate"
    else:
        what = "the nearest"
    return f"no stitch fits {' and '.join(wants)}; {what} is '{nearest.stitch}' at {at}"
