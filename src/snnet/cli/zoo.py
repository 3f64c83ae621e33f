"""``snnet zoo``: show (``list``) or rebuild (``train``) the shipped Fashion-MNIST demo anchors."""

from __future__ import annotations

import argparse
from pathlib import Path

from snnet.cli.common import add_threads_argument


def add_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="zoo_command", metavar="{list,train}")
    p_list = sub.add_parser("list", help="show the shipped anchors and their recorded results")
    p_list.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="folder of the weights (default: the shipped ones)",
    )
    p_train = sub.add_parser("train", help="train demo anchors on Fashion-MNIST")
    which = p_train.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="train every anchor of the demo family")
    # Defaults are resolved in run(): the parser must not import torch (snnet zoo --help).
    which.add_argument("--name", action="append", help="a demo anchor (repeatable)")
    p_train.add_argument("--epochs", type=int, default=None, help="default: the shipped recipe's")
    p_train.add_argument("--seed", type=int, default=None, help="default: the shipped recipe's")
    p_train.add_argument(
        "--out", type=Path, default=None, help="output folder (default: the shipped weights)"
    )
    p_train.add_argument("--data", type=Path, default=None, help="Fashion-MNIST folder (idx .gz)")
    add_threads_argument(
        p_train,
        default=2,
        help="torch CPU threads (the shipped files were trained with 2; other counts may change "
        "the last bits)",
    )


def markdown_table(weights_dir: Path) -> str:
    """The shipped anchors' JSON records as the table of ``snnet/weights/README.md`` (the demo's
    anchors marked *demo*; the others stay shipped for networks saved with them)."""
    from snnet import zoo

    rows = [
        "| anchor | demo | width | heads | params | GMACs | test acc (fp16 file) | fp32 acc | train s | "
        "train img/s | infer img/s | file KB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in zoo.ZOO_ANCHORS:
        demo = "demo" if name in zoo.DEMO_FAMILY else ""
        try:
            r = zoo.demo_anchor_record(name, weights_dir)
        except FileNotFoundError:
            rows.append(f"| {name} | {demo} | not trained | | | | | | | | | |")
            continue
        a = r["architecture"]
        rows.append(
            f"| {name} | {demo} | {a['embed_dim']} | {a['num_heads']} | {r['params']:,} | {r['gmacs']:.5f} | "
            f"{r['test_acc']:.2f} % | {r['test_acc_fp32']:.2f} % | {r['train_seconds']:.0f} | "
            f"{r['train_img_per_s']:.0f} | {r['infer_img_per_s']:.0f} | {r['file_bytes'] / 1024:.0f} |"
        )
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    from snnet import zoo
    from snnet.threads import set_threads

    if args.zoo_command in (None, "list"):
        print(markdown_table(getattr(args, "weights", None) or zoo.WEIGHTS_DIR))
        return 0
    from snnet.train.zoo_recipe import TrainRecipe, train_demo_anchor

    names = zoo.demo_family_names()
    unknown = sorted(set(args.name or ()) - set(zoo.ZOO_ANCHORS))
    if unknown:
        raise ValueError(
            f"unknown demo anchor {unknown[0]!r}; choose from {', '.join(zoo.ZOO_ANCHORS)}"
        )
    args.epochs = TrainRecipe.epochs if args.epochs is None else args.epochs
    args.seed = TrainRecipe.seed if args.seed is None else args.seed
    args.out = zoo.WEIGHTS_DIR if args.out is None else args.out
    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {args.epochs}")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file: give a folder for the weights")
    set_threads(args.threads)
    for name in names if args.all else args.name:
        r = train_demo_anchor(
            name, epochs=args.epochs, out_dir=args.out, seed=args.seed, data_root=args.data
        )
        print(
            f"{name}: test acc {r['test_acc']:.2f} % (fp32 {r['test_acc_fp32']:.2f} %), "
            f"{r['params']:,} params, {r['gmacs']:.5f} GMACs, {r['train_seconds']:.0f} s"
        )
    print(markdown_table(args.out))
    return 0
