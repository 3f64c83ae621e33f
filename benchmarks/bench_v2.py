"""Stitching v2 against v1 on the demo family (issue 11), every variant on the same budget.

Variants: v1 as today; two-way routes (SN-Netv2's space: ``SpaceConfig(mode="mapped",
directions="both")``); low-rank stitching layers (``SNNet(stitch_rank=4)``); parameter-efficient
mode (``SNNet(lora_rank=8)``, anchors frozen); importance sampling
(``TrainConfig(sampling="importance")``). Each trains from the shipped anchors with least-squares
init on 512 images, the demo's recipe (AdamW, lr 2e-3, anchors ×0.2, batch 128), the same
``--steps`` and seed, and is evaluated on the same first ``--eval-images`` test images. A variant whose option this checkout lacks is reported "unavailable" with the error.

Each variant runs in its own process (so its peak memory is its own: ``ru_maxrss`` of that
process, training and evaluation, in MiB), with ``--threads`` threads, into ``--work/VARIANT``;
a finished variant is not recomputed (delete its ``variant.json`` to rerun it).

Per variant: networks, Pareto stitches, hypervolume of the top-1-vs-MMACs front, each anchor's
top-1 change vs the anchor alone, the widest MACs ratio between neighbours on the front,
trainable parameters, median step time, peak memory, bytes of ``checkpoint.pt`` and ``model/``,
and for importance sampling the Kendall tau of importance vs top-1 and the estimate's cost per
step. The hypervolume's reference point is (1.1 × the largest MMACs of any variant's stitch,
the lowest standalone anchor top-1 − 5 points), the same for every variant.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_v2.py [--steps 600] [--eval-images 2000]
        [--threads 1] [--work runs/bench-v2] [--variants v1,importance]

Writes benchmarks/results/v2.json and v2_fronts.png, prints a table and each goal met / not met.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "results" / "v2.json"
PLOT = OUT.with_name("v2_fronts.png")

#: name -> (what it is, SNNet keyword options, TrainConfig options)
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "v1": ("SN-Net v1 as today", {}, {}),
    # SN-Netv2's space: one cut per front block in both directions, plus a-b-a routes.
    "two_way": ("two-way routes (SN-Netv2)", {"mode": "mapped", "directions": "both"}, {}),
    "low_rank": ("low-rank stitching layers, rank 4", {"stitch_rank": 4}, {}),
    # Frozen anchors have no path of their own to train: no anchor-path draws in PEFT mode.
    "peft": (
        "parameter-efficient: frozen anchors, LoRA rank 8",
        {"lora_rank": 8},
        {"anchor_probability": None},
    ),
    "peft_r4": (
        "parameter-efficient: LoRA rank 4, low-rank stitching layers rank 4",
        {"lora_rank": 4, "stitch_rank": 4},
        {"anchor_probability": None},
    ),
    "importance": ("importance sampling (ESTA)", {}, {"sampling": "importance"}),
}
#: The demo's recipe (snnet.demo.DemoSettings): soft distillation from the end anchor, a quarter of
#: the draws on anchors' own paths, anchors at half the layers' learning rate.
RECIPE = {
    "batch_size": 128,
    "lr": 2e-3,
    "anchor_lr_scale": 0.5,
    "distill": "end",
    "distill_temperature": 2.0,
    "distill_weight": 0.5,
    "anchor_probability": 0.25,
    "seed": 0,
}
LS_IMAGES = 512
#: The widest MACs ratio between neighbours on today's front, which two-way routes should shrink.
TODAY_WIDEST_RATIO = 2.27


# -- measures over a finished variant ------------------------------------------------------------


def widest_ratio(front: list[tuple[float, float]]) -> float | None:
    """The largest MACs ratio between neighbouring stitches of a front sorted by MACs."""
    ratios = [b[0] / a[0] for a, b in itertools.pairwise(front) if a[0] > 0]
    return max(ratios) if ratios else None


def bytes_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- one variant, in its own process ------------------------------------------------------------


class TimedBatches:
    """EpochBatches that record when each batch is asked for: the time between two requests is
    one training step (the step itself plus fetching the next batch)."""

    def __init__(self, batches: Any) -> None:
        self.batches, self.stamps = batches, []

    def __len__(self) -> int:
        return len(self.batches)

    def __call__(self, epoch: int, start: int = 0):
        for batch in self.batches(epoch, start):
            self.stamps.append(time.perf_counter())
            yield batch

    def step_seconds(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.stamps)]


def run_variant(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import snnet
    import snnet.train.loop
    from snnet.data import EpochBatches, fashion_mnist
    from snnet.measure.evaluate import evaluate_all
    from snnet.rundir import RunDir
    from snnet.threads import set_threads
    from snnet.train import TrainConfig, train_loop

    set_threads(args.threads)
    what, net_options, config_options = VARIANTS[name]
    work = Path(args.work) / name
    run = RunDir(work / "run")
    try:
        anchors, options = snnet.resolve_anchors("fmnist-xs-sm-l")
        net = snnet.SNNet(anchors, **{**options, **net_options})
        train = fashion_mnist("train")
        per_epoch = math.ceil(len(train) / RECIPE["batch_size"])
        config = TrainConfig(
            epochs=math.ceil(args.steps / per_epoch),
            steps=args.steps,
            **{**RECIPE, **config_options},
        )
    except (TypeError, ValueError) as e:
        return {"variant": name, "what": what, "status": "unavailable", "error": str(e)}
    test = fashion_mnist("test")
    anchor_stitches = [snnet.Stitch.anchor(i) for i in range(len(net.anchors))]
    plain, plain_options = snnet.resolve_anchors("fmnist-xs-sm-l")  # the shipped anchors, untouched
    standalone = evaluate_all(
        snnet.SNNet(plain, **plain_options),
        test,
        stitches=anchor_stitches,
        max_images=args.eval_images,
        progress=False,
    )
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)

    # The importance estimate's own cost: every call of the saliency, timed.
    saliency_seconds: list[float] = []
    saliencies = snnet.train.loop.saliencies

    def timed_saliencies(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        out = saliencies(*a, **k)
        saliency_seconds.append(time.perf_counter() - t)
        return out

    snnet.train.loop.saliencies = timed_saliencies

    resume = run.checkpoint.exists()
    if not resume:
        snnet.init_least_squares(net, train.tensors(LS_IMAGES, seed=RECIPE["seed"])[0])
    batches = TimedBatches(EpochBatches(train, config.batch_size, seed=config.seed))
    started = time.perf_counter()
    result = train_loop(net, batches, config, run_dir=run.training, resume=resume, progress=False)
    train_seconds = time.perf_counter() - started
    results = evaluate_all(
        net, test, max_images=args.eval_images, path=work / "results.json", progress=False
    )
    steps = batches.step_seconds()
    out: dict[str, Any] = {
        "variant": name,
        "what": what,
        "status": "done",
        "settings": settings(args),
        "networks": len(net.stitches),
        "trainable_params": trainable,
        "steps": result.steps,
        "step_ms_median": round(1e3 * statistics.median(steps), 2) if steps else None,
        "steps_timed": len(steps),
        "train_seconds": round(train_seconds, 1),
        "resumed": resume,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "checkpoint_bytes": bytes_of(run.checkpoint),
        "model_bytes": bytes_of(run.model),
        "standalone_top1": [standalone[str(s)].top1 for s in anchor_stitches],
        "in_snnet_top1": [results[str(s)].top1 for s in anchor_stitches],
        "stitches": [[str(r.stitch), r.gmacs * 1e3, r.top1] for r in results],  # MMACs, top-1
    }
    if saliency_seconds:
        out["saliency_ms_median"] = round(1e3 * statistics.median(saliency_seconds), 3)
        if steps:
            out["saliency_share_of_step"] = round(
                statistics.median(saliency_seconds) / statistics.median(steps), 4
            )
    if run.importance.is_file():
        from snnet.train.importance import agreement, load_ranking

        ranking = load_ranking(run.importance)
        found = agreement(ranking, results)
        out["importance_loss_baseline_tau"] = round(loss_baseline_tau(run, results, ranking), 4)
        out["importance_tau"] = round(found.tau, 4)
        out["importance_tau_within_cost_bands"] = round(found.band_tau, 4)
        out["importance_top5_overlap"] = found.top_overlap
    return out


def loss_baseline_tau(run: Any, results: Any, ranking: list) -> float:
    """The simplest training-time statistic as a baseline for importance: Kendall tau between
    minus each stitch's mean training loss (steps.csv, over the stitches importance ranks) and
    its top-1. Importance is worth its cost where its tau beats this one."""
    import csv

    from snnet.measure.results import kendall_tau

    losses: dict[str, list[float]] = {}
    with open(run.train_log) as f:
        for row in csv.DictReader(f):
            losses.setdefault(row["stitch"], []).append(float(row["loss"]))
    names = [str(i.stitch) for i in ranking if str(i.stitch) in losses]
    return kendall_tau(
        [-statistics.mean(losses[n]) for n in names], [results[n].top1 for n in names]
    )


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "steps": args.steps,
        "eval_images": args.eval_images,
        "threads": args.threads,
        **RECIPE,
        "ls_images": LS_IMAGES,
    }


# -- all variants --------------------------------------------------------------------------------


def variant(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """A finished variant's figures from its directory, else run it in a fresh process."""
    path = Path(args.work) / name / "variant.json"
    if path.is_file():
        done = json.loads(path.read_text())
        if done.get("status") == "done" and done.get("settings") == settings(args):
            return done
    cmd = [sys.executable, __file__, "--one", name, *forwarded(args)]
    child = subprocess.run(cmd, capture_output=True, text=True)
    if child.returncode != 0 or not path.is_file():
        return {
            "variant": name,
            "what": VARIANTS[name][0],
            "status": "failed",
            "error": child.stderr.strip().splitlines()[-1] if child.stderr.strip() else "",
        }
    return json.loads(path.read_text())


