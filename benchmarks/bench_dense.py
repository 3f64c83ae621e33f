"""The dense demo's goals (issue 24), over seeds: ``snnet demo --task segmentation`` against each
anchor trained alone with the same head.

Per seed:
  1. the demo as a user runs it (``python -m snnet demo --task segmentation --seed S``, its own
     process, 1 thread), timed as a whole: goal <= 10 minutes;
  2. each anchor alone with the same head (a fresh network, least squares, only that anchor's
     path sampled), for
       (a) as many steps as its own path got in the SN-Net (counted in the demo's steps.csv), and
       (b) as many steps as the whole SN-Net run,
     then scored on the same 2,000 test canvases: its "standalone" mIoU ((b) with
     ``--all-steps`` only: three more runs as long as the demo);
  3. the goals: each anchor inside the SN-Net within 1 point of standalone; the anchors' mIoU
     spread >= 3 points; >= 10 stitches on the mIoU/GMACs front; the front's stitches on average
     within 1.5 points of the straight line, in log GMACs, between their two anchors' standalone
     mIoU; one-pass evaluation of every stitch against one pass per stitch (the ratio, timed
     in the order one, each, each, one on 500 test canvases).

The timed parts (the demo, the one-pass ratio) run under the shared benchmark lock (the same
``flock(2)`` on /tmp/snnet-bench.lock as ``flock /tmp/snnet-bench.lock COMMAND``), taken for each
and let go between them, so other benchmarks wait minutes, not the hour the whole takes; the
standalone runs measure mIoU only. Every time comes with the load average around it:

    .venv/bin/python benchmarks/bench_dense.py [--seeds 0 1 2] [--all-steps]

Writes benchmarks/results/dense.json and prints the figures. Each finished seed is kept in
runs/bench-dense/seedS-stepsN.json (written whole, then renamed): a stopped benchmark, run again,
goes on from the first seed not finished (that seed's demo starts anew, so its time is whole);
``--all-steps`` on finished seeds runs only the longer baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch

import snnet
from snnet.data.anchors import resolve_preprocessing
from snnet.data.batches import EpochBatches
from snnet.data.dense_data import CANVAS
from snnet.data.resolve import resolve_data
from snnet.dense_demo import DenseDemoSettings, build_demo_network, train_config
from snnet.files import atomic_write
from snnet.measure.evaluate import StitchTree, evaluate_all
from snnet.measure.results import Results
from snnet.measure.scores import scorer_for
from snnet.rundir import RunDir
from snnet.stitch import Stitch
from snnet.train import distributed
from snnet.train.checkpoint import StepLog
from snnet.train.loop import LoopOptions, run_loop

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "dense.json"
WORK = ROOT / "runs" / "bench-dense"
DEMO_LIMIT_S = 600


LOCK = "/tmp/snnet-bench.lock"


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


@contextlib.contextmanager
def bench_lock():
    """The shared benchmark lock, held inside the block."""
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_demo(out: Path, settings: DenseDemoSettings) -> dict:
    """The demo in its own process, as a user runs it; its wall time and the load around it."""
    cmd = [sys.executable, "-m", "snnet", "demo", "--task", "segmentation", "--out", str(out)]
    cmd += ["--seed", str(settings.seed), "--steps", str(settings.steps), "--threads", "1"]
    cmd += ["--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with bench_lock():
        before = load()
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - t
        after = load()
    return {"seconds": round(seconds, 1), "load_before": before, "load_after": after}


def own_steps(run: Path, anchors: int) -> list[int]:
    """How many steps of the SN-Net run each anchor's own path got."""
    _, stitches = StepLog.read(RunDir(run).training)
    counts = Counter(stitches)
    return [counts[str(i)] for i in range(anchors)]


