"""Page faults and training speed of the demo recipe with glibc's default allocation thresholds
and with :func:`snnet.threads.keep_freed_memory` (what every ``snnet`` command applies).

Each run is a fresh process (``PYTHONPATH`` pinned to this checkout's ``src``, 1 thread) that
builds the demo SN-Net and trains ``--steps`` steps of the demo's recipe with the teachers'
logits cached, as ``snnet demo`` does; arms alternate so that a drift of the machine's speed
hits both. Per run: the training seconds ``fit`` reports (least squares, the logit cache and
the steps), the process's minor page faults and its system CPU seconds, and a digest of the
trained weights (the setting must not change them). Prints one line per run and the medians,
and writes ``benchmarks/results/malloc.json``.

    .venv/bin/python benchmarks/bench_malloc.py --steps 400 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from snnet.files import atomic_write

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "malloc.json"

WORKER = r"""
import hashlib, json, resource, sys
import torch
import snnet
from snnet.data import fashion_mnist
from snnet.threads import keep_freed_memory, set_threads
from snnet.train import TrainConfig, fit

arm, steps = sys.argv[1], int(sys.argv[2])
applied = keep_freed_memory() if arm == "keep" else False
set_threads(1)
anchors, options = snnet.resolve_anchors("fmnist")
net = snnet.SNNet(anchors, **options)
config = TrainConfig(
    epochs=1, steps=steps, lr=2e-3, anchor_lr_scale=0.5, distill="end", anchor_probability=0.25,
    cache_teachers=True,
)
before = resource.getrusage(resource.RUSAGE_SELF)
result = fit(net, fashion_mnist("train"), config, ls_init=512, progress=False)
after = resource.getrusage(resource.RUSAGE_SELF)
digest = hashlib.sha256()
for name, tensor in sorted(net.state_dict().items()):
    digest.update(name.encode() + tensor.numpy().tobytes())
print(json.dumps({
    "applied": applied,
    "train_s": round(result.seconds, 2),
    "minor_faults": after.ru_minflt - before.ru_minflt,
    "system_s": round(after.ru_stime - before.ru_stime, 2),
    "weights_sha256": digest.hexdigest()[:16],
}))
"""


def run_arm(arm: str, steps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-c", WORKER, arm, str(steps)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"{arm} run failed:\n{done.stderr[-2000:]}")
    return {"arm": arm, **json.loads(done.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    runs = []
    for _ in range(args.repeats):
        for arm in ("default", "keep"):
            runs.append(run_arm(arm, args.steps))
            print(json.dumps(runs[-1]))
    summary = {
        arm: {
            key: statistics.median(r[key] for r in runs if r["arm"] == arm)
            for key in ("train_s", "minor_faults", "system_s")
        }
        for arm in ("default", "keep")
    }
    same = len({r["weights_sha256"] for r in runs}) == 1
    figures = {
        "steps": args.steps,
        "repeats": args.repeats,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, 1 thread per run",
        "median": summary,
        "speedup": round(summary["default"]["train_s"] / summary["keep"]["train_s"], 3),
        "same_weights_in_every_run": same,
        "runs": runs,
    }
    atomic_write(args.out, lambda f: f.write(json.dumps(figures, indent=2) + "\n"))
    for arm, s in summary.items():
        print(
            f"{arm:8s} median: {s['train_s']:.1f} s training, {s['minor_faults']:,} page faults, "
            f"{s['system_s']:.1f} s system"
        )
    print(f"speedup {figures['speedup']}x; same weights in every run: {same}; wrote {args.out}")


if __name__ == "__main__":
    main()
