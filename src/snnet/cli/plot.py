"""``snnet plot``: accuracy against cost for every stitch, with the Pareto front, as a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from snnet.measure.results import COSTS, METRICS


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", help="a results JSON written by snnet evaluate")
    p.add_argument("--cost", choices=COSTS, default="gmacs", help="x axis (default gmacs)")
    p.add_argument(
        "--metric",
        choices=METRICS,
        default=None,
        help="y axis (default: the task's, top1, miou or absrel)",
    )
    p.add_argument(
        "--out", default=None, help="PNG to write (default: pareto_COST.png beside the results)"
    )
    p.add_argument("--title", default=None, help="title of the plot")


def run(args: argparse.Namespace) -> int:
    from snnet.measure.plot import plot_results
    from snnet.measure.results import Results
    from snnet.rundir import RunDir

    path = Path(args.results)
    if path.is_dir():
        path = RunDir.find(path).results
    results = Results.load(path)
    out = Path(args.out) if args.out else path.with_name(f"pareto_{args.cost}.png")
    metric = args.metric or results.metric
    plot_results(results, out, cost=args.cost, metric=metric, title=args.title)
    front = results.pareto(args.cost, metric)
    print(f"wrote {out}: {metric} against {args.cost}, {len(front)} stitches on the front")
    return 0
