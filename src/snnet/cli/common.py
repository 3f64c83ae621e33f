"""Options shared by several commands: which anchors, and how to stitch them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snnet.presets import PRESETS

if TYPE_CHECKING:  # the parsers here must not import torch (snnet COMMAND --help)
    from snnet.measure.results import Results
    from snnet.network import SNNet


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (sizes, counts, strides), refused at parse time."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def index(text: str) -> int:
    """An argparse type: a whole number >= 0 (a stage or block index)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def add_family_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "anchors",
        nargs="+",
        help=f"a preset ({', '.join(PRESETS)}) or timm names small to large; NAME=PATH loads a local checkpoint",
    )
    p.add_argument(
        "--kernel",
        type=positive_int,
        default=None,
        help="sliding-window size of paired stitching (default 2)",
    )
    p.add_argument(
        "--stride", type=positive_int, default=None, help="sliding-window stride (default 1)"
    )
    p.add_argument(
        "--all-pairs",
        action="store_true",
        help="stitch every pair of anchors and multi-hop routes, not only neighbours",
    )
    p.add_argument(
        "--mode",
        choices=["auto", "paired", "unpaired", "mapped"],
        default=None,
        help="stitching rule (default auto; mapped: SN-Netv2's nearest-neighbour depth map)",
    )
    p.add_argument(
        "--directions",
        choices=["up", "both"],
        default=None,
        help="up: small→large stitches (default); both: also large→small stitches and routes "
        "that return to an anchor (SN-Netv2's two-way stitching)",
    )
    p.add_argument(
        "--exclude-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --mode mapped, leave out the small→large cut into the head, as SN-Netv2 does "
        "(default); --no-exclude-last keeps it",
    )
    p.add_argument(
        "--stages", type=index, nargs="+", default=None, help="stages to stitch in unpaired mode"
    )
    p.add_argument(
        "--img-size", type=positive_int, default=None, help="input resolution for every anchor"
    )
    p.add_argument(
        "--num-classes",
        type=positive_int,
        default=None,
        help="classifier size for every anchor (segmentation: the classes of the dense head)",
    )
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="load timm's pretrained weights (needs the hub or its cache)",
    )
    add_adapter_arguments(p)


