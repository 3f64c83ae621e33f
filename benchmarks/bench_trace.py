"""Traced against eager serving: what ``ServedModel.trace`` changes, and why it matters.

For a served run (default ``runs/serve-bench-demo``, built by ``bench_serve.py --prepare-only``),
on ``--device``:

1. traces the front and two more stitches, and reports the time, the stitches left eager, and
   the largest difference of their probabilities from the eager forward (and, on a GPU, from
   the CPU's traced ones);
2. times a batch of 1 and of 8 per front stitch through ``ServedModel.predict``, traced and
   eager (interleaved rounds, medians: ``ServedModel.batch_ms``);
3. on the CPU, runs batches of 8 on the cheapest front stitch in a thread while the main thread
   spins in Python, as an event loop busy parsing a surge does, at Python's default GIL switch
   interval (5 ms) and at the server's (1 ms): batches per second, traced and eager.

Writes benchmarks/results/trace_{device}.json and prints it::

    python benchmarks/bench_trace.py                  # CPU, 1 torch thread
    python benchmarks/bench_trace.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from snnet.files import atomic_write  # noqa: E402
from snnet.serve.executor import SWITCH_INTERVAL_S  # noqa: E402
from snnet.serve.model import ServedModel  # noqa: E402


def beside_a_busy_thread(model: ServedModel, stitch, pixels, seconds: float = 1.0) -> float:
    """Batches per second of ``stitch`` in a worker thread while this one spins in Python."""
    done, stop = [0], [False]

    def work() -> None:
        while not stop[0]:
            model.predict(pixels, stitch)
            done[0] += 1

    worker = threading.Thread(target=work)
    worker.start()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    stop[0] = True
    worker.join()
    return done[0] / seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=HERE.parent / "runs" / "serve-bench-demo")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out: dict = {"run": str(args.run), "device": args.device, "threads": args.threads}
    out["torch"] = torch.__version__
    model = ServedModel.load(args.run, device=args.device)
    stitches = [r.stitch for r in model.front]
    stitches += [r.stitch for r in model.results if str(r.stitch) in ("0:5-1:6", "1:3-2:3")]
    start = time.perf_counter()
    out["left_eager"] = [str(s) for s in model.trace(stitches, max_batch=8)]
    out["trace_s_per_stitch"] = round((time.perf_counter() - start) / len(stitches), 3)
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (8, *model.net.anchors[0].input_size), generator=g)
    pixels = pixels.to(torch.uint8)
    cpu = None
    if model.device.type != "cpu":
        cpu = ServedModel.load(args.run)
        cpu.trace(stitches, max_batch=8)
    diff = {}
    for s in stitches:
        with torch.inference_mode():
            eager = model._eager(s)(pixels.to(model.device)).cpu()
        traced = model.predict(pixels, s)
        diff[str(s)] = {"vs_eager": float((traced - eager).abs().max())}
        if cpu is not None:
            diff[str(s)]["vs_cpu"] = float((traced - cpu.predict(pixels, s)).abs().max())
    out["max_abs_diff"] = diff
    traced_ms = model.batch_ms((1, 8))
    kept = dict(model.traced)
    model.traced.clear()
    eager_ms = model.batch_ms((1, 8))
    out["batch_ms"] = {
        str(s): {
            f"{kind}_b{b}": round(times[b][s], 3)
            for kind, times in (("traced", traced_ms), ("eager", eager_ms))
            for b in (1, 8)
        }
        for s in traced_ms[1]
    }
    if model.device.type == "cpu":
        cheapest = model.front[0].stitch
        busy = {}
        default = sys.getswitchinterval()
        try:
            for interval in (0.005, SWITCH_INTERVAL_S):
                sys.setswitchinterval(interval)
                for kind in ("eager", "traced"):
                    model.traced.clear()
                    if kind == "traced":
                        model.traced.update(kept)
                    key = f"{kind}_switch_{interval * 1e3:g}ms"
                    busy[key] = beside_a_busy_thread(model, cheapest, pixels)
            model.traced.clear()
            busy["eager_alone"] = 1e3 / eager_ms[8][cheapest]
            busy["traced_alone"] = 1e3 / traced_ms[8][cheapest]
        finally:
            sys.setswitchinterval(default)
        out["batches_per_s_of_8_beside_a_busy_thread"] = {str(cheapest): busy}
    path = args.out or HERE / "results" / f"trace_{model.device.type}.json"
    text = json.dumps(out, indent=1)
    atomic_write(path, lambda f: f.write(text + "\n"))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
