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
    net = build_network(args, device="meta")  # costs need shapes, not weights
    stitches = list(net.stitches)
    if args.sort:
        stitches.sort(key=lambda s: net.cost(s).macs)
    rows = [
        {
            "stitch": str(s),
            "path": net.describe(s),
            "gmacs": round(net.cost(s).gmacs, 4),
            "params": net.cost(s).params,
            **s.to_json(),
        }
        for s in stitches
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["stitch"]) for r in rows)
    route_width = max(len(r["path"]) for r in rows)
    print(f"{'stitch':<{width}}  {'path':<{route_width}}  {'GMACs':>8}  {'params (M)':>10}")
    for r in rows:
        print(
            f"{r['stitch']:<{width}}  {r['path']:<{route_width}}  {r['gmacs']:8.3f}  {r['params'] / 1e6:10.2f}"
        )
    names = ", ".join(a.name for a in net.anchors)
    print(
        f"\n{len(rows)} networks from {len(net.anchors)} anchors ({names}), {len(net.layers)} stitching layers"
    )
    return 0
