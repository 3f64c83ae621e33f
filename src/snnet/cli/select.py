"""``snnet select``: the most accurate stitch within a budget (or the cheapest above a floor)."""

from __future__ import annotations

import argparse
import json

from snnet.measure.results import COSTS


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", required=True, help="results file (snnet evaluate / latency)")
    add_budget_arguments(p)
    p.add_argument(
        "--cost",
        choices=COSTS,
        default=None,
        help="what 'cheapest' means with --min-top1 alone, and the cost axis of --pareto",
    )
    p.add_argument("--pareto", action="store_true", help="print the Pareto front instead")
    p.add_argument("--json", action="store_true", help="print JSON")


def add_budget_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-gmacs", type=float, default=None, help="budget in GMACs per image")
    p.add_argument("--max-params", type=float, default=None, help="budget in parameters")
    p.add_argument("--max-latency-ms", type=float, default=None, help="budget in ms per batch")
    p.add_argument("--min-top1", type=float, default=None, help="accuracy floor, percent")


def budgets(args: argparse.Namespace) -> dict[str, float]:
    names = ("max_gmacs", "max_params", "max_latency_ms", "min_top1")
    return {k: getattr(args, k) for k in names if getattr(args, k) is not None}


def run(args: argparse.Namespace) -> int:
    from snnet.measure.results import Results, format_table
    from snnet.measure.select import select

    results = Results.load(args.results)
    if args.pareto:
        cost = args.cost or "gmacs"
        front = results.pareto(cost, "top1", complete=True)
        if args.json:
            print(json.dumps([r.to_json() for r in front], indent=2))
        else:
            print(format_table(results, [r.stitch for r in front], cost=cost))
            print(f"\n{len(front)} of {len(results)} stitches on the front of {cost}")
        return 0
    chosen = select(results, cost=args.cost, **budgets(args))
    if args.json:
        print(json.dumps(chosen.to_json(), indent=2))
    else:
        print(chosen.stitch)
        print(f"  {chosen.describe()}")
    return 0