def forwarded(args: argparse.Namespace) -> list[str]:
    return [
        f"--steps={args.steps}",
        f"--eval-images={args.eval_images}",
        f"--threads={args.threads}",
        f"--work={args.work}",
    ]


def summarise(variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The cross-variant figures: the common reference point, each front's hypervolume and widest
    ratio, each anchor's change, and the issue's goals."""
    from snnet.measure.pareto import pareto_front
    from snnet.measure.results import hypervolume

    done = {k: v for k, v in variants.items() if v["status"] == "done"}
    if not done:
        return {"reference": None, "goals": []}
    max_mmacs = max(m for v in done.values() for _, m, _ in v["stitches"])
    min_anchor = min(t for v in done.values() for t in v["standalone_top1"])
    reference = (round(1.1 * max_mmacs, 4), round(min_anchor - 5.0, 2))
    for v in done.values():
        points = [(m, t) for _, m, t in v["stitches"]]
        front = pareto_front(points, cost=lambda p: p[0], value=lambda p: p[1])
        v["pareto"] = len(front)
        v["hypervolume"] = round(hypervolume(points, reference), 3)
        ratio = widest_ratio(front)
        v["widest_ratio"] = round(ratio, 3) if ratio else None
        v["anchor_change"] = [
            round(a - b, 2) for a, b in zip(v["in_snnet_top1"], v["standalone_top1"], strict=True)
        ]
    return {
        "reference": {"mmacs": reference[0], "top1": reference[1]},
        "goals": goals(variants),
    }


def goals(variants: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each goal of issue 11 with its measured value: met, not met, or not measured."""
    v1, two = variants.get("v1", {}), variants.get("two_way", {})
    ok = lambda v: v.get("status") == "done"  # noqa: E731

    def goal(text: str, measured: bool, met: bool, value: Any) -> dict[str, Any]:
        status = ("met" if met else "not met") if measured else "n/a (variant unavailable)"
        return {"goal": text, "status": status, "value": value if measured else None}

    out = []
    for key in ("peft", "peft_r4"):  # every parameter-efficient variant against the same goals
        peft = variants.get(key, {})
        both = ok(v1) and ok(peft)
        out += [
            goal(
                f"{key}: no anchor's top-1 changes (0.00 point)",
                ok(peft),
                ok(peft) and all(c == 0 for c in peft["anchor_change"]),
                peft.get("anchor_change"),
            ),
            goal(
                f"{key}: trains <= 10 % of v1's parameters",
                both,
                both and peft["trainable_params"] <= 0.1 * v1["trainable_params"],
                both and round(peft["trainable_params"] / v1["trainable_params"], 4),
            ),
            goal(
                f"{key}: checkpoint.pt <= 10 % of v1's",
                both,
                both and peft["checkpoint_bytes"] <= 0.1 * v1["checkpoint_bytes"],
                both and round(peft["checkpoint_bytes"] / v1["checkpoint_bytes"], 4),
            ),
            goal(
                f"{key}: front hypervolume within 1 % of v1's",
                both,
                both and peft["hypervolume"] >= 0.99 * v1["hypervolume"],
                both and round(peft["hypervolume"] / v1["hypervolume"], 4),
            ),
        ]
    out.append(
        goal(
            f"two-way: widest MACs ratio on the front < {TODAY_WIDEST_RATIO}x",
            ok(two),
            ok(two) and (two["widest_ratio"] or 0) < TODAY_WIDEST_RATIO,
            two.get("widest_ratio"),
        )
    )
    return out


def plot(variants: dict[str, dict[str, Any]], reference: dict[str, float] | None) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from snnet.files import atomic_write
    from snnet.measure.pareto import pareto_front

    fig = Figure(figsize=(8, 6), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, v in variants.items():
        if v["status"] != "done":
            continue
        points = [(m, t) for _, m, t in v["stitches"]]
        front = pareto_front(points, cost=lambda p: p[0], value=lambda p: p[1])
        xs, ys = zip(*points, strict=True)
        dots = ax.scatter(xs, ys, s=8, alpha=0.3)
        fx, fy = zip(*front, strict=True)
        ax.plot(fx, fy, drawstyle="steps-post", lw=1.4, color=dots.get_facecolor()[0][:3],
                label=f"{name}: {len(front)} on the front, HV {v['hypervolume']:.1f}")  # fmt: skip
    if reference:
        ax.axhline(reference["top1"], color="grey", lw=0.6, ls=":")
    ax.set_xlabel("MMACs per image")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Stitching v2 on the Fashion-MNIST demo family: fronts on one budget", fontsize=10)
    atomic_write(PLOT, lambda p: fig.savefig(p, format="png"), mode="path")


def table(variants: dict[str, dict[str, Any]]) -> str:
    heads = ["variant", "networks", "Pareto", "HV", "anchor Δ", "widest", "trainable",
             "step ms", "peak MiB", "ckpt MB", "model MB", "tau"]  # fmt: skip
    rows = []
    for name, v in variants.items():
        if v["status"] != "done":
            rows.append([name, f"{v['status']}: {v.get('error', '')[:90]}"])
            continue
        rows.append([
            name, str(v["networks"]), str(v["pareto"]), f"{v['hypervolume']:.1f}",
            "/".join(f"{c:+.2f}" for c in v["anchor_change"]),
            f"{v['widest_ratio']:.2f}x" if v["widest_ratio"] else "-",
            f"{v['trainable_params']:,}",
            f"{v['step_ms_median']:.1f}" if v["step_ms_median"] else "-",
            f"{v['peak_rss_mib']:.0f}",
            f"{v['checkpoint_bytes'] / 1e6:.2f}", f"{v['model_bytes'] / 1e6:.2f}",
            f"{v['importance_tau']:+.3f}" if "importance_tau" in v else "-",
        ])  # fmt: skip
    widths = [max(len(h), *(len(r[i]) for r in rows if len(r) == len(heads))) for i, h in
              enumerate(heads)]  # fmt: skip
    lines = ["  ".join(f"{h:>{w}}" for h, w in zip(heads, widths, strict=True))]
    for r in rows:
        if len(r) == len(heads):
            lines.append("  ".join(f"{c:>{w}}" for c, w in zip(r, widths, strict=True)))
        else:
            lines.append(f"{r[0]:>{widths[0]}}  {r[1]}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600, help="training steps of every variant")
    p.add_argument("--eval-images", type=int, default=2000, help="first N test images")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="runs/bench-v2", help="where each variant's run lives")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child: run one variant
    args = p.parse_args()
    if args.one:
        figures = run_variant(args.one, args)
        path = Path(args.work) / args.one / "variant.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2))
        return
    names = [n for n in args.variants.split(",") if n]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")

    variants = {}
    for name in names:
        print(f"{name}: {VARIANTS[name][0]} ...", flush=True)
        variants[name] = variant(name, args)
    summary = summarise(variants)
    report = {
        "machine": {
            "threads": args.threads,
            "cpu_count": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
        },
        "settings": settings(args),
        "peak_memory": "ru_maxrss of each variant's own process (training and evaluation), MiB",
        "hypervolume_reference": summary["reference"],
        "variants": variants,
        "goals": summary["goals"],
    }
    from snnet.files import atomic_write

    atomic_write(OUT, lambda f: json.dump(report, f, indent=2))
    plot(variants, summary["reference"])
    print(table(variants))
    ref = summary["reference"]
    if ref:
        print(f"\nhypervolume reference point: ({ref['mmacs']} MMACs, {ref['top1']} % top-1)")
    for v in variants.values():
        if "importance_tau" in v:
            print(
                f"importance ranking vs top-1: Kendall tau {v['importance_tau']:+.3f} "
                f"({v.get('importance_tau_within_cost_bands', float('nan')):+.3f} inside cost "
                f"bands; mean training loss as the ranking instead: "
                f"{v.get('importance_loss_baseline_tau', float('nan')):+.3f}); "
                f"the estimate costs {v.get('saliency_ms_median')} ms per step "
                f"({100 * v.get('saliency_share_of_step', 0):.1f} % of a step)"
            )
    for g in summary["goals"]:
        print(f"[{g['status']}] {g['goal']}: {g['value']}")
    print(f"written to {OUT} and {PLOT}")


if __name__ == "__main__":
    main()
