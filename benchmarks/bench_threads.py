"""Seconds per training step of the demo SN-Net (batch 128) at 1 and 2 threads, idle and beside
a CPU hog, with libgomp's default (spinning) wait policy and with ``OMP_WAIT_POLICY=PASSIVE``.

The hog is two ``while :; do :; done`` shell loops, started before an arm and killed after it.
Each arm runs in a fresh process (libgomp reads ``OMP_WAIT_POLICY`` once, when torch loads) with
``PYTHONPATH`` pinned to this checkout's ``src``: 2 warm-up steps, then the median of ``--steps``
timed steps (stitches drawn with a seeded generator). Prints one line per arm and writes
``benchmarks/results/threads.json``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_threads.py --steps 5 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
from pathlib import Path

from snnet.files import atomic_write

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "threads.json"

WORKER = r"""
import json, random, sys, time
import torch
import snnet
from snnet.data import fashion_mnist
from snnet.threads import set_threads
from snnet.train import TrainConfig
from snnet.train.step import make_optimizer

threads, steps = int(sys.argv[1]), int(sys.argv[2])
set_threads(threads)
anchors, options = snnet.resolve_anchors("fmnist-xs-sm-l")
net = snnet.SNNet(anchors, **options).train()
opt = make_optimizer(net, TrainConfig())
x, y = fashion_mnist("train").batch(torch.arange(128))
rng = random.Random(0)
times = []
for i in range(2 + steps):
    stitch = rng.choice(net.stitches)
    t = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(net(x, stitch=stitch), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t)
print(json.dumps({"times": times[2:]}))
"""

ARMS = (  # (name, threads, extra environment)
    ("1 thread", 1, {}),
    ("2 threads", 2, {}),
    ("2 threads, OMP_WAIT_POLICY=PASSIVE", 2, {"OMP_WAIT_POLICY": "PASSIVE"}),
)


def run_arm(threads: int, env_extra: dict[str, str], steps: int, hog: bool) -> list[float]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS=str(threads), **env_extra)
    env["MKL_NUM_THREADS"] = str(threads)
    hogs = [subprocess.Popen(["bash", "-c", "while :; do :; done"]) for _ in range(2 if hog else 0)]
    try:
        out = subprocess.run(
            [sys.executable, "-c", WORKER, str(threads), str(steps)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    return json.loads(out.strip().splitlines()[-1])["times"]


def write(rows: list[dict], steps: int) -> dict[str, float]:
    """threads.json from the arms measured so far (rewritten after every arm: a cut-short run
    keeps what it measured)."""
    summary = {}
    for name, _threads, _env in ARMS:
        for hog in (False, True):
            med = [r["median_s_per_step"] for r in rows if r["arm"] == name and r["hog"] == hog]
            if med:
                summary[f"{name} | {'hog' if hog else 'idle'}"] = round(statistics.median(med), 4)
    result = {
        "what": "demo SN-Net training step, batch 128, fmnist, seconds",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        "(shared with other jobs: 'idle' means no hog of ours, see load_avg_1m)",
        "hog": "two `while :; do :; done` shell loops beside the run",
        "steps_per_arm": steps,
        "summary_median_s_per_step": summary,
        "runs": rows,
    }
    atomic_write(OUT, lambda f: f.write(json.dumps(result, indent=2) + "\n"))
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="timed steps per arm")
    p.add_argument("--repeats", type=int, default=2, help="runs per arm and load")
    args = p.parse_args()
    # a SIGTERM (timeout) unwinds through run_arm's finally, so no hog loop outlives this run
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows: list[dict] = []
    for rep in range(args.repeats):
        for hog in (False, True):
            for name, threads, env_extra in ARMS:
                times = run_arm(threads, env_extra, args.steps, hog)
                row = {
                    "arm": name,
                    "threads": threads,
                    "env": env_extra,
                    "hog": hog,
                    "repeat": rep,
                    "median_s_per_step": round(statistics.median(times), 4),
                    "min_s_per_step": round(min(times), 4),
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                }
                rows.append(row)
                print(
                    f"{name:<36} {'beside hog' if hog else 'idle':<10} "
                    f"median {row['median_s_per_step']:.3f} s/step (load {row['load_avg_1m']})",
                    flush=True,
                )
                summary = write(rows, args.steps)
    print(json.dumps(summary, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
