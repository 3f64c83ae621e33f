"""``snnet train``: least-squares init, then train every stitch; checkpoints and resume.

Multi-GPU / multi-node: launch the same command with torchrun, e.g.
``torchrun --nproc_per_node=8 -m snnet train deit --data imagenet --out runs/deit``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from snnet import settings
from snnet.cli.common import (
    add_data_arguments,
    add_family_arguments,
    add_preprocess_arguments,
    add_task_arguments,
    add_threads_argument,
    augment_from_args,
    build_network,
    class_names,
    positive_int,
    preprocess_overrides,
    task_from_args,
)
from snnet.train.config import TrainConfig


def add_config_options(group: argparse._ArgumentGroup) -> None:
    """One option per TrainConfig field (``batch_size`` is ``--batch-size``), with the field's
    type, default, help and choices: a new field appears here by itself."""
    settings.add_options(group, TrainConfig)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the options give; bad numbers fail here, before anything is built."""
    return settings.from_args(TrainConfig, args)


def add_parser(p: argparse.ArgumentParser) -> None:
    add_family_arguments(p)
    add_task_arguments(p.add_argument_group("task (see the docs: Dense prediction)"))
    data = p.add_argument_group("data and run")
    add_data_arguments(data)
    data.add_argument(
        "--max-images",
        type=positive_int,
        default=None,
        metavar="N",
        help="train on a stratified sample of N training images (every class in proportion), "
        "drawn with --seed; least squares draws from the same sample",
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
        "--workers",
        type=int,
        default=None,
        help="image-decoding processes for image folders (default: the usable cores but one; "
        "the weights do not depend on it)",
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
    data.add_argument(
        "--val-every",
        type=positive_int,
        default=1,
        metavar="EPOCHS",
        help="with a validation split: score the anchors and 3 stitches every EPOCHS epochs and "
        "at the end (val.csv, tb/; default 1)",
    )
    data.add_argument(
        "--val-images",
        type=positive_int,
        default=1000,
        metavar="N",
        help="held-out images the anchors and 3 stitches are scored on, before, during and "
        "after training: a seeded stratified sample (default 1000)",
    )
    data.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_argument(data)

    add_preprocess_arguments(
        p.add_argument_group(
            "preprocessing (default: what the anchors' own configs say; set it to what the "
            "anchors were trained with)"
        )
    )
    add_config_options(p.add_argument_group("optimisation"))


def run(args: argparse.Namespace) -> int:
    from snnet.data.anchors import resolve_preprocessing
    from snnet.data.resolve import resolve_data
    from snnet.rundir import RunDir
    from snnet.sources import resolve_anchors
    from snnet.threads import set_threads
    from snnet.train.pipeline import check_run_dir, fit

    set_threads(args.threads)
    config = config_from_args(args)
    task = task_from_args(args, class_names(args))
    if task.dense:
        check_dense_options(args, config, task)
    # before building anything, so that a refused command leaves no trace
    check_run_dir(args.out, args.resume, args.save_every, args.ls_init, args.workers or 0)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    overrides, origin = preprocess_overrides(args)
    net = build_network(args, task=task)
    preprocessing = resolve_preprocessing(net.anchors, overrides, origin=origin)
    teacher = None
    if args.teacher is not None:
        kwargs = {
            k: v for k, v in (("num_classes", args.num_classes), ("img_size", args.img_size)) if v
        }
        teachers, _ = resolve_anchors([args.teacher], pretrained=True, **kwargs)
        if len(teachers) != 1:
            raise ValueError(f"--teacher {args.teacher} names {len(teachers)} models; give one")
        teacher = teachers[0]
    spec = args.data or ("fmnist-canvas" if task.dense else "fmnist")
    data = resolve_data(
        spec,
        preprocessing.config,
        augment=augment_from_args(args),
        val=args.val,
        task=task,
        classes=class_names(args),
    )  # fit checks the training images against the network (size, then classes)
    if args.max_images is not None:
        data = data.sample_training(args.max_images, seed=config.seed)
    if main_rank:
        print(preprocessing.describe())
        print(f"training on {data.train.name} ({len(data.train)} images)")
    result = fit(
        net,
        data,
        config,
        teacher=teacher,
        run_dir=args.out,
        resume=args.resume,
        ls_init=args.ls_init,
        save_every=args.save_every,
        num_workers=args.workers,
        device=args.device,
        progress=not args.quiet,
        val_every=args.val_every,
        val_images=args.val_images,
    )
    last = f", last loss {result.losses[-1]:.4f}" if result.losses else ""
    if result.interrupted:
        if main_rank:
            print(f"stopped at step {result.steps}{last}; continue: the same command with --resume")
        return 128 + result.interrupted
    if main_rank:
        print(_anchors(net, result))
        print(f"trained {result.steps} steps{last}; network saved to {RunDir(args.out).model}")
    return 0


def _anchors(net: object, result: object) -> str:
    """The anchors' scores, before and after training (a dense head starts untrained: after)."""
    from snnet.train.pipeline import anchor_table

    names = [a.name for a in net.anchors]
    if result.anchors_before is not None:
        return anchor_table(names, result.anchors_before, result.anchors_after)
    lines = [f"anchor {net.task.metric} inside the trained SN-Net:"]
    after = zip(names, result.anchors_after, strict=True)
    return "\n".join(lines + [f"  {n:<24} {v:8.3f}" for n, v in after])


#: Options that only mean something for classification, and the default each must keep.
CLASSIFICATION_ONLY = {"teacher": None, "distill": "none", "cache_teachers": False}


def check_dense_options(args: argparse.Namespace, config: TrainConfig, task: object) -> None:
    """Refuse, in one line, the options a dense task gives no meaning: distillation (it teaches
    class logits) and, for depth, label smoothing. Segmentation smooths its per-pixel labels."""
    values = {**vars(args), **config.to_json()}
    for name, default in CLASSIFICATION_ONLY.items():
        if values[name] != default:
            option = "--" + name.replace("_", "-")
            raise ValueError(
                f"{option} distils class logits; --task {task.kind} trains on its own targets: "
                f"drop {option}"
            )
    if config.anchor_epochs:
        raise ValueError(
            f"--anchor-epochs fine-tunes each anchor's classifier alone; --task {task.kind} "
            "trains the anchors through the shared dense head: drop --anchor-epochs"
        )
    if task.kind == "depth" and config.label_smoothing != TrainConfig().label_smoothing:
        raise ValueError("--label-smoothing smooths class labels; depth regresses metres: drop it")