def standalone(settings: DenseDemoSettings, anchor: int, steps: int, data, test) -> float:
    """``anchor`` trained alone with the demo's head for ``steps`` steps; its test mIoU."""
    torch.manual_seed(settings.seed)
    net = build_demo_network(settings)
    x, _ = data.train.tensors(settings.ls_images, seed=settings.seed, num_workers=0)
    snnet.init_least_squares(net, x)
    config = train_config(settings)
    config = type(config)(**{**config.to_json(), "steps": steps, "anchor_probability": None})
    batches = EpochBatches(data.train, config.batch_size, seed=config.seed, num_workers=0)
    world = distributed.setup("cpu")
    options = LoopOptions(progress=False, stitches=[Stitch.anchor(anchor)])
    run_loop(net, batches, config, world, options)
    results = evaluate_all(net, test, stitches=[str(anchor)], progress=False, device="cpu")
    return results[str(anchor)].miou


def line_deviation(results: Results, anchors: list[float]) -> list[float]:
    """Each front stitch's mIoU minus the straight line, in log GMACs, between its route's first
    and last anchor's ``anchors`` mIoU (the anchors themselves left out)."""
    out = []
    for r in results.pareto("gmacs", "miou"):
        if r.stitch.is_anchor:
            continue
        f, e = r.stitch.route[0], r.stitch.route[-1]
        gf, ge = results[str(f)].gmacs, results[str(e)].gmacs
        share = (math.log(r.gmacs) - math.log(gf)) / (math.log(ge) - math.log(gf))
        out.append(r.miou - (anchors[f] + share * (anchors[e] - anchors[f])))
    return out


def one_pass_ratio(net: snnet.SNNet, test) -> dict:
    """Every stitch in one pass (shared prefixes and taps) against one pass per stitch."""
    images = test.sample(500, seed=0)
    x, y = images.tensors()
    scorer = scorer_for(net.task)
    net.eval()

    def one() -> None:
        with torch.inference_mode():
            for _, out in StitchTree(net).run(x):
                scorer.batch(out, y)

    def each() -> None:
        with torch.inference_mode():
            for s in net.stitches:
                scorer.batch(net(x, stitch=s), y)

    times: dict[str, list[float]] = {"one": [], "each": []}
    with bench_lock():
        before = load()
        for name in ("one", "each", "each", "one"):
            t = time.perf_counter()
            (one if name == "one" else each)()
            times[name].append(time.perf_counter() - t)
    return {
        "load_before": before,
        "one_pass_s": [round(v, 2) for v in times["one"]],
        "per_stitch_s": [round(v, 2) for v in times["each"]],
        "ratio": round(sum(times["each"]) / sum(times["one"]), 3),
        "load": load(),
    }


def demo_data(out: Path):
    """The demo run's network and its data (the canvases the demo trained and scored on)."""
    net = snnet.load(out)
    config = resolve_preprocessing(net.anchors).config
    return net, resolve_data(CANVAS, config, task=net.task)


def one_seed(settings: DenseDemoSettings, work: Path) -> dict:
    seed = settings.seed
    out = work / f"demo-seed{seed}-steps{settings.steps}"
    shutil.rmtree(out, ignore_errors=True)  # a demo resumed would not be timed whole
    demo = run_demo(out, settings)
    results = Results.load(RunDir(out).results)
    net, data = demo_data(out)
    anchors = [results[str(i)].miou for i in range(len(net.anchors))]
    torch.set_num_threads(1)
    own = own_steps(out, len(net.anchors))
    t = time.perf_counter()
    alone_own = [standalone(settings, i, n, data, data.val) for i, n in enumerate(own)]
    front = results.pareto("gmacs", "miou")
    return {
        "seed": seed,
        "run": str(out),
        "demo": demo,
        "anchors_snnet": anchors,
        "anchor_gmacs": [results[str(i)].gmacs for i in range(len(anchors))],
        "own_steps": own,
        "standalone_own_steps": alone_own,
        "standalone_all_steps": None,
        "standalone_seconds": round(time.perf_counter() - t, 1),
        "front": [str(r.stitch) for r in front],
        "front_size": len(front),
        "deviation_own_steps": line_deviation(results, alone_own),
        "deviation_all_steps": None,
        "one_pass": one_pass_ratio(net, data.val),
        "load_end": load(),
    }


