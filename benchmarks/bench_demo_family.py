"""What SN-Net does to the demo family (issue 3's report), measured end to end.

1. Standalone anchor accuracy (each shipped anchor alone) vs the same anchor inside the trained
   SN-Net (goal: each within 0.5 point).
2. Stitch accuracy before training: stitching layers at random init vs least-squares init.
3. After training: the number of Pareto stitches and the widest GMACs gap on the front.

Training and evaluation are `snnet demo`'s (pass --run to reuse a finished demo directory).

    .venv/bin/python benchmarks/bench_demo_family.py [--run runs/demo] [--eval-images N]

Writes benchmarks/results/demo_family.json and prints it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
from pathlib import Path

import torch

import snnet
from snnet.batches import first_images
from snnet.data import fashion_mnist
from snnet.demo import DemoSettings, run_demo
from snnet.evaluate import evaluate_all
from snnet.files import atomic_write
from snnet.results import Results
from snnet.threads import set_threads

OUT = Path(__file__).parent / "results" / "demo_family.json"


def stitch_accuracy(results: Results) -> dict:
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--run", default="runs/bench-demo", help="demo run directory (reused if finished)"
    )
    p.add_argument("--eval-images", type=int, default=None, help="test images (default all 10,000)")
    p.add_argument("--ls-images", type=int, default=DemoSettings().ls_images)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    set_threads(args.threads)
    test = fashion_mnist("test")

    # 2. Before training: random vs least-squares stitching layers, same anchors, same images.
    anchors, options = snnet.resolve_anchors("fmnist")
    torch.manual_seed(0)
    net = snnet.SNNet(anchors, **options)
    before_random = evaluate_all(net, test, max_images=args.eval_images, progress=False)
    snnet.init_least_squares(net, first_images(fashion_mnist("train"), args.ls_images, seed=0))
    before_ls = evaluate_all(net, test, max_images=args.eval_images, progress=False)
    standalone = [before_random[str(i)].top1 for i in range(len(net.anchors))]

    # 1 and 3. Train and evaluate exactly as the demo does.
    report = run_demo(args.run, DemoSettings(eval_images=args.eval_images), progress=False)
    after = Results.load(report.results_path)
    front = after.pareto("gmacs", "top1")
    figures = {
        "machine": {
            "threads": args.threads,
            "cpu_count": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
        },
        "eval_images": args.eval_images or len(test),
        "settings": after.meta.get("accuracy", {}),
        "anchors": {
            "names": [a.name for a in net.anchors],
            "standalone_top1": standalone,
            "in_snnet_top1": report.anchors_after,
            "change": [
                round(a - b, 2) for a, b in zip(report.anchors_after, standalone, strict=True)
            ],
            "goal_abs_change_max": 0.5,
        },
        "stitches_before_training": {
            "random_init": stitch_accuracy(before_random),
            "least_squares_init": stitch_accuracy(before_ls),
        },
        "stitches_after_training": stitch_accuracy(after),
        "pareto": {
            "count": len(front),
            "stitches": [str(r.stitch) for r in front],
            "widest_gmacs_gap": widest_gap(front),
        },
        # A reused (finished) run resumes in seconds: its timings say nothing about the demo.
        "demo_seconds": None
        if (Path(args.run) / "train" / "checkpoint.pt").exists()
        and report.seconds["evaluate every stitch"] < 5
        else report.seconds,
    }
    atomic_write(OUT, lambda f: json.dump(figures, f, indent=2))
    print(json.dumps(figures, indent=2))
    print(f"written to {OUT}")


if __name__ == "__main__":
    main()
