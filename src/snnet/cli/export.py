"""``snnet export``: one stitch as a standalone model, or several (the Pareto front, or a list) as
one switchable artifact (safetensors, ONNX, torch.export)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from snnet.cli.select import add_budget_arguments, budgets, given_budgets
from snnet.files import FORMATS
from snnet.rundir import RunDir

if TYPE_CHECKING:
    from snnet.measure.results import Results
    from snnet.network import SNNet


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model_dir",
        metavar="MODEL_DIR",
        help="a run of snnet train / snnet demo, or a network saved by snnet.save",
    )
    p.add_argument("--stitch", default=None, help="the stitch to export, e.g. 0:5-1:6")
    p.add_argument(
        "--front",
        action="store_true",
        help="export the Pareto front of the task's metric (top-1, mIoU or AbsRel) against "
        "GMACs (from the results) as one artifact that switches between its stitches",
    )
    p.add_argument(
        "--stitches",
        nargs="+",
        default=None,
        metavar="STITCH",
        help="export these stitches as one switchable artifact, e.g. 0 0:5-1:6 2",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--format",
        nargs="+",
        choices=FORMATS,
        default=["safetensors"],
        help="safetensors (config.json + model.safetensors; a front: a smaller SN-Net for "
        "snnet.load), onnx, pt2 (torch.export); files of an earlier export in --out that this "
        "one does not write are removed",
    )
    p.add_argument(
        "--results",
        default=None,
        help="results file to select from with the budget options or --front "
        "(default MODEL_DIR/results.json)",
    )
    add_budget_arguments(p)


def run(args: argparse.Namespace) -> int:
    from snnet.serialize import load

    several = _check_choice(args)
    run = RunDir.find(args.model_dir)
    net = load(run.model).eval()
    results_path = Path(args.results) if args.results else run.results
    try:
        if several:
            return _export_front(args, net, results_path)
        return _export_stitch(args, net, results_path)
    except ImportError as e:  # a missing optional package: one line naming the extra
        raise ValueError(str(e)) from None


def _check_choice(args: argparse.Namespace) -> bool:
    """Which export the options ask for (True: several stitches), or a one-line error."""
    wanted = given_budgets(args)
    if args.front and args.stitches is not None:
        raise ValueError("give --front or --stitches, not both")
    several = args.front or args.stitches is not None
    option = "--front" if args.front else "--stitches"
    if several and args.stitch is not None:
        raise ValueError(f"{option} exports several stitches and --stitch one: give one of them")
    if several and wanted:
        flag = "--" + wanted[0].replace("_", "-")
        raise ValueError(f"{option} takes no budget ({flag}): a budget picks one stitch to export")
    if not several and (args.stitch is None) == (not wanted):
        raise ValueError(
            "give --stitch, a budget (--max-gmacs, ...) to export the stitch select picks, "
            "or --front / --stitches to export several as one switchable artifact"
        )
    return several


def _export_stitch(args: argparse.Namespace, net: SNNet, results_path: Path) -> int:
    from snnet.cli.common import load_results_for
    from snnet.export import export, export_stitch
    from snnet.measure.select import select

    stitch = args.stitch
    if given_budgets(args):
        results = load_results_for(net, results_path, create=False)
        wanted = budgets(args, results)
        stitch = select(results, **wanted).stitch
        print(f"selected stitch {stitch} for {', '.join(f'{k}={v}' for k, v in wanted.items())}")
    model = export_stitch(net, stitch)
    written = export(model, args.out, args.format)
    share = model.info["params"] / sum(p.numel() for p in net.parameters())
    print(
        f"exported {model.info['path']} ({model.info['params'] / 1e6:.2f} M params, "
        f"{share:.0%} of the SN-Net)"
    )
    _print_files(written)
    return 0


def _export_front(args: argparse.Namespace, net: SNNet, results_path: Path) -> int:
    from snnet.artifact import read_front_config
    from snnet.cli.common import load_results_for
    from snnet.export.front import export_front
    from snnet.measure.results import Record, Results, format_table

    results: Results | None = None
    if args.front or results_path.exists():
        results = load_results_for(net, results_path, create=False)
    written = export_front(net, args.out, args.format, stitches=args.stitches, results=results)
    config = read_front_config(args.out)
    rows = [
        {k: v for k, v in r.items() if k not in ("index", "macs", "path")}
        for r in config["stitches"]
    ]
    table = Results([Record.from_json(r) for r in rows], network={"task": config.get("task")})
    print(f"exported {len(rows)} stitches as one artifact (its stitch input: the row, from 0):")
    print(format_table(table, sort=False))
    for fmt, errors in config["checked"].items():
        print(f"checked: every stitch of the {fmt} graph within {max(errors):.2g} of the SN-Net")
    _print_files(written)
    return 0


def _print_files(written: dict[str, Path]) -> None:
    for fmt, where in written.items():
        print(f"  {fmt:<12} {where}")
