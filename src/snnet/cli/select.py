"""``snnet select``: the best stitch within a budget (or the cheapest that reaches a bound), by the
task's metric (top-1, mIoU, AbsRel) or another, knowing which way each is better."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from snnet.measure.results import COSTS, METRICS

if TYPE_CHECKING:
    from snnet.measure.results import Results


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", required=True, help="results file (snnet evaluate / latency)")
    add_budget_arguments(p)
    p.add_argument(
        "--cost",
        choices=COSTS,
        default=None,
        help="what 'cheapest' means with a bound alone, and the cost axis of --pareto",
    )
    p.add_argument(
        "--metric",
        choices=METRICS,
        default=None,
        help="what 'best' means (default: the task's: top1, miou, or absrel where lower is better)",
    )
    p.add_argument("--pareto", action="store_true", help="print the Pareto front instead")
    p.add_argument("--json", action="store_true", help="print JSON")


#: The options :func:`add_budget_arguments` adds, as argparse names: limits on a cost or top-1,
#: and a bound on the task's metric.
LIMITS = ("max_gmacs", "max_params", "max_latency_ms", "min_top1")
BOUNDS = ("at_least", "at_most")


def given_budgets(args: argparse.Namespace) -> list[str]:
    """The budget options given (a budget picks one stitch)."""
    return [k for k in (*LIMITS, *BOUNDS) if getattr(args, k, None) is not None]


def add_budget_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-gmacs", type=float, default=None, help="budget in GMACs per image")
    p.add_argument("--max-params", type=float, default=None, help="budget in parameters")
    p.add_argument("--max-latency-ms", type=float, default=None, help="budget in ms per batch")
    p.add_argument("--min-top1", type=float, default=None, help="accuracy floor, percent")
    p.add_argument(
        "--at-least",
        type=float,
        default=None,
        metavar="V",
        help="a floor on the metric (one where higher is better, e.g. mIoU %%)",
    )
    p.add_argument(
        "--at-most",
        type=float,
        default=None,
        metavar="V",
        help="a ceiling on the metric (one where lower is better, e.g. AbsRel)",
    )


def budgets(args: argparse.Namespace, results: Results | None = None) -> dict[str, Any]:
    """The keyword arguments of :func:`snnet.measure.select.select` the options give. A bound
    that points the wrong way for the metric (``--at-most`` on mIoU) is refused; ``results``
    tells the default metric."""
    out: dict[str, Any] = {k: getattr(args, k) for k in LIMITS if getattr(args, k) is not None}
    if getattr(args, "metric", None) is not None:
        out["metric"] = args.metric
    if args.at_least is not None and args.at_most is not None:
        raise ValueError("give --at-least or --at-most, not both")
    given = "--at-least" if args.at_least is not None else "--at-most"
    bound = args.at_least if args.at_least is not None else args.at_most
    if bound is None:
        return out
    from snnet.measure.results import FIELDS

    metric = out.get("metric") or (results.metric if results is not None else "top1")
    better = FIELDS[metric].better
    if (given == "--at-least") != (better == "higher"):
        other = "--at-most" if given == "--at-least" else "--at-least"
        raise ValueError(
            f"{metric} is better {better}: bound it with {other} {bound:g}, not {given}"
        )
    out["bound"] = bound
    return out


def run(args: argparse.Namespace) -> int:
    from snnet.measure.results import Results, format_table
    from snnet.measure.select import select

    results = Results.load(args.results)
    if args.pareto:
        cost = args.cost or "gmacs"
        front = results.pareto(cost, args.metric, complete=True)
        if args.json:
            print(json.dumps([r.to_json() for r in front], indent=2))
        else:
            print(format_table(results, [r.stitch for r in front], cost=cost, metric=args.metric))
            print(f"\n{len(front)} of {len(results)} stitches on the front of {cost}")
        return 0
    chosen = select(results, cost=args.cost, **budgets(args, results))
    if args.json:
        print(json.dumps(chosen.to_json(), indent=2))
    else:
        print(chosen.stitch)
        print(f"  {chosen.describe()}")
    return 0
