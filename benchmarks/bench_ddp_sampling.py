"""DDP training speed with ``balanced`` vs ``independent`` rank sampling: 2 ranks, CPU, gloo.

With ``independent`` sampling every step waits for the most expensive of the ranks' stitches;
``balanced`` draws every rank's stitch from one cost band, so the ranks finish close together.
Both give each rank the same (uniform) distribution of stitches: the same work on average.

    python benchmarks/bench_ddp_sampling.py [--blocks 6] [--block-steps 20] [--batch-size 128]

One ``torchrun --nproc_per_node=2 --standalone`` launch (gloo, 1 thread per rank) alternates the two
modes in blocks of steps (ABBA order), so drifting load from other processes on the machine hits
both alike. Each block trains a fresh network of the demo family's architecture (timm ViTs of depth
12 on 28×28 grey images, widths as recorded; random weights, as speed does not depend on them) on
Fashion-MNIST;
the first ``--warmup-steps`` of a block are not timed. Writes ``benchmarks/results/ddp_sampling.json``
and prints the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ddp_sampling.json"
MODES = ("independent", "balanced")


def build_net():
    import snnet
    from snnet import zoo

    anchors = [zoo.create_demo_anchor(n, pretrained=False) for n in zoo.demo_family_names()]
    return snnet.SNNet(anchors)


def expected_wait(net, mode: str, world_size: int = 2, draws: int = 20000) -> dict[str, float]:
    """From the sampler alone: mean GMACs of a rank's stitch and of the largest stitch per step
    (what a step waits for if its time were proportional to multiply-adds)."""
    from snnet.train.sampling import StitchSampler

    costs = {s: net.cost(s).gmacs for s in net.stitches}
    sampler = StitchSampler(net.stitches, costs, rank_sampling=mode, world_size=world_size, seed=1)
    mean = largest = 0.0
    for _ in range(draws):
        c = [costs[s] for s in sampler.draw()]
        mean += sum(c) / len(c)
        largest += max(c)
    return {"mean_gmacs": mean / draws, "max_gmacs": largest / draws}


class Timed:
    """Epoch batches that note when each step starts (the loop fetches its batch first)."""

    def __init__(self, batches) -> None:
        self.batches, self.times = batches, []

    def __len__(self) -> int:
        return len(self.batches)

    def __call__(self, epoch: int, start: int = 0):
        for batch in self.batches(epoch, start):
            self.times.append(time.perf_counter())
            yield batch


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    from snnet.data import EpochBatches, fashion_mnist
    from snnet.train import TrainConfig, distributed, train_loop

    world = distributed.setup("cpu")
    data = fashion_mnist("train")
    batches = EpochBatches(data, args.batch_size, rank=world.rank, world_size=world.world_size)
    rows = []
    for block in range(args.blocks):
        order = MODES if block % 4 in (0, 3) else MODES[::-1]  # ABBA BAAB ...
        for mode in order:
            net = build_net()
            gmacs = {str(s): net.cost(s).gmacs for s in net.stitches}
            config = TrainConfig(
                steps=args.block_steps + args.warmup_steps,
                batch_size=args.batch_size,
                rank_sampling=mode,
                amp="off",
                seed=block,
            )
            timer = Timed(batches)
            result = train_loop(net, timer, config, progress=False)
            timer.times.append(time.perf_counter())  # the end of the last step
            timed = timer.times[args.warmup_steps :]
            ranks = distributed.gather(result.stitches[args.warmup_steps :], world)  # [rank][step]
            per_step = [[gmacs[s] for s in step] for step in zip(*ranks, strict=True)]
            rows.append(
                {
                    "block": block,
                    "mode": mode,
                    "steps": len(timed) - 1,
                    "seconds": timed[-1] - timed[0],
                    # the work drawn: a rank's mean GMACs, and each step's largest (what it waits for)
                    "mean_gmacs": statistics.mean(statistics.mean(c) for c in per_step),
                    "mean_max_gmacs": statistics.mean(max(c) for c in per_step),
                }
            )
            if world.is_main:
                r = rows[-1]
                print(
                    f"block {block} {mode:<11} {r['steps'] / r['seconds']:.2f} steps/s", flush=True
                )
    if world.is_main:
        Path(args.result).write_text(json.dumps(rows))
    torch.distributed.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=6, help="blocks per mode")
    p.add_argument("--block-steps", type=int, default=20, help="timed steps per block")
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed steps per block")
    p.add_argument("--batch-size", type=int, default=128, help="per rank")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    sys.path.insert(0, str(ROOT / "src"))
    from snnet.files import atomic_write

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        cmd += [__file__, "--worker", "--result", str(out), "--blocks", str(args.blocks)]
        cmd += ["--block-steps", str(args.block_steps), "--warmup-steps", str(args.warmup_steps)]
        cmd += ["--batch-size", str(args.batch_size)]
        started = time.time()
        done = subprocess.run(cmd, env=env, stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise SystemExit(f"torchrun failed:\n{done.stderr[-3000:]}")
        rows = json.loads(out.read_text())
    net = build_net()
    rate = {
        m: sum(r["steps"] for r in rows if r["mode"] == m)
        / sum(r["seconds"] for r in rows if r["mode"] == m)
        for m in MODES
    }
    by_block = {(r["block"], r["mode"]): r for r in rows}
    per_block = [
        (by_block[(b, "balanced")]["steps"] / by_block[(b, "balanced")]["seconds"])
        / (by_block[(b, "independent")]["steps"] / by_block[(b, "independent")]["seconds"])
        for b in range(args.blocks)
    ]
    model = {m: expected_wait(net, m) for m in MODES}
    drawn = {
        m: {
            k: statistics.mean(r[k] for r in rows if r["mode"] == m)
            for k in ("mean_gmacs", "mean_max_gmacs")
        }
        for m in MODES
    }
    costs = sorted(net.cost(s).gmacs for s in net.stitches)
    figures = {
        "benchmark": "DDP steps per second, balanced vs independent rank sampling",
        "setup": {
            "ranks": 2,
            "backend": "gloo",
            "threads_per_rank": 1,
            "family": "demo ViTs {} wide, depth 12, 28x28 grey (random weights)".format(
                "/".join(str(a.model.embed_dim) for a in net.anchors)
            ),
            "stitches": len(net.stitches),
            "gmacs_range": [costs[0], costs[-1]],
            "batch_size_per_rank": args.batch_size,
            "blocks_per_mode": args.blocks,
            "timed_steps_per_block": args.block_steps,
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "wall_seconds": time.time() - started,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "steps_per_second": rate,
        "speedup_balanced_over_independent": rate["balanced"] / rate["independent"],
        # the same ratio per unit of work drawn (GMACs per rank per step), in case the draws differ
        "work_normalised_speedup": (rate["balanced"] * drawn["balanced"]["mean_gmacs"])
        / (rate["independent"] * drawn["independent"]["mean_gmacs"]),
        "per_block_speedup": per_block,
        "median_per_block_speedup": statistics.median(per_block),
        "drawn_gmacs": drawn,
        "sampler_model": {
            **model,
            "ideal_speedup": model["independent"]["max_gmacs"] / model["balanced"]["max_gmacs"],
            "note": "if a step took time proportional to the largest rank's GMACs",
        },
        "rows": rows,
    }
    atomic_write(RESULTS, lambda f: json.dump(figures, f, indent=2, sort_keys=True))
    shown = {k: v for k, v in figures.items() if k not in ("rows", "setup", "benchmark")}
    print(json.dumps(shown, indent=2))
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
