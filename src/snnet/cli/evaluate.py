"""``snnet evaluate``: top-1 / top-5 of every stitch of a saved network in one pass over the data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from snnet.cli.common import add_threads_argument

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from snnet.network import SNNet


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="RUN_OR_MODEL_DIR", help="a directory written by snnet.save")
    p.add_argument(
        "--data",
        default=None,
        help="an ImageFolder of validation images (root/<class>/<image>), or a folder of the "
        "Fashion-MNIST idx files (default for 1x28x28 anchors: the Fashion-MNIST test split)",
    )
    p.add_argument("--max-images", type=int, default=None, help="use only the first N images")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--stitches", nargs="+", default=None, help="evaluate only these stitches, e.g. 0 0:5-1:6"
    )
    p.add_argument(
        "--out", default=None, help="results JSON (a CSV goes beside it); default DIR/results.json"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--amp", action="store_true", help="autocast (float16 on CUDA, bfloat16 on CPU)")
    p.add_argument(
        "--workers", type=int, default=None, help="image-decoding processes for --data folders"
    )
    p.add_argument("--checkpoint-every", type=int, default=10, help="save progress every N batches")
    add_threads_argument(p)
    p.add_argument("--mean", type=float, nargs="+", default=None, help="normalisation mean")
    p.add_argument("--std", type=float, nargs="+", default=None, help="normalisation std")


def run(args: argparse.Namespace) -> int:
    import snnet
    from snnet.evaluate import evaluate_all, progress_path
    from snnet.results import format_table
    from snnet.rundir import RunDir
    from snnet.threads import set_threads

    set_threads(args.threads)
    run = RunDir.find(args.model)
    net = snnet.load(run.model)
    data, name = open_data(net, args.data, mean=args.mean, std=args.std)
    out = Path(args.out) if args.out else run.results
    try:
        results = evaluate_all(
            net,
            data,
            stitches=args.stitches,
            batch_size=args.batch_size,
            max_images=args.max_images,
            device=args.device,
            amp=args.amp,
            path=out,
            checkpoint_every=args.checkpoint_every,
            num_workers=args.workers,
            data_name=name,
        )
    except KeyboardInterrupt:
        if progress_path(out).exists():
            print(
                f"snnet evaluate: interrupted; progress saved in {progress_path(out)}: "
                "run the same command again to continue",
                file=sys.stderr,
            )
        else:
            print("snnet evaluate: interrupted before the first batch finished", file=sys.stderr)
        return 130
    done = [r.stitch for r in results if r.top1 is not None]
    print(format_table(results, done))
    front = results.pareto("gmacs", "top1")
    how = results.meta.get("accuracy") or {}
    print(
        f"\n{len(done)} of {len(results)} stitches measured on {how.get('images')} images "
        f"of {how.get('data')}; {len(front)} on the Pareto front (*). "
        f"Wrote {out} and {out.with_suffix('.csv')}; plot it with `snnet plot {out}`."
    )
    return 0


def open_data(
    net: SNNet,
    path: str | Path | None,
    *,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> tuple[Dataset, str]:
    """The evaluation dataset for ``net`` and a name for it: ``path`` as an ImageFolder (or the
    Fashion-MNIST idx folder), preprocessed for the anchors' ``input_size``; without ``path``,
    the Fashion-MNIST test split for 1x28x28 anchors (the demo family)."""
    from snnet import data

    sizes = {tuple(a.input_size) for a in net.anchors}
    if len(sizes) > 1:
        raise ValueError(f"the anchors take different input sizes {sorted(sizes)}; cannot evaluate")
    chans, height, width = next(iter(sizes))
    fmnist = (chans, height, width) == (1, 28, 28)
    if path is None:
        if not fmnist:
            raise ValueError(
                f"no default data for anchors taking {chans}x{height}x{width} images: pass "
                "--data PATH (an ImageFolder of validation images, root/<class>/<image>)"
            )
        return data.fashion_mnist("test"), "Fashion-MNIST test"
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--data {path} does not exist")
    if (path / "t10k-images-idx3-ubyte.gz").is_file():
        return data.fashion_mnist("test", root=path), f"Fashion-MNIST test ({path})"
    if (path / "val").is_dir() and (
        path / "train"
    ).is_dir():  # root/train + root/val: the val split
        path = path / "val"
    cfg = getattr(net.anchors[0].model, "pretrained_cfg", None) or {}
    options: dict = {}
    if fmnist:  # the demo family was trained on Fashion-MNIST's own normalisation, no resizing
        options = dict(mean=(data.FASHION_MNIST_MEAN,), std=(data.FASHION_MNIST_STD,), crop_pct=1.0)
    elif cfg:
        options = {k: cfg[k] for k in ("mean", "std", "crop_pct", "interpolation") if k in cfg}
        if len(options.get("mean", ())) != chans:
            options.pop("mean", None), options.pop("std", None)
    if mean is not None:
        options["mean"] = mean
    if std is not None:
        options["std"] = std
    if height != width:
        raise ValueError(f"image folders need square inputs; the anchors take {height}x{width}")
    dataset = data.image_folder(path, train=False, img_size=height, in_chans=chans, **options)
    from snnet.train import num_outputs

    outputs = num_outputs(net)
    if len(dataset.classes) != outputs:
        raise ValueError(
            f"--data {path} has {len(dataset.classes)} class folders but the network predicts "
            f"{outputs} classes: give the folder of all {outputs} classes (root/<class>/<image>; "
            "for root/train + root/val, give root or root/val)"
        )
    return dataset, f"ImageFolder {path}"
