"""``snnet demo``: the whole SN-Net pipeline on the offline default, in about 10 minutes."""

from __future__ import annotations

import argparse

from snnet.cli.common import add_threads_argument
from snnet.demo import DemoSettings, format_report, run_demo
from snnet.measure.results import Results
from snnet.threads import set_threads
from snnet.zoo import demo_family_names


def add_parser(p: argparse.ArgumentParser) -> None:
    d = DemoSettings()
    p.add_argument(
        "--out", default="runs/demo", help="run directory (default runs/demo); rerun to resume"
    )
    p.add_argument(
        "--epochs", type=int, default=d.epochs, help=f"SN-Net training epochs (default {d.epochs})"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=d.steps,
        help="stop training after this many steps (quick look)",
    )
    p.add_argument(
        "--eval-images",
        type=int,
        default=d.eval_images,
        help="test images to evaluate on (default all 10,000)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    add_threads_argument(p)
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)  # and results independent of the machine's load
    settings = DemoSettings(
        epochs=args.epochs, steps=args.steps, eval_images=args.eval_images, seed=args.seed
    )
    print(
        f"snnet demo: stitching {', '.join(demo_family_names())} (shipped Fashion-MNIST ViTs) "
        f"into {args.out}"
    )
    report = run_demo(args.out, settings, device=args.device, progress=not args.quiet)
    print()
    print(format_report(report, Results.load(report.results_path), demo_family_names()))
    return 0
