"""One screening run of a recipe on the demo family: train, evaluate every stitch, summarise.

Used for section (D) of FINDINGS.md. One process at 1 thread: the anchors are evaluated alone,
then least squares (512 images, or none with --init-from) + training with the given knobs, then
every stitch on the first --eval-images test images. Writes OUT/NAME/summary.json (anchors alone
and inside the SN-Net, the front, each i->i+1 stitch's margin over anchor i) and OUT/NAME/model/.

    PYTHONPATH=src .venv/bin/python benchmarks/recipe/screen.py --name E1 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True)
    p.add_argument("--out", default="runs/screen")
    p.add_argument("--family", default="fmnist_vit_xs,fmnist_vit_sm,fmnist_vit_l")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--alr", type=float, default=0.5, help="anchors' learning-rate scale")
    p.add_argument("--distill", default="end")
    p.add_argument("--dw", type=float, default=0.5, help="distillation weight")
    p.add_argument("--anchor-p", type=float, default=0.25, help="0: no anchor paths")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", default=None, help="a saved SN-Net to train further")
    p.add_argument("--eval-images", type=int, default=5000)
    a = p.parse_args()

    import torch

    import snnet
    from bench_demo_family import between, margins_by_pair, stitch_accuracy, widest_gap
    from snnet.data import fashion_mnist
    from snnet.measure.evaluate import evaluate_all
    from snnet.stitch import Stitch
    from snnet.threads import set_threads
    from snnet.train import TrainConfig, fit

    set_threads(1)
    out = Path(a.out) / a.name
    out.mkdir(parents=True, exist_ok=True)
    test = fashion_mnist("test")
    if a.init_from:
        net = snnet.load(a.init_from)
    else:
        anchors, options = snnet.resolve_anchors([f"zoo={n}" for n in a.family.split(",")])
        torch.manual_seed(0)
        net = snnet.SNNet(anchors, **options)
    anchor_stitches = [Stitch.anchor(i) for i in range(len(net.anchors))]
    t0 = time.time()
    alone = evaluate_all(
        net, test, stitches=anchor_stitches, max_images=a.eval_images, progress=False
    )
    standalone = [alone[str(s)].top1 for s in anchor_stitches]
    config = TrainConfig(
        epochs=a.epochs,
        batch_size=a.batch,
        steps=a.steps,
        lr=a.lr,
        anchor_lr_scale=a.alr,
        seed=a.seed,
        distill=a.distill,
        distill_weight=a.dw,
        anchor_probability=a.anchor_p or None,
    )
    ls_images = 0 if a.init_from else 512
    fit(net, fashion_mnist("train"), config, run_dir=out / "run", ls_init=ls_images, progress=False)
    t1 = time.time()
    snnet.save(net, out / "model")
    results = evaluate_all(net, test, max_images=a.eval_images, progress=False)
    t2 = time.time()
    inside = [results[str(s)].top1 for s in anchor_stitches]
    front = results.pareto("gmacs", "top1")
    pairs = {
        pair: {
            "best": max(margins.values()),
            "n_ge_0.5": sum(m >= 0.5 for m in margins.values()),
            "n_gt_0": sum(m > 0 for m in margins.values()),
            "margins": margins,
        }
        for pair, margins in margins_by_pair(results, inside).items()
    }
    on_front = [r for r in front if not r.stitch.is_anchor]
    summary = {
        "args": vars(a),
        "standalone": standalone,
        "in_snnet": inside,
        "change": [round(x - y, 2) for x, y in zip(inside, standalone, strict=True)],
        "front": [(str(r.stitch), r.gmacs, r.top1) for r in front],
        "front_stitches": len(on_front),
        "front_margins": [
            round(r.top1 - inside[between(r.stitch)], 2)
            for r in on_front
            if between(r.stitch) is not None
        ],
        "gap": widest_gap(front),
        "stitches": stitch_accuracy(results),
        "best": {k: v["best"] for k, v in pairs.items()},
        "n_ge_0.5": {k: v["n_ge_0.5"] for k, v in pairs.items()},
        "n_gt_0": {k: v["n_gt_0"] for k, v in pairs.items()},
        "train_s": round(t1 - t0),
        "eval_s": round(t2 - t1),
        "load": os.getloadavg()[0],
        "pairs": pairs,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("pairs", "front")}))


if __name__ == "__main__":
    main()