def _non_negative(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0 (0: off), got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_adapter_arguments(p: argparse.ArgumentParser) -> None:
    """What trains: low-rank stitching layers and parameter-efficient (LoRA) mode. Saved in the
    network's config, so load / evaluate / export / serve rebuild the same network."""
    g = p.add_argument_group("trainable parts (see the README: low-rank, parameter-efficient)")
    g.add_argument(
        "--stitch-rank",
        type=_non_negative,
        default=0,
        metavar="R",
        help="low-rank stitching layers: frozen least-squares W0 plus a trained rank-R update "
        "(default 0: full-rank layers)",
    )
    g.add_argument(
        "--stitch-alpha",
        type=_positive_float,
        default=None,
        metavar="A",
        help="scale of the stitching layers' update is A/R (default A=R)",
    )
    g.add_argument(
        "--lora-rank",
        type=_non_negative,
        default=0,
        metavar="R",
        help="parameter-efficient mode: anchors frozen, shared rank-R LoRA on their attention, "
        "one stitching layer (bias) per cut; saves only what trains (default 0: off)",
    )
    g.add_argument(
        "--lora-alpha",
        type=_positive_float,
        default=None,
        metavar="A",
        help="scale of the LoRA update is A/R (default A=R)",
    )
    g.add_argument(
        "--lora-targets",
        choices=["attn", "attn+mlp"],
        default="attn",
        help="the anchors' layers that get LoRA (default attn)",
    )


def add_task_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--task`` and a dense head's shape; read by :func:`task_from_args`."""
    from snnet.task import HEADS, TASKS  # no torch: --help stays fast

    p.add_argument(
        "--task",
        choices=TASKS,
        default="classification",
        help="what the network predicts: classification (the anchors' heads; default), "
        "segmentation or depth (one dense head shared by every stitch)",
    )
    p.add_argument(
        "--head",
        choices=HEADS,
        default="naive",
        help="dense head: naive (SETR-naive, the last block; default) or fpn (a feature "
        "pyramid over --levels blocks)",
    )
    p.add_argument(
        "--levels",
        type=positive_int,
        default=None,
        help="feature levels the fpn head reads (default 4; plain ViTs: evenly spaced blocks, "
        "hierarchical anchors: the last stages)",
    )
    p.add_argument(
        "--head-channels", type=positive_int, default=64, help="the dense head's width (default 64)"
    )
    p.add_argument(
        "--classes",
        nargs="+",
        default=None,
        metavar="NAME",
        help="segmentation: the class names in label order (or --classes-file FILE)",
    )
    p.add_argument(
        "--classes-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="segmentation: a text file of class names, one a line, in label order",
    )
    p.add_argument(
        "--reduce-zero-label",
        action="store_true",
        help="segmentation: label 0 is ignored and the others move down by one (mmsegmentation's)",
    )
    p.add_argument(
        "--max-depth",
        type=_positive_float,
        default=10.0,
        metavar="M",
        help="depth: the largest depth the head predicts, in metres (default 10)",
    )


def class_names(args: argparse.Namespace) -> list[str] | None:
    """The segmentation class names ``--classes`` or ``--classes-file`` give (None: neither)."""
    if args.classes is not None and args.classes_file is not None:
        raise ValueError("give the class names with --classes or --classes-file, not both")
    if args.classes_file is not None:
        names = [line.strip() for line in args.classes_file.read_text().splitlines()]
        names = [n for n in names if n]
        if not names:
            raise ValueError(f"--classes-file {args.classes_file} names no class")
        return names
    return list(args.classes) if args.classes is not None else None


def task_from_args(args: argparse.Namespace, names: list[str] | None = None) -> Any:
    """The :class:`snnet.task.Task` the options describe; a dense head's options on a
    classification task, or dense options of the other task, are refused."""
    from snnet.task import Task

    kind = args.task
    given = {
        "--head": args.head != "naive",
        "--levels": args.levels is not None,
        "--classes": names is not None,
        "--reduce-zero-label": args.reduce_zero_label,
        "--max-depth": args.max_depth != 10.0,
        "--num-classes": args.num_classes is not None,
        "--head-channels": args.head_channels != 64,
    }
    meant = {
        "classification": ("--num-classes",),
        "segmentation": (
            "--head", "--levels", "--classes", "--reduce-zero-label", "--num-classes",
            "--head-channels",
        ),
        "depth": ("--head", "--levels", "--max-depth", "--head-channels"),
    }[kind]  # fmt: skip
    stray = [k for k, v in given.items() if v and k not in meant]
    if stray:
        raise ValueError(f"{stray[0]} is not an option of --task {kind}: drop it")
    if kind == "classification":
        return Task()
    classes = args.num_classes or (len(names) if names else None)
    if names is not None and args.num_classes not in (None, len(names)):
        raise ValueError(
            f"--num-classes {args.num_classes} but {len(names)} class names: give one or the other"
        )
    return Task(
        kind,
        num_classes=classes if kind == "segmentation" else None,
        head=args.head,
        levels=args.levels,
        channels=args.head_channels,
        max_depth=args.max_depth,
        reduce_zero_label=args.reduce_zero_label,
    )


def build_network(
    args: argparse.Namespace, *, device: str | None = None, task: Any = None
) -> SNNet:
    """The network the family arguments describe (predicting ``task``, default
    classification); ``device='meta'`` when only costs matter."""
    kwargs: dict[str, Any] = {}
    if device is not None and not args.pretrained:
        kwargs["device"] = device
    if args.img_size is not None:
        kwargs["img_size"] = args.img_size
    if args.num_classes is not None and not (task is not None and task.dense):
        kwargs["num_classes"] = args.num_classes  # a dense task's classes are its head's
    from snnet.network import SNNet
    from snnet.sources import resolve_anchors

    seed = getattr(args, "seed", 0)  # new layers (a classifier for other classes) from --seed
    anchors, options = resolve_anchors(
        args.anchors, pretrained=args.pretrained, seed=seed, **kwargs
    )
    for key, value in (
        ("kernel_size", args.kernel),
        ("stride", args.stride),
        ("mode", args.mode),
        ("stages", args.stages),
        ("directions", args.directions),
        ("exclude_last", args.exclude_last),
    ):
        if value is not None:
            options[key] = value
    if args.all_pairs:
        options["nearest"] = False
    return SNNet(
        anchors,
        stitch_rank=args.stitch_rank,
        stitch_alpha=args.stitch_alpha,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_targets=args.lora_targets,
        task=task,
        **options,
    )


def load_results_for(net: SNNet, path: str | Path, *, create: bool) -> Results:
    """The results file for ``net`` at ``path``; with ``create``, a new one with costs if absent.
    Results of another network are a clear error."""
    from snnet.measure.results import Results

    path = Path(path)
    if not path.exists():
        if not create:
            raise FileNotFoundError(
                f"results file {path} does not exist: measure with `snnet evaluate` / "
                "`snnet latency`, or pass --results"
            )
        return Results.for_network(net)
    results = Results.load(path)
    results.check_network(net)
    return results


def add_threads_argument(
    p: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    default: int | None = None,
    help: str | None = None,
) -> None:
    """``--threads``, the one definition every computing command shares (whole numbers >= 1,
    refused at parse time); the command passes it to :func:`snnet.threads.set_threads`. Without
    a command's own ``default``, snnet's: :func:`snnet.threads.default_threads` (half the usable
    cores, or ``OMP_NUM_THREADS``)."""
    from snnet.threads import default_threads  # no torch: --help stays fast

    if default is None:
        default = default_threads()
        help = help or (
            f"CPU threads for torch (default {default} here: OMP_NUM_THREADS if set, else half "
            "the usable cores, which keeps a shared machine from stalling)"
        )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=default,
        help=help or f"CPU threads (default {default})",
    )


