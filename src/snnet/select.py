"""Choosing a stitch: the Pareto front over any cost, and the best stitch for a budget."""

from __future__ import annotations

from snnet.results import Record, Results

#: Fields a budget can bound, how to print them, and the command that measures them.
FIELDS: dict[str, tuple[str, str]] = {
    "gmacs": ("{:.3g} GMACs", "snnet latency MODEL_DIR (or Results.for_network) fills costs"),
    "params": ("{:,} params", "snnet latency MODEL_DIR (or Results.for_network) fills costs"),
    "latency_ms": ("{:.3g} ms", "snnet latency MODEL_DIR --results RESULTS"),
    "top1": ("{:.2f} % top-1", "snnet evaluate MODEL_DIR --results RESULTS"),
    "top5": ("{:.2f} % top-5", "snnet evaluate MODEL_DIR --results RESULTS"),
}


def fmt(field: str, value: float) -> str:
    return FIELDS[field][0].format(value) if field in FIELDS else f"{value} {field}"


def _require(results: Results, field: str) -> None:
    """A field used for selection must be measured for every stitch."""
    if field not in FIELDS:
        raise ValueError(f"unknown field {field!r}; choose from {', '.join(FIELDS)}")
    missing = results.missing(field)
    if len(missing) == len(results):
        raise ValueError(f"no stitch has {field} measured; run `{FIELDS[field][1]}` first")
    if missing:
        raise ValueError(
            f"{field} is measured for only {len(results) - len(missing)} of {len(results)} "
            f"stitches (e.g. not '{missing[0]}'); finish with `{FIELDS[field][1]}` "
            "(it resumes where it stopped)"
        )


def pareto(results: Results, cost: str = "gmacs", metric: str = "top1") -> list[Record]:
    """The exact Pareto front of ``cost`` (``gmacs``, ``params`` or ``latency_ms``: lower is
    better) against ``metric`` (higher is better), sorted by cost.

    Example:
        >>> [str(r.stitch) for r in pareto(results, "latency_ms")]
    """
    _check_results(results)
    _require(results, cost)
    _require(results, metric)
    return results.pareto(cost, metric)


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
    _check_results(results)
    limits = {"gmacs": max_gmacs, "params": max_params, "latency_ms": max_latency_ms}
    budgets = {field: limit for field, limit in limits.items() if limit is not None}
    if not budgets and min_top1 is None:
        raise ValueError(
            "give a budget (max_gmacs, max_params, max_latency_ms) or an accuracy floor (min_top1)"
        )
    for field in [*budgets, "top1", *([cost] if cost else [])]:
        _require(results, field)
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


def _check_results(results: Results) -> None:
    if len(results) == 0:
        raise ValueError("the results hold no stitches: evaluate the network first")


def _infeasible(rows: list[Record], budgets: dict[str, float], min_top1: float | None) -> str:
    """'no stitch fits 0.5 GMACs; the cheapest is '0' at 1.25 GMACs', or the nearest miss."""
    wants = [fmt(f, lim) for f, lim in budgets.items()]
    if min_top1 is not None:
        wants.append(f"at least {fmt('top1', min_top1)}")

    # The nearest stitch overshoots its worst constraint the least (ratios: 1.1 = 10 % over).
    def overshoot(r: Record) -> float:
        ratios = [getattr(r, f) / lim if lim > 0 else float("inf") for f, lim in budgets.items()]
        worst = max(ratios, default=0.0)
        if min_top1 is not None:
            worst = max(worst, min_top1 / r.top1 if r.top1 > 0 else float("inf"))
        return worst

    nearest = min(rows, key=overshoot)
    shown = [*budgets] + (["top1"] if min_top1 is not None else [])
    at = ", ".join(fmt(f, getattr(nearest, f)) for f in shown)
    if len(shown) == 1 and min_top1 is None:
        what = "the cheapest"
    elif len(shown) == 1:
        what = "the most accurate"
    else:
        what = "the nearest"
    return f"no stitch fits {' and '.join(wants)}; {what} is '{nearest.stitch}' at {at}"
