"""``snnet demo``: the whole SN-Net pipeline on the offline default, in about 10 minutes;
``--task segmentation`` or ``depth``: the dense demo on Fashion-MNIST canvases."""

from __future__ import annotations

import argparse
import functools
import signal
import sys
from typing import Any

from snnet.cli.common import add_threads_argument
from snnet.demo import DemoSettings


def add_parser(p: argparse.ArgumentParser) -> None:
    d = DemoSettings()
    p.add_argument(
        "--task",
        choices=("classification", "segmentation", "depth"),
        default="classification",
        help="classification (Fashion-MNIST; default), or the dense demo: segmentation or depth "
        "on 56-px canvases of Fashion-MNIST items, one head shared by every stitch",
    )
    p.add_argument(
        "--out",
        default=None,
        help="run directory (default runs/demo, runs/demo-segmentation or runs/demo-depth); "
        "rerun to resume",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"SN-Net training epochs (classification; default {d.epochs})",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps (classification: stop early for a quick look; dense: default 1600)",
    )
    p.add_argument(
        "--eval-images",
        type=int,
        default=d.eval_images,
        help="test images to evaluate on, a stratified sample (default all: 10,000 images, or "
        "the dense demo's 2,000 canvases)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    add_threads_argument(p)
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


class Stopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM outside training's own handler, raised like Ctrl-C so that evaluation
    saves its progress."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class StopRequests:
    """Ctrl-C and SIGTERM while the demo runs: each raises :class:`Stopped` and is remembered,
    because Python drops an exception raised inside a finaliser (a progress bar closing), and a
    demo asked to stop must stop. Training installs its own handler while it runs (it stops at
    the next step boundary); the previous handlers come back on exit."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum
        raise Stopped(signum)

    def __enter__(self) -> StopRequests:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _demo(args: argparse.Namespace) -> tuple[Any, str]:
    """The demo the options ask for, as a function of the run directory, and that directory."""
    from snnet.demo import run_demo

    if args.task == "classification":
        d = DemoSettings()
        epochs = args.epochs if args.epochs is not None else d.epochs
        settings = DemoSettings(
            epochs=epochs, steps=args.steps, eval_images=args.eval_images, seed=args.seed
        )
        return functools.partial(run_demo, settings=settings), args.out or "runs/demo"
    from snnet.dense_demo import DEFAULT_OUT, DenseDemoSettings, run_dense_demo

    if args.epochs is not None:
        raise ValueError("the dense demo trains for --steps (default 1600), not --epochs")
    steps = {"steps": args.steps} if args.steps is not None else {}
    settings = DenseDemoSettings(
        task=args.task, eval_images=args.eval_images, seed=args.seed, **steps
    )
    return functools.partial(run_dense_demo, settings=settings), args.out or DEFAULT_OUT[args.task]


def run(args: argparse.Namespace) -> int:
    from snnet.demo import format_report
    from snnet.measure.results import Results
    from snnet.threads import set_threads
    from snnet.zoo import demo_family_names

    set_threads(args.threads)  # and results independent of the machine's load
    names = demo_family_names()
    demo, out = _demo(args)
    what = "" if args.task == "classification" else f" for {args.task} on 56-px canvases"
    print(f"snnet demo: stitching {', '.join(names)} (shipped Fashion-MNIST ViTs){what} into {out}")
    again = f"run the same command again to continue (snnet demo --out {out} ...)"
    with StopRequests() as requests:
        try:
            report = demo(out, device=args.device, progress=not args.quiet)
        except KeyboardInterrupt as e:  # outside training, which stops at a step boundary
            signum = e.signum if isinstance(e, Stopped) else signal.SIGINT
            print(f"\nsnnet demo: stopped; nothing is lost: {again}", file=sys.stderr)
            return 128 + signum
    if report.stopped:
        print(
            f"\nsnnet demo: training stopped at step {report.steps} of {report.total_steps} "
            f"(checkpoint saved); nothing was evaluated: {again}",
            file=sys.stderr,
        )
        return 128 + report.stopped
    if requests.signum:  # asked to stop where the exception could not reach the demo
        print(f"\nsnnet demo: stopped; nothing is lost: {again}", file=sys.stderr)
        return 128 + requests.signum
    print()
    print(format_report(report, Results.load(report.results_path), names))
    return 0