def add_data_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--data``, ``--val`` and the augmentation options of ``snnet train`` (resolved by
    :func:`snnet.data.resolve_data`)."""
    p.add_argument(
        "--data",
        default=None,
        help="'fmnist' (Fashion-MNIST, offline; default), a folder of Fashion-MNIST idx files, or "
        "an image folder root/<class>/<image>; with root/train + root/val, trains on train and "
        "holds val out. Dense tasks: root/img_dir/{train,val} + root/ann_dir/{train,val} "
        "(segmentation, mmsegmentation's layout) or root/depth_dir/{train,val} (depth), or "
        "'fmnist-canvas' (the dense demo's; default)",
    )
    p.add_argument(
        "--val",
        default=None,
        metavar="PATH",
        help="held-out images (an image folder root/<class>/<image>) instead of root/val",
    )
    p.add_argument(
        "--augment",
        choices=["none", "light", "timm"],
        default=None,
        help="training augmentation: none, light (random shifts; flips with --hflip) or timm "
        "(ImageNet recipe: random resized crops, flips, colour jitter). Default for "
        "RGB images of at least 128 px given to RGB anchors: timm; otherwise none",
    )
    p.add_argument(
        "--scale",
        type=float,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="timm: area range of the random resized crop (default 0.08 1)",
    )
    p.add_argument(
        "--hflip",
        type=float,
        default=None,
        metavar="P",
        help="probability of a horizontal flip (default 0.5 with timm, 0 with light)",
    )
    p.add_argument(
        "--color-jitter",
        type=float,
        default=None,
        metavar="S",
        help="timm: colour jitter strength (default 0.4)",
    )
    p.add_argument(
        "--auto-augment",
        default=None,
        metavar="POLICY",
        help="timm: an AutoAugment / RandAugment policy, e.g. rand-m9-mstd0.5-inc1",
    )


def add_preprocess_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """What every image goes through before the network: ``--mean --std --crop-pct --crop-mode
    --interpolation`` and ``--data-config FILE.json``, overriding what the anchors' own configs
    say (timm's scripts have the same options). One definition for ``snnet train`` and
    ``snnet evaluate``."""
    from snnet.data.config import CROP_MODES, INTERPOLATIONS  # no torch: --help stays fast

    p.add_argument(
        "--mean", type=float, nargs="+", default=None, metavar="M", help="normalisation mean"
    )
    p.add_argument(
        "--std", type=float, nargs="+", default=None, metavar="S", help="normalisation std"
    )
    p.add_argument(
        "--crop-pct",
        type=float,
        default=None,
        metavar="P",
        help="resize the short side to size/P, then crop to size (1: no crop)",
    )
    p.add_argument("--crop-mode", choices=CROP_MODES, default=None, help="how to crop")
    p.add_argument("--interpolation", choices=INTERPOLATIONS, default=None, help="how to resize")
    p.add_argument(
        "--data-config",
        type=Path,
        default=None,
        metavar="FILE",
        help="a JSON file of these values (timm's data-config names, or a hub config.json); "
        "the options above override it",
    )


def preprocess_overrides(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """The preprocessing values the options set (the file first, the options over it) and,
    for each, the option it came from."""
    from snnet.data.anchors import read_data_config
    from snnet.data.config import PREPROCESSING

    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if args.data_config is not None:
        values.update(read_data_config(args.data_config))
        origin.update({k: f"--data-config {args.data_config}" for k in values})
    for key in PREPROCESSING:
        if getattr(args, key) is not None:
            values[key], origin[key] = getattr(args, key), f"--{key.replace('_', '-')}"
    return values, origin


def augment_from_args(args: argparse.Namespace) -> Any:
    """The :class:`snnet.data.Augment` the options ask for; None: the data's default."""
    from snnet.data.config import Augment

    knobs = {
        "scale": tuple(args.scale) if args.scale else None,
        "hflip": args.hflip,
        "color_jitter": args.color_jitter,
        "auto_augment": args.auto_augment,
    }
    if args.augment is None and all(v is None for v in knobs.values()):
        return None
    if args.augment is None:  # knobs alone: timm's imply timm, --hflip keeps the default kind
        only_flip = all(v is None for k, v in knobs.items() if k != "hflip")
        return Augment("auto" if only_flip else "timm", **knobs)
    return Augment(args.augment, **knobs)
