"""``snnet`` command line. Each command lives in its own module with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import sys

#: Command name -> module under snnet.cli; imported only when that command runs.
COMMANDS = {
    "demo": "Run the whole pipeline offline on Fashion-MNIST: LS init, train, evaluate, plot.",
    "zoo": "Show or rebuild the shipped Fashion-MNIST demo anchors (list | train --all).",
    "stitches": "List every stitch of a family with its GMACs and params.",
    "train": "Train a family's stitches (least-squares init, then one stitch per step).",
    "evaluate": "Top-1/top-5 of every stitch of a saved network in one pass over the data.",
    "plot": "Plot accuracy against GMACs/params/latency with the Pareto front (PNG).",
    "latency": "Measure every stitch's latency on this machine into a results file.",
    "select": "Pick the most accurate stitch within a budget (GMACs, params, latency).",
    "export": "Export one stitch as a standalone model (safetensors, ONNX, torch.export).",
    "serve": "Serve a run over HTTP, holding a latency SLO by switching stitches.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snnet", description="Stitchable Neural Networks: one network for every budget."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"snnet.cli.{name.replace('-', '_')}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_parser(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        # User errors: one clear line, no traceback.
        print(f"snnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `snnet stitches deit | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"snnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
