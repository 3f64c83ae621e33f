"""``snnet importance``: the stitches of a run ranked by the importance estimated while training,
against their evaluated accuracy when the run has been evaluated."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run directory trained with --sampling importance")
    p.add_argument(
        "--results", default=None, help="results file to compare with (default: the run's own)"
    )
    p.add_argument("--top", type=int, default=5, help="how many leading stitches to compare")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from snnet.measure.results import Results
    from snnet.rundir import RunDir
    from snnet.train.importance import agreement, load_ranking

    if args.top < 1:
        raise ValueError(f"--top must be at least 1, got {args.top}")
    rundir = RunDir.find(args.run)
    ranking = load_ranking(rundir.importance)
    results_path = Path(args.results) if args.results else rundir.results
    results = Results.load(results_path) if args.results or results_path.is_file() else None
    measured = {r.stitch: r for r in results if r.top1 is not None} if results is not None else {}
    by_top1 = sorted(measured, key=lambda s: (-measured[s].top1, str(s)))
    top1_rank = {s: i + 1 for i, s in enumerate(by_top1)}
    found = agreement(ranking, results, top=args.top) if len(measured) >= 2 else None

    if args.json:
        rows = [
            {
                **i.to_json(),
                "rank": n,
                "top1": measured[i.stitch].top1 if i.stitch in measured else None,
                "top1_rank": top1_rank.get(i.stitch),
            }
            for n, i in enumerate(ranking, 1)
        ]
        out = {"ranking": rows, "agreement": found.__dict__ if found else None}
        print(json.dumps(out, indent=2))
        return 0

    header = f"{'rank':>4}  {'stitch':<16} {'importance':>11} {'draws':>6}"
    if measured:
        header += f" {'top-1 %':>8} {'top-1 rank':>10}"
    print(header)
    for n, i in enumerate(ranking, 1):
        line = f"{n:>4}  {i.stitch!s:<16} {i.value:>11.4g} {i.observations:>6}"
        if measured:
            r = measured.get(i.stitch)
            line += f" {r.top1:>8.2f} {top1_rank[i.stitch]:>10}" if r else f" {'':>8} {'':>10}"
        print(line)
    if found is None:
        print(f"\n{len(ranking)} stitches; evaluate the run (snnet evaluate) to compare with top-1")
        return 0
    verdict = (
        "importance orders the stitches much like their accuracy"
        if found.tau >= 0.5 and found.band_tau >= 0.5
        else "importance does not replace evaluating the stitches"
    )
    print(
        f"\nKendall tau (importance vs top-1) over {found.count} stitches: {found.tau:+.3f}; "
        f"inside {found.bands} cost bands: {found.band_tau:+.3f}; {found.top_overlap} of the "
        f"{found.top} most important are among the {found.top} most accurate: {verdict}"
    )
    return 0
