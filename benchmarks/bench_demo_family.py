"""Does the demo recipe make stitches interpolate? The demo, end to end, over several seeds.

For each seed, `snnet demo`'s recipe (:class:`snnet.demo.DemoSettings`) is trained and evaluated
exactly as the demo does, and the benchmark records:

1. each anchor standalone vs inside the trained SN-Net (goal: within 0.5 point);
2. the Pareto front (accuracy against GMACs), its stitches (goal: at least 10 that are not
   anchors) and its widest GMACs gap between neighbours (goal: at most 2x);
3. for every stitch between anchors i and i+1, its margin over anchor i inside the SN-Net
   (goal: every front stitch at least 0.5 point above the smaller anchor it follows);
4. with ``--before-training``, for the first seed, stitch accuracy before training: random vs
   least-squares init (two more evaluations of every stitch).

``--two-way`` trains and measures SN-Netv2's space instead of the demo's (``mode="mapped"``,
``directions="both"``: 267 networks); a route that visits anchors i and i+1 in any order counts
as a stitch between them.

Then mean and spread over the seeds, and which goal each seed met. Seeds run one after the
other, or as parallel processes (``--jobs``) of ``--threads`` threads each; every run records
its thread count and the machine's load average, which the timings depend on.

    .venv/bin/python benchmarks/bench_demo_family.py --seeds 0 1 2 --jobs 3 --threads 1

Writes benchmarks/results/demo_family.json (``--two-way``: demo_family_twoway.json) and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from snnet.files import atomic_write

OUT = Path(__file__).parent / "results" / "demo_family.json"
OUT_TWO_WAY = OUT.with_name("demo_family_twoway.json")  # never overwrites the demo's record
GOALS = {
    "front_stitches_min": 10,
    "front_margin_min": 0.5,
    "front_gap_max": 2.0,
    "anchor_change_max": 0.5,
}


def stitch_accuracy(results) -> dict:
    stitched = [r.top1 for r in results if not r.stitch.is_anchor]
    return {
        "mean_top1": round(statistics.mean(stitched), 2),
        "median_top1": round(statistics.median(stitched), 2),
        "min_top1": min(stitched),
        "max_top1": max(stitched),
    }


def widest_gap(front: list) -> dict:
    pairs = list(itertools.pairwise(front))
    if not pairs:
        return {}
    a, b = max(pairs, key=lambda p: p[1].gmacs / p[0].gmacs)
    return {
        "from": str(a.stitch),
        "to": str(b.stitch),
        "ratio": round(b.gmacs / a.gmacs, 3),
        "gmacs": [a.gmacs, b.gmacs],
    }


def between(stitch) -> int | None:
    """i for a stitch whose route joins anchors i and i + 1 only, in either direction (None: an
    anchor or another route)."""
    anchors = set(stitch.route)
    if len(anchors) == 2 and max(anchors) == min(anchors) + 1:
        return min(anchors)
    return None


def margins_by_pair(results, in_snnet: list[float]) -> dict[str, dict[str, float]]:
    """For each pair "i->i+1", every stitch between anchors i and i + 1 (cheapest first)
    with its top-1 margin over anchor i inside the SN-Net."""
    pairs = {}
    for i in range(len(in_snnet) - 1):
        rows = sorted(
            (r for r in results if between(r.stitch) == i), key=lambda r: (r.gmacs, str(r.stitch))
        )
        pairs[f"{i}->{i + 1}"] = {str(r.stitch): round(r.top1 - in_snnet[i], 2) for r in rows}
    return pairs


def one_seed(
    seed: int,
    run_root: Path,
    threads: int,
    eval_images: int | None,
    before_training: bool,
    epochs: int | None = None,
    device: str | None = None,
    two_way: bool = False,
) -> dict:
    """Train and evaluate the demo recipe with ``seed``; the figures of that run."""
    import torch

    import snnet
    import snnet.presets
    from snnet.data import fashion_mnist
    from snnet.demo import DemoSettings, run_demo
    from snnet.measure.evaluate import evaluate_all
    from snnet.measure.results import Results
    from snnet.stitch import Stitch
    from snnet.threads import keep_freed_memory, set_threads

    keep_freed_memory()  # as `snnet demo` does
    if two_way:  # this worker's demo (and the standalone check) build the preset's SN-Netv2 space
        names, _ = snnet.presets.PRESETS["fmnist"]
        snnet.presets.PRESETS["fmnist"] = (names, {"mode": "mapped", "directions": "both"})
    set_threads(threads)
    load_start = os.getloadavg()
    test = fashion_mnist("test")
    settings = DemoSettings(eval_images=eval_images, seed=seed)
    if epochs is not None:
        settings = replace(settings, epochs=epochs)

    anchors, options = snnet.resolve_anchors("fmnist")
    torch.manual_seed(0)
    net = snnet.SNNet(anchors, **options)
    names = [a.name for a in net.anchors]
    anchor_stitches = [Stitch.anchor(i) for i in range(len(net.anchors))]
    before = {}
    alone = evaluate_all(
        net, test, stitches=anchor_stitches, max_images=eval_images, device=device, progress=False
    )
    standalone = [alone[str(s)].top1 for s in anchor_stitches]
    if before_training:  # before training: random vs least-squares stitching layers, same anchors
        random_init = evaluate_all(net, test, max_images=eval_images, device=device, progress=False)
        snnet.init_least_squares(
            net, fashion_mnist("train").tensors(settings.ls_images, seed=seed)[0]
        )
        ls_init = evaluate_all(net, test, max_images=eval_images, device=device, progress=False)
        before = {
            "random_init": stitch_accuracy(random_init),
            "least_squares_init": stitch_accuracy(ls_init),
        }

    run_dir = run_root / f"seed{seed}"
    t = time.perf_counter()
    report = run_demo(run_dir, settings, device=device, progress=False)
    wall = time.perf_counter() - t
    after = Results.load(report.results_path)
    in_snnet = report.anchors_after
    front = after.pareto("gmacs", "top1")

    pairs = {
        pair: {
            "stitches": len(margins),
            "best_margin": max(margins.values()),
            "at_least_goal": sum(m >= GOALS["front_margin_min"] for m in margins.values()),
            "margins": margins,
        }
        for pair, margins in margins_by_pair(after, in_snnet).items()
    }
    front_rows = [
        {
            "stitch": str(r.stitch),
            "gmacs": r.gmacs,
            "top1": r.top1,
            "margin": None
            if between(r.stitch) is None
            else round(r.top1 - in_snnet[between(r.stitch)], 2),
        }
        for r in front
    ]
    stitches_on_front = [row for row in front_rows if not Stitch.parse(row["stitch"]).is_anchor]
    margins = [row["margin"] for row in stitches_on_front if row["margin"] is not None]
    gap = widest_gap(front)
    change = [round(a - b, 2) for a, b in zip(in_snnet, standalone, strict=True)]
    goals = {
        "front_stitches": len(stitches_on_front) >= GOALS["front_stitches_min"],
        "front_margins": bool(margins) and min(margins) >= GOALS["front_margin_min"],
        "front_gap": bool(gap) and gap["ratio"] <= GOALS["front_gap_max"],
        "anchors_held": all(abs(c) <= GOALS["anchor_change_max"] for c in change),
    }
    return {
        "seed": seed,
        "machine": {
            "device": device or "cpu",
            "threads": threads,
            "cpu_count": os.cpu_count(),
            "load_avg_1m_start": round(load_start[0], 2),
            "load_avg_1m_end": round(os.getloadavg()[0], 2),
            "platform": platform.platform(),
        },
        "eval_images": eval_images or len(test),
        "anchors": {
            "names": names,
            "standalone_top1": standalone,
            "in_snnet_top1": in_snnet,
            "change": change,
        },
        "stitches_before_training": before or None,
        "stitches_after_training": stitch_accuracy(after),
        "pareto": {
            "front": front_rows,
            "stitches_on_front": len(stitches_on_front),
            "min_front_margin": min(margins) if margins else None,
            "widest_gmacs_gap": gap,
        },
        "pairs": pairs,
        "goals_met": goals,
        "demo_seconds": report.seconds,
        "wall_seconds": round(wall, 1),
    }


def spread(values: list[float | None]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {
        "mean": round(statistics.mean(values), 3),
        "std": round(statistics.stdev(values), 3) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def summarize(runs: list[dict]) -> dict:
    n = len(runs[0]["anchors"]["names"])
    return {
        "stitches_on_front": spread([r["pareto"]["stitches_on_front"] for r in runs]),
        "min_front_margin": spread([r["pareto"]["min_front_margin"] for r in runs]),
        "widest_gmacs_gap": spread(
            [
                r["pareto"]["widest_gmacs_gap"].get("ratio")
                for r in runs
                if r["pareto"]["widest_gmacs_gap"]
            ]
        ),
        "anchor_change": [spread([r["anchors"]["change"][i] for r in runs]) for i in range(n)],
        "anchor_in_snnet_top1": [
            spread([r["anchors"]["in_snnet_top1"][i] for r in runs]) for i in range(n)
        ],
        "best_margin_per_pair": {
            pair: spread([r["pairs"][pair]["best_margin"] for r in runs])
            for pair in runs[0]["pairs"]
        },
        "mean_stitch_top1": spread([r["stitches_after_training"]["mean_top1"] for r in runs]),
        "goals_met_by_every_seed": {
            goal: all(r["goals_met"][goal] for r in runs) for goal in runs[0]["goals_met"]
        },
    }


def markdown(figures: dict) -> str:
    lines = [
        "| seed | anchors standalone → in SN-Net | front stitches | min front margin | "
        "best margin per pair | widest front gap | goals met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in figures["runs"]:
        a = r["anchors"]
        anchors = ", ".join(
            f"{b:.2f}→{c:.2f}"
            for b, c in zip(a["standalone_top1"], a["in_snnet_top1"], strict=True)
        )
        p = r["pareto"]
        gap = p["widest_gmacs_gap"].get("ratio") if p["widest_gmacs_gap"] else None
        best = ", ".join(f"{k}: {v['best_margin']:+.2f}" for k, v in r["pairs"].items())
        met = ", ".join(k for k, v in r["goals_met"].items() if v) or "none"
        margin = "n/a" if p["min_front_margin"] is None else f"{p['min_front_margin']:+.2f}"
        lines.append(
            f"| {r['seed']} | {anchors} | {p['stitches_on_front']} | {margin} | {best} | "
            f"{gap}× | {met} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--run-root",
        type=Path,
        default=None,
        help="default runs/bench-demo, with --two-way runs/bench-demo-twoway",
    )
    p.add_argument("--eval-images", type=int, default=None, help="test images (default all 10,000)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each seed's process")
    p.add_argument("--jobs", type=int, default=1, help="seeds run at once, one process each")
    p.add_argument(
        "--before-training",
        action="store_true",
        help="also evaluate every stitch before training (random vs least-squares init), first seed",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="train the demo's recipe for this many epochs instead of its own (a longer or "
        "shorter run of the same recipe; the demo itself is unchanged)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu (default: the demo's own machine) or cuda; one GPU can hold several seeds' jobs",
    )
    p.add_argument(
        "--two-way",
        action="store_true",
        help="SN-Netv2's space (mapped cuts, both directions) instead of the demo's",
    )
    p.add_argument("--one-seed", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"default {OUT.name}, with --two-way {OUT_TWO_WAY.name}",
    )
    args = p.parse_args()
    args.out = args.out or (OUT_TWO_WAY if args.two_way else OUT)
    # a seed's figures found in the run root are reused, so the two spaces keep separate roots
    args.run_root = args.run_root or Path(
        "runs/bench-demo-twoway" if args.two_way else "runs/bench-demo"
    )

    if args.one_seed is not None:  # a worker: one seed's figures as JSON on stdout
        before = args.before_training and args.one_seed == args.seeds[0]
        figures = one_seed(
            args.one_seed,
            args.run_root,
            args.threads,
            args.eval_images,
            before,
            args.epochs,
            args.device,
            args.two_way,
        )
        path = args.run_root / f"seed{args.one_seed}.json"
        atomic_write(path, lambda f: json.dump(figures, f, indent=2))
        return

    args.run_root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    base = [
        sys.executable,
        __file__,
        "--run-root",
        str(args.run_root),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
    ]
    if args.eval_images is not None:
        base += ["--eval-images", str(args.eval_images)]
    if args.epochs is not None:
        base += ["--epochs", str(args.epochs)]
    if args.two_way:
        base.append("--two-way")
    # a seed whose figures exist (a finished worker) is not run again: delete RUN_ROOT to rerun
    pending = [s for s in args.seeds if not (args.run_root / f"seed{s}.json").is_file()]
    running = []
    t0 = time.perf_counter()
    while pending or running:
        while pending and len(running) < args.jobs:
            seed = pending.pop(0)
            running.append(subprocess.Popen([*base, "--one-seed", str(seed)], env=env))
        for proc in list(running):
            if proc.poll() is not None:
                running.remove(proc)
                if proc.returncode != 0:
                    raise SystemExit(f"a seed's run failed: {proc.args}")
        time.sleep(2)
    runs = [json.loads((args.run_root / f"seed{s}.json").read_text()) for s in args.seeds]
    from snnet.demo import DemoSettings

    figures = {
        "recipe": asdict(
            DemoSettings() if args.epochs is None else replace(DemoSettings(), epochs=args.epochs)
        ),
        "goals": GOALS,
        "seeds": args.seeds,
        "jobs": args.jobs,
        "threads_per_job": args.threads,
        "device": args.device,
        "space": "mapped, both directions (SN-Netv2)" if args.two_way else "the demo's",
        "wall_seconds_all": round(time.perf_counter() - t0, 1),
        "summary": summarize(runs),
        "runs": runs,
    }
    atomic_write(args.out, lambda f: f.write(json.dumps(figures, indent=2) + "\n"))
    print(markdown(figures))
    print(json.dumps(figures["summary"], indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
