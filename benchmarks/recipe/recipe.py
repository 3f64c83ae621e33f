"""(B) Training recipes for the demo family, screened by what the stitches do after training.

A self-contained loop built from snnet's pieces (SNNet, init_least_squares, StitchSampler, get_lr,
make_optimizer, evaluate_all), so that losses the library lacks can be tried:

- ``--kd end``: soft distillation (KL at temperature ``--kd-t``) from a frozen copy of the
  *original* anchor a stitch ends in; for an anchor's own path that is itself, which holds every
  anchor where it was. ``--kd largest``: from the original largest anchor. ``--kd none``: the demo.
- ``--layers-only N``: the first N steps move only the stitching layers (anchors frozen).
- ``--anchor-p P``: probability of drawing an anchor's own path (None: uniform over all stitches).

Writes one JSON per run to benchmarks/recipe/results/NAME.json with the anchors before/after, the
Pareto front, its count, the smallest margin of a front stitch over the smaller anchor of its route
and the widest MACs gap on the front, plus seconds per step (1 thread).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/recipe/recipe.py --name kd_end --kd end --steps 800
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--anchor-lr-scale", type=float, default=0.2)
    p.add_argument("--kd", choices=("none", "end", "largest"), default="none")
    p.add_argument("--kd-weight", type=float, default=0.5, help="loss = (1-w) CE + w T^2 KL")
    p.add_argument("--kd-t", type=float, default=2.0)
    p.add_argument("--layers-only", type=int, default=0)
    p.add_argument("--anchor-p", type=float, default=None)
    p.add_argument("--eval-images", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    import snnet
    from snnet.data import EpochBatches, fashion_mnist
    from snnet.measure.evaluate import evaluate_all
    from snnet.stitch import Stitch
    from snnet.train import TrainConfig, get_lr
    from snnet.train.sampling import StitchSampler
    from snnet.train.step import make_optimizer

    log = open(RESULTS / f"{args.name}.log", "w")  # noqa: SIM115

    def say(msg: str) -> None:
        log.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
        log.flush()

    train, test = fashion_mnist("train"), fashion_mnist("test")
    anchors, options = snnet.resolve_anchors("fmnist")
    net = snnet.SNNet(anchors, **options)
    snnet.init_least_squares(net, train.tensors(512, seed=args.seed)[0], progress=False)
    n_anchors = len(net.anchors)
    anchor_stitches = [Stitch.anchor(i) for i in range(n_anchors)]
    before = evaluate_all(
        net, test, stitches=anchor_stitches, max_images=args.eval_images, progress=False
    )
    standalone = [before[str(i)].top1 for i in range(n_anchors)]
    say(f"standalone anchors {standalone}")
    ref = copy.deepcopy(net).eval().requires_grad_(False)  # the original anchors, frozen

    config = TrainConfig(
        epochs=100,
        steps=args.steps,
        lr=args.lr,
        anchor_lr_scale=args.anchor_lr_scale,
        seed=args.seed,
    )
    optimizer = make_optimizer(net, config)
    costs = {s: net.cost(s).gmacs for s in net.stitches}
    sampler = StitchSampler(net.stitches, costs, seed=args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    stitched = [s for s in net.stitches if not s.is_anchor]
    warmup = args.steps // 20
    batches = EpochBatches(train, 128, seed=args.seed)
    torch.manual_seed(args.seed)
    net.train()
    step, losses, t0 = 0, [], time.perf_counter()
    for epoch in itertools.count():
        for images, labels in batches(epoch):
            if step >= args.steps:
                break
            lr = get_lr(step, lr=config.lr, min_lr=config.min_lr, warmup=warmup, total=args.steps)
            for group in optimizer.param_groups:
                frozen = step < args.layers_only and group["name"].startswith("anchors")
                group["lr"] = 0.0 if frozen else lr * group["lr_scale"]
            if args.anchor_p is None:
                stitch = sampler.draw()[0]
            elif float(torch.rand(1, generator=g)) < args.anchor_p:
                stitch = anchor_stitches[int(torch.randint(n_anchors, (1,), generator=g))]
            else:
                stitch = stitched[int(torch.randint(len(stitched), (1,), generator=g))]
            logits = net(images, stitch=stitch)
            loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
            if args.kd != "none":
                teacher = stitch.route[-1] if args.kd == "end" else n_anchors - 1
                with torch.no_grad():
                    t_logits = ref(images, stitch=anchor_stitches[teacher])
                t = args.kd_t
                kl = F.kl_div(
                    F.log_softmax(logits / t, -1),
                    F.log_softmax(t_logits / t, -1),
                    reduction="batchmean",
                    log_target=True,
                )
                loss = (1 - args.kd_weight) * loss + args.kd_weight * t * t * kl
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
            if step % 50 == 0:
                say(
                    f"step {step}/{args.steps} loss {sum(losses[-50:]) / 50:.4f} "
                    f"{(time.perf_counter() - t0) / step:.3f} s/step"
                )
        if step >= args.steps:
            break
    train_seconds = time.perf_counter() - t0
    say("evaluating")
    t1 = time.perf_counter()
    after = evaluate_all(net, test, max_images=args.eval_images, progress=False)
    eval_seconds = time.perf_counter() - t1
    anchors_after = [after[str(i)].top1 for i in range(n_anchors)]
    front = after.pareto("gmacs", "top1")
    front_stitches = [r for r in front if not r.stitch.is_anchor]
    margins = {
        str(r.stitch): round(r.top1 - anchors_after[min(r.stitch.route)], 2) for r in front_stitches
    }
    margins_standalone = {
        str(r.stitch): round(r.top1 - standalone[min(r.stitch.route)], 2) for r in front_stitches
    }
    gaps = [b.gmacs / a.gmacs for a, b in itertools.pairwise(front)]
    record = {
        "name": args.name,
        "args": vars(args),
        "steps_per_epoch": len(batches),
        "anchors_standalone": standalone,
        "anchors_after": anchors_after,
        "anchor_change": [round(a - b, 2) for a, b in zip(anchors_after, standalone, strict=True)],
        "pareto_count_stitches": len(front_stitches),
        "pareto": [(str(r.stitch), round(r.gmacs * 1e3, 3), r.top1) for r in front],
        "min_margin_over_smaller_anchor_in_snnet": min(margins.values(), default=None),
        "min_margin_over_smaller_anchor_standalone": min(margins_standalone.values(), default=None),
        "margins": margins,
        "widest_macs_gap_on_front": round(max(gaps, default=0.0), 3),
        "mean_stitch_top1": round(
            sum(r.top1 for r in after if not r.stitch.is_anchor) / (len(after) - n_anchors), 2
        ),
        "best_stitch_margin_by_smaller_anchor": {
            str(i): round(
                max(r.top1 for r in after if not r.stitch.is_anchor and min(r.stitch.route) == i)
                - anchors_after[i],
                2,
            )
            for i in range(n_anchors - 1)
        },
        "all": sorted((str(r.stitch), round(r.gmacs * 1e3, 3), r.top1) for r in after),
        "train_seconds": round(train_seconds, 1),
        "seconds_per_step_1thread": round(train_seconds / args.steps, 4),
        "seconds_per_epoch_1thread": round(train_seconds / args.steps * len(batches), 1),
        "eval_seconds": round(eval_seconds, 1),
        "final_loss_mean_last50": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "load_avg_1m_end": os.getloadavg()[0],
    }
    (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=2))
    say("done " + json.dumps({k: record[k] for k in list(record)[3:8]}))


if __name__ == "__main__":
    main()
