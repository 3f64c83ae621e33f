"""``snnet zoo``: show or rebuild the shipped demo anchors (same as ``python -m snnet.zoo``)."""

from __future__ import annotations

import argparse


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        help="'list', or 'train --all' / 'train --name X' [--epochs --seed --out]",
    )


def run(args: argparse.Namespace) -> int:
    from snnet import zoo

    return zoo.main(args.args or ["list"])
