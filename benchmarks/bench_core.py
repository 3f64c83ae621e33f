"""Core overheads: the anchor path through snnet vs the plain timm model, and switching stitches.

Goals (issue 2): time ratio snnet/timm <= 1.01 on an anchor stitch; a switch <= 10 µs and
allocating nothing. Runs interleaved (timm, snnet, timm, ...) so machine noise hits both alike.

    .venv/bin/python benchmarks/bench_core.py [--threads 2] [--repeats 15]

Writes benchmarks/results/core.json and prints the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time
import tracemalloc
from pathlib import Path

import timm
import torch

import snnet
from snnet.files import atomic_write

OUT = Path(__file__).parent / "results" / "core.json"


def interleaved(fns: dict[str, callable], repeats: int) -> dict[str, list[float]]:
    times = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def anchor_overhead(name: str, img_size: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    models = [
        timm.create_model(n, img_size=img_size).eval()
        for n in ("deit_tiny_patch16_224", "deit_small_patch16_224")
    ]
    net = snnet.SNNet(models).eval()
    index = ["deit_tiny_patch16_224", "deit_small_patch16_224"].index(name)
    model, x = models[index], torch.randn(batch, 3, img_size, img_size)
    stitch = str(index)
    with torch.inference_mode():
        assert torch.equal(net(x, stitch=stitch), model(x))
        times = interleaved(
            {"timm": lambda: model(x), "snnet": lambda: net(x, stitch=stitch)}, repeats
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    # Ratio of medians, and the median of per-round ratios (robust to drifting load).
    rounds = [s / t for s, t in zip(times["snnet"], times["timm"], strict=True)]
    return {
        "model": name,
        "img_size": img_size,
        "batch": batch,
        "repeats": repeats,
        "timm_ms": round(med["timm"] * 1e3, 3),
        "snnet_ms": round(med["snnet"] * 1e3, 3),
        "ratio_of_medians": round(med["snnet"] / med["timm"], 4),
        "median_round_ratio": round(statistics.median(rounds), 4),
    }


def switching(n: int) -> dict:
    with torch.device("meta"):  # switching never touches weights, so none are needed
        anchors = [
            timm.create_model(m)
            for m in ("deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224")
        ]
    net = snnet.SNNet(anchors)
    stitches = list(net.stitches)
    k = len(stitches)
    for s in stitches:
        net.stitch = s
    # Iterate a prepared list: a `range` counter above 256 would itself allocate ints.
    sequence = stitches * (n // k)
    gc.collect()
    gc.disable()
    t = time.perf_counter()
    for s in sequence:
        net.stitch = s
    per_switch = (time.perf_counter() - t) / len(sequence)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    peaks = []
    # Peak traced memory over a short and a 10x longer run: any per-switch allocation would
    # make the second grow; a constant is the loop's own iterator, not snnet.
    for seq in (sequence[: len(sequence) // 10], sequence):
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        for s in seq:
            net.stitch = s
        peaks.append(tracemalloc.get_traced_memory()[1] - base)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    gc.enable()
    grown = sum(
        s.size_diff
        for s in after.compare_to(before, "filename")
        if "snnet" in s.traceback[0].filename
    )
    # The same through a string (parsing allocates: for CLIs, not hot loops).
    t = time.perf_counter()
    for i in range(n // 10):
        net.stitch = "0:5-1:6" if i % 2 else "1:3-2:4"
    per_parse = (time.perf_counter() - t) / (n // 10)
    return {
        "stitches": k,
        "switches": len(sequence),
        "switch_us": round(per_switch * 1e6, 3),
        "peak_bytes_short_run": peaks[0],
        "peak_bytes_10x_run": peaks[1],
        "bytes_per_switch": max(0.0, (peaks[1] - peaks[0]) / (len(sequence) * 0.9)),
        "bytes_held_by_snnet_after": grown,
        "switch_from_string_us": round(per_parse * 1e6, 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    report = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "load_avg_1m": os.getloadavg()[0],
            "torch": torch.__version__,
            "timm": timm.__version__,
            "python": platform.python_version(),
        },
        "anchor_path": [
            anchor_overhead("deit_tiny_patch16_224", 224, 8, args.repeats),
            anchor_overhead("deit_small_patch16_224", 224, 4, args.repeats),
        ],
        "switching": switching(200_000),
        "goals": {"anchor_ratio_max": 1.01, "switch_us_max": 10, "allocation_bytes": 0},
    }
    report["machine"]["load_avg_1m_after"] = os.getloadavg()[0]
    atomic_write(OUT, lambda f: json.dump(report, f, indent=2))
    print(json.dumps(report, indent=2))
    print(f"written to {OUT}")


if __name__ == "__main__":
    main()
