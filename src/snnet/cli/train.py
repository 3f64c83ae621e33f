"""``snnet train``: least-squares init, then train every stitch; checkpoints and resume.

Multi-GPU / multi-node: launch the same command with torchrun, e.g.
``torchrun --nproc_per_node=8 -m snnet train deit --data imagenet --out runs/deit``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from snnet.cli.common import add_family_arguments, build_network
from snnet.sampling import POLICIES, RANK_SAMPLING
from snnet.train import AMP, OPTIMIZERS, TrainConfig, fit

#: TrainConfig fields set by options of the same name (dashes for underscores).
CONFIG_OPTIONS = [
    "epochs",
    "steps",
    "batch_size",
    "lr",
    "min_lr",
    "anchor_lr_scale",
    "weight_decay",
    "optimizer",
    "momentum",
    "warmup",
    "clip",
    "label_smoothing",
    "sampling",
    "gap",
    "rank_sampling",
    "distill_weight",
    "amp",
    "seed",
]


def add_parser(p: argparse.ArgumentParser) -> None:
    add_family_arguments(p)
    d = TrainConfig()
    data = p.add_argument_group("data and run")
    data.add_argument(
        "--data",
        default="fmnist",
        help="'fmnist' (Fashion-MNIST, offline; default), a folder of Fashion-MNIST idx files, or "
        "an image folder root/<class>/<image> (root/train is used if present)",
    )
    data.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, model)")
    data.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    data.add_argument(
        "--ls-init",
        type=int,
        default=256,
        metavar="N",
        help="least-squares init of the stitching layers on N training images (0: off; skipped on resume)",
    )
    data.add_argument(
        "--workers", type=int, default=0, help="data-loader processes (image folders)"
    )
    data.add_argument(
        "--save-every",
        type=int,
        default=0,
        metavar="STEPS",
        help="also checkpoint every STEPS steps",
    )
    data.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: GPU if present)")
    data.add_argument(
        "--teacher",
        default=None,
        help="hard-distillation teacher: a timm name, NAME=PATH or zoo=NAME",
    )
    data.add_argument("--quiet", action="store_true", help="no progress bar")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=d.epochs)
    opt.add_argument("--steps", type=int, default=d.steps, help="stop after this many steps in all")
    opt.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    opt.add_argument("--lr", type=float, default=d.lr, help="stitching layers' peak learning rate")
    opt.add_argument("--min-lr", type=float, default=d.min_lr)
    opt.add_argument(
        "--anchor-lr-scale", type=float, default=d.anchor_lr_scale, help="anchors' LR = lr × this"
    )
    opt.add_argument("--weight-decay", type=float, default=d.weight_decay)
    opt.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    opt.add_argument("--momentum", type=float, default=d.momentum, help="SGD (Nesterov) momentum")
    opt.add_argument(
        "--warmup", type=int, default=d.warmup, help="warmup steps (default 5%% of the run)"
    )
    opt.add_argument("--clip", type=float, default=d.clip, help="max gradient norm (0: off)")
    opt.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    opt.add_argument("--sampling", choices=POLICIES, default=d.sampling, help="stitch sampling")
    opt.add_argument(
        "--gap", type=float, default=d.gap, help="cost-band width in GMACs (grouped, balanced)"
    )
    opt.add_argument(
        "--rank-sampling",
        choices=RANK_SAMPLING,
        default=d.rank_sampling,
        help="under torchrun: each rank its own stitch, the same stitch, or stitches of one cost band",
    )
    opt.add_argument("--distill-weight", type=float, default=d.distill_weight)
    opt.add_argument(
        "--amp", choices=AMP, default=d.amp, help="mixed precision (auto: on GPUs only)"
    )
    opt.add_argument("--seed", type=int, default=d.seed)


def load_data(spec: str, input_size: tuple[int, int, int], img_size: int | None):
    """The training set ``--data`` names, for anchors taking ``input_size`` inputs."""
    from snnet.data import fashion_mnist, image_folder

    if spec == "fmnist":
        return fashion_mnist("train")
    root = Path(spec)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {spec}: no such folder (or use --data fmnist)")
    if (root / "train-images-idx3-ubyte.gz").is_file():
        return fashion_mnist("train", root=root)
    if (root / "train").is_dir():
        root = root / "train"
    return image_folder(
        root, train=True, img_size=img_size or input_size[1], in_chans=input_size[0]
    )


def run(args: argparse.Namespace) -> int:
    from snnet.anchors import resolve_anchors

    values = {k: getattr(args, k) for k in CONFIG_OPTIONS}
    config = TrainConfig(**values)  # bad numbers fail here, before anything is built
    if args.ls_init < 0:
        raise ValueError(f"--ls-init must be >= 0 images, got {args.ls_init}")
    if args.resume and not (args.out / "checkpoint.pt").is_file():
        raise FileNotFoundError(
            f"--resume: no checkpoint at {args.out / 'checkpoint.pt'}; drop --resume to start a new run"
        )
    net = build_network(args)
    teacher = None
    if args.teacher is not None:
        kwargs = {
            k: v for k, v in (("num_classes", args.num_classes), ("img_size", args.img_size)) if v
        }
        teachers, _ = resolve_anchors([args.teacher], pretrained=True, **kwargs)
        if len(teachers) != 1:
            raise ValueError(f"--teacher {args.teacher} names {len(teachers)} models; give one")
        teacher = teachers[0]
    dataset = load_data(args.data, tuple(net.anchors[0].input_size), args.img_size)
    result = fit(
        net,
        dataset,
        config,
        teacher=teacher,
        run_dir=args.out,
        resume=args.resume,
        ls_init=args.ls_init,
        save_every=args.save_every,
        num_workers=args.workers,
        device=args.device,
        progress=not args.quiet,
    )
    last = f", last loss {result.losses[-1]:.4f}" if result.losses else ""
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if result.interrupted:
        if main_rank:
            print(f"stopped at step {result.steps}{last}; continue: the same command with --resume")
        return 128 + result.interrupted
    if main_rank:
        print(f"trained {result.steps} steps{last}; network saved to {args.out / 'model'}")
    return 0
