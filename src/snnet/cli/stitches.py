"""``snnet stitches``: every stitch of a family, with its cost."""

from __future__ import annotations

import argparse
import json

from snnet.cli.common import add_family_arguments, build_network


def add_parser(p: argparse.ArgumentParser) -> None:
    add_family_arguments(p)
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per stitch")
    p.add_argument("--sort", action="store_true", help="sort by GMACs")


def run(args: argparse.Namespace) -> int:
    from snnet.measure.results import Results, format_table

    net = build_network(args, device="meta")  # costs need shapes, not weights
    results = Results.for_network(net)
    if args.json:
        rows = sorted(results, key=lambda r: r.gmacs) if args.sort else list(results)
        print(json.dumps([_json_row(net, r) for r in rows], indent=2))
        return 0
    paths = {s: net.describe(s) for s in net.stitches}
    print(format_table(results, paths=paths, sort=args.sort))
    names = ", ".join(a.name for a in net.anchors)
    print(
        f"\n{len(results)} networks from {len(net.anchors)} anchors ({names}), "
        f"{len(net.layers)} stitching layers"
    )
    return 0


def _json_row(net, r) -> dict:
    cost = net.cost(r.stitch)
    return {
        "stitch": str(r.stitch),
        "path": net.describe(r.stitch),
        "gmacs": round(cost.gmacs, 4),
        "params": cost.params,
        **r.stitch.to_json(),
    }
