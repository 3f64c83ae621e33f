"""``snnet latency``: measure every stitch's latency on this machine into a results file."""

from __future__ import annotations

import argparse
from pathlib import Path

from snnet.cli.common import add_threads_argument


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model_dir",
        metavar="MODEL_DIR",
        help="a run of snnet train / snnet demo, or a network saved by snnet.save",
    )
    p.add_argument(
        "--results",
        default=None,
        help="results file to fill (default MODEL_DIR/results.json; created with costs if absent)",
    )
    p.add_argument("--batch-size", type=int, default=1, help="images per timed call (default 1)")
    add_threads_argument(p)
    p.add_argument("--repeats", type=int, default=30, help="timed calls per stitch (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per stitch (default 5)")
    p.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="seconds of untimed running before the first stitch (default 3)",
    )
    p.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="measure every stitch anew (needed to change batch size, threads or device)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from snnet.cli.common import load_results_for
    from snnet.measure.latency import measure_latency
    from snnet.rundir import RunDir
    from snnet.serialize import load

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    run = RunDir.find(args.model_dir)
    net = load(run.model, map_location=device).eval()
    path = Path(args.results) if args.results else run.results
    results = load_results_for(net, path, create=True)
    todo = len(results) if args.overwrite else len(results.missing("latency_ms"))
    print(f"measuring {todo} of {len(results)} stitches on {device} -> {path}")
    results = measure_latency(
        net,
        results,
        batch_size=args.batch_size,
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
        save_to=path,
        overwrite=args.overwrite,
        settle_s=args.settle,
        progress=not args.no_progress,
    )  # saved after every stitch
    m = results.meta["latency"]
    fastest = min(results, key=lambda r: r.latency_ms)
    slowest = max(results, key=lambda r: r.latency_ms)
    print(
        f"batch {m['batch_size']}, {m['threads']} threads, {m['device']}: "
        f"{fastest.latency_ms:.2f} ms ('{fastest.stitch}') to {slowest.latency_ms:.2f} ms "
        f"('{slowest.stitch}') median per batch"
    )
    return 0
