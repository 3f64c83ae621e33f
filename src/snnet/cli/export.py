"""``snnet export``: one stitch as a standalone model (safetensors, ONNX, torch.export)."""

from __future__ import annotations

import argparse
from pathlib import Path

from snnet.cli.select import add_budget_arguments, budgets
from snnet.files import FORMATS
from snnet.rundir import RunDir


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model_dir",
        metavar="MODEL_DIR",
        help="a run of snnet train / snnet demo, or a network saved by snnet.save",
    )
    p.add_argument("--stitch", default=None, help="the stitch to export, e.g. 0:5-1:6")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--format",
        nargs="+",
        choices=FORMATS,
        default=["safetensors"],
        help="safetensors (config.json + model.safetensors), onnx, pt2 (torch.export); files of "
        "an earlier export in --out that this one does not write are removed",
    )
    p.add_argument(
        "--results",
        default=None,
        help="results file to select from with the budget options (default MODEL_DIR/results.json)",
    )
    add_budget_arguments(p)


def run(args: argparse.Namespace) -> int:
    from snnet.cli.common import load_results_for
    from snnet.export import export, export_stitch
    from snnet.measure.select import select
    from snnet.serialize import load

    limits = ("max_gmacs", "max_params", "max_latency_ms", "min_top1", "at_least", "at_most")
    wanted = [k for k in limits if getattr(args, k) is not None]
    if (args.stitch is None) == (not wanted):
        raise ValueError(
            "give --stitch, or a budget (--max-gmacs, ...) to export the stitch select picks"
        )
    run = RunDir.find(args.model_dir)
    net = load(run.model).eval()
    stitch = args.stitch
    if wanted:
        path = Path(args.results) if args.results else run.results
        results = load_results_for(net, path, create=False)
        chosen = budgets(args, results)
        stitch = select(results, **chosen).stitch
        print(f"selected stitch {stitch} for {', '.join(f'{k}={v}' for k, v in chosen.items())}")
    model = export_stitch(net, stitch)
    try:
        written = export(model, args.out, args.format)
    except ImportError as e:  # a missing optional package: one line naming the extra
        raise ValueError(str(e)) from None
    share = model.info["params"] / sum(p.numel() for p in net.parameters())
    print(
        f"exported {model.info['path']} ({model.info['params'] / 1e6:.2f} M params, "
        f"{share:.0%} of the SN-Net)"
    )
    for fmt, where in written.items():
        print(f"  {fmt:<12} {where}")
    return 0
