"""``snnet evaluate``: every stitch of a saved network scored in one pass over the data: top-1 /
top-5, or a dense task's metrics (mIoU and pixel accuracy; AbsRel, RMSE and δ<1.25)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snnet.cli.common import add_preprocess_arguments, add_threads_argument, preprocess_overrides

if TYPE_CHECKING:
    from snnet.data.images import ImageSet
    from snnet.network import SNNet


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="RUN_OR_MODEL_DIR", help="a directory written by snnet.save")
    p.add_argument(
        "--data",
        default=None,
        help="an ImageFolder of validation images (root/<class>/<image>, or root/val when root "
        "has train/ and val/), 'fmnist' or a folder of the Fashion-MNIST idx files (its test "
        "split; the default for 1x28x28 anchors); a dense network: a dense folder (its "
        "img_dir/val) or 'fmnist-canvas' (the default for the dense demo's anchors)",
    )
    p.add_argument(
        "--max-images",
        type=int,
        default=None,
        metavar="N",
        help="a stratified sample of N images (every class in proportion), drawn with --seed",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the --max-images sample")
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
    add_preprocess_arguments(
        p.add_argument_group(
            "preprocessing (default: what training recorded in the network; override it to "
            "evaluate images prepared otherwise, or to see how much a change costs)"
        )
    )


def run(args: argparse.Namespace) -> int:
    import snnet
    from snnet.measure.evaluate import evaluate_all, progress_path
    from snnet.measure.results import format_table
    from snnet.rundir import RunDir
    from snnet.threads import set_threads

    set_threads(args.threads)
    run = RunDir.find(args.model)
    net = snnet.load(run.model)
    overrides, _ = preprocess_overrides(args)
    data = open_data(net, args.data, overrides)
    out = Path(args.out) if args.out else run.results
    try:
        results = evaluate_all(
            net,
            data,
            stitches=args.stitches,
            batch_size=args.batch_size,
            max_images=args.max_images,
            seed=args.seed,
            device=args.device,
            amp=args.amp,
            path=out,
            checkpoint_every=args.checkpoint_every,
            num_workers=args.workers,
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
    done = [r.stitch for r in results if getattr(r, results.metric) is not None]
    print(format_table(results, done))
    front = results.pareto("gmacs")
    how = results.meta.get("accuracy") or {}
    print(
        f"\n{len(done)} of {len(results)} stitches measured on {how.get('images')} images "
        f"of {how.get('data')}; {len(front)} on the Pareto front (*). "
        f"Wrote {out} and {out.with_suffix('.csv')}; plot it with `snnet plot {out}`."
    )
    return 0


def open_data(
    net: SNNet, path: str | Path | None, overrides: dict[str, Any] | None = None
) -> ImageSet:
    """The evaluation images ``path`` names for ``net`` (see :func:`snnet.data.resolve_data`),
    preprocessed as training recorded in the network, with ``overrides`` (``mean``, ``std``,
    ``crop_pct``, ...) on top. Without ``path``: the Fashion-MNIST test split for 1x28x28
    anchors."""
    from snnet.data.anchors import network_preprocessing, with_overrides
    from snnet.data.dense_data import CANVAS
    from snnet.data.resolve import resolve_data
    from snnet.sources import from_zoo
    from snnet.train.pipeline import num_outputs

    config = network_preprocessing(net)
    if overrides:
        config = with_overrides(config, overrides)
    if net.task.dense:
        if path is None and not (from_zoo(net.anchors) and config.channels == 1):
            raise ValueError(
                "no default data for this dense network: pass --data ROOT (a folder with "
                "img_dir/val and ann_dir/val or depth_dir/val)"
            )
        spec = path or CANVAS
        data = resolve_data(spec, config, split="eval", task=net.task, classes=config.classes)
        return data.val
    if path is None:
        if config.input_size != (1, 28, 28):
            c, h, w = config.input_size
            raise ValueError(
                f"no default data for anchors taking {c}x{h}x{w} images: pass "
                "--data PATH (an ImageFolder of validation images, root/<class>/<image>)"
            )
        path = "fmnist"
    data = resolve_data(path, config, split="eval", num_classes=num_outputs(net))
    return data.val