def all_steps(settings: DenseDemoSettings, record: dict) -> dict:
    """The longer baseline of a finished seed: each anchor alone for the demo's whole run."""
    out = Path(record["run"])
    net, data = demo_data(out)
    torch.set_num_threads(1)
    t = time.perf_counter()
    alone = [
        standalone(settings, i, settings.steps, data, data.val) for i in range(len(net.anchors))
    ]
    return {
        "standalone_all_steps": alone,
        "standalone_all_seconds": round(time.perf_counter() - t, 1),
        "deviation_all_steps": line_deviation(Results.load(RunDir(out).results), alone),
    }


def mean_spread(values: list[float]) -> str:
    """``mean ± spread`` (spread: half the range over the seeds)."""
    return f"{statistics.mean(values):.2f} ± {(max(values) - min(values)) / 2:.2f}"


def goals(runs: list[dict]) -> dict:
    """Each goal per seed, and whether every seed meets it."""
    out: dict[str, dict] = {}

    def goal(name: str, values: list[float], met: bool) -> None:
        out[name] = {
            "per_seed": [round(v, 3) for v in values],
            "mean_spread": mean_spread(values),
            "met": met,
        }

    for which in ("own_steps", "all_steps"):
        if any(r[f"standalone_{which}"] is None for r in runs):
            continue
        diffs = [
            [a - b for a, b in zip(r["anchors_snnet"], r[f"standalone_{which}"], strict=True)]
            for r in runs
        ]
        for i in range(len(diffs[0])):
            values = [d[i] for d in diffs]
            goal(f"anchor{i}_minus_standalone_{which}", values, all(v >= -1 for v in values))
        devs = [r[f"deviation_{which}"] for r in runs]
        mean_abs = [statistics.mean(abs(v) for v in d) if d else math.nan for d in devs]
        goal(f"front_mean_abs_deviation_{which}", mean_abs, all(v <= 1.5 for v in mean_abs))
        signed = [statistics.mean(d) if d else math.nan for d in devs]
        goal(f"front_mean_signed_deviation_{which}", signed, True)
    spread = [max(r["anchors_snnet"]) - min(r["anchors_snnet"]) for r in runs]
    goal("anchor_spread", spread, all(v >= 3 for v in spread))
    size = [float(r["front_size"]) for r in runs]
    goal("front_size", size, all(v >= 10 for v in size))
    secs = [r["demo"]["seconds"] for r in runs]
    goal("demo_seconds", secs, all(v <= DEMO_LIMIT_S for v in secs))
    ratio = [r["one_pass"]["ratio"] for r in runs]
    goal("one_pass_ratio", ratio, all(v > 1 for v in ratio))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--steps", type=int, default=DenseDemoSettings().steps, help="a quick look")
    p.add_argument(
        "--all-steps", action="store_true", help="also each anchor alone for the demo's steps"
    )
    p.add_argument("--work", type=Path, default=WORK, help="where runs and finished seeds stay")
    args = p.parse_args()
    started = {"load": load(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    runs = []
    args.work.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        done = args.work / f"seed{seed}-steps{args.steps}.json"
        settings = DenseDemoSettings(seed=seed, steps=args.steps)
        if done.is_file():
            record = json.loads(done.read_text())
            print(f"seed {seed}: demo and standalone runs finished earlier ({done})", flush=True)
        else:
            record = one_seed(settings, args.work)
        if args.all_steps and record.get("standalone_all_steps") is None:
            record.update(all_steps(settings, record))
        atomic_write(done, lambda f, r=record: json.dump(r, f, indent=2))
        runs.append(record)
        print(json.dumps(record), flush=True)
    report = {
        "settings": asdict(DenseDemoSettings(steps=args.steps)),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "started": started,
        "ended_load": load(),
        "runs": runs,
        "goals": goals(runs),
    }
    atomic_write(args.out, lambda f: json.dump(report, f, indent=2))
    for name, g in report["goals"].items():
        print(
            f"{name:<42} {g['mean_spread']:>18}  {'met' if g['met'] else 'NOT MET'}  {g['per_seed']}"
        )
    print(f"load average: start {started['load']}, end {report['ended_load']}; wrote {args.out}")


if __name__ == "__main__":
    main()
