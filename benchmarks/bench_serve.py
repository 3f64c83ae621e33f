"""Serving benchmark: does switching stitches hold a latency SLO under real load?

Drives `snnet serve` (a subprocess on a loopback port) with an open-loop Poisson client (raw HTTP/1.1 on
asyncio: requests are sent on schedule whether or not earlier ones finished) in phases:

1. steady: rate R;  2. surge: 4R;  3. steady again: R;  4. contention: R while a second process
   competes for the CPU (a torch matmul loop).

Four servers are compared on the same schedule, one after another: adaptive (``--slo-ms``), the
largest anchor fixed, the smallest anchor fixed, and the best fixed stitch for the steady rate
(the most accurate front stitch whose p99 at R, probed first for a phase's length, stays under
the SLO). Per phase:
throughput, p50/p99 of answered requests (client-side, from the moment each was due), the server's
own end-to-end latency (arrival at the app to answer ready) and the batcher's part of it, refused
share, served accuracy (each answered request weighted by its stitch's measured top-1) and served
GMACs, and the machine's load average (``os.getloadavg``) at each phase's end.

Two families (``--family``):

- ``demo``: snnet's three Fashion-MNIST ViTs (28×28 grey) stitched with least-squares init,
  evaluated on the 10,000 test images: real accuracy, for the accuracy comparison. These models
  are so small that HTTP and decoding dominate a request, so switching changes the server's
  capacity little.
- ``compute``: three random-initialised timm ViTs at 112×112 px (depth 12, widths 96 / 192 /
  384), where compute dominates: the front spans 6-8× in batch-1 latency at CPU speed. They
  are untrained, so "top-1" is a stand-in (anchors 70 / 75 / 80, a stitch interpolating by the
  share of blocks it runs from its larger anchor) and served accuracy is not reported: this
  family is for the latency goals only.

The network is built once into --run (default ``runs/serve-bench-FAMILY``; a trained run can be
given instead). R is set from what is measured first on this machine, with this load generator
running beside the server: each end of the front, fixed, is probed for its *SLO capacity* (the
highest Poisson rate it answers with p99 within the SLO and < 1 % refused, by bisection of
probes as long as a phase), and the surge (4R) lies midway between the largest anchor's and the
cheapest stitch's, so the largest cannot hold the surge and the cheapest can. Then the cheapest,
fixed, runs one phase at the surge; while it does not hold it, R drops by 10 % (at most twice,
never to a surge the largest holds): every check is recorded (``surge_checks``). (Midway between
the closed-loop capacities, the first rule, put the surge beyond what even the cheapest stitch
held under 100 ms here: the load generator shares the 2 cores. 4-s probes, the second, found
capacities that 15-s phases did not hold: the smallest anchor, fixed, broke the SLO at the
client in the surge set from them.)

Run: python benchmarks/bench_serve.py --family compute --phase-seconds 15 [--quick]; writes
benchmarks/results/serve.json (demo) or serve-compute.json, and a PNG beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(SRC))

import snnet  # noqa: E402
from snnet.files import atomic_write  # noqa: E402
from snnet.measure.latency import machine, percentile  # noqa: E402
from snnet.measure.results import Results  # noqa: E402

PHASES = ("steady", "surge", "steady_again", "contention")
FACTOR = {"steady": 1.0, "surge": 4.0, "steady_again": 1.0, "contention": 1.0}


#: The compute family: (embed_dim, num_heads) of three ViTs at COMPUTE_PX px, depth 12.
COMPUTE_WIDTHS = ((96, 2), (192, 3), (384, 6))
COMPUTE_PX = 112
PROXY_ANCHORS = (70.0, 75.0, 80.0)
PROXY = (
    "stand-in (random init, no accuracy): anchors 70/75/80, a stitch interpolating by the share "
    "of blocks it runs from its larger anchor"
)


def proxy_top1(stitch: snnet.Stitch, depth: int) -> float:
    """The compute family's stand-in top-1 (see ``PROXY``)."""
    if not stitch.cuts:
        return PROXY_ANCHORS[stitch.route[0]]
    small, large = (PROXY_ANCHORS[a] for a in stitch.route)
    share = (depth - stitch.cuts[0].in_block) / depth
    return round(small + (large - small) * share, 3)


# -- the network ------------------------------------------------------------------------------------
def _prepared(results_path: Path) -> bool:
    """A run prepared before: every stitch has a top-1 and latency was measured."""
    if not results_path.exists():
        return False
    res = Results.load(results_path)
    return not res.missing("top1") and bool((res.meta.get("latency") or {}).get("method"))


def prepare_compute_run(run: Path) -> Path:
    """The compute family: random-init timm ViTs, stitched, a stand-in top-1, latency timed."""
    from snnet.sources import timm_anchor

    results_path = run / "results.json"
    if _prepared(results_path):
        return run
    torch.set_num_threads(1)
    torch.manual_seed(0)
    anchors = [
        timm_anchor(
            "vit_tiny_patch16_224",
            num_classes=10,
            img_size=COMPUTE_PX,
            embed_dim=dim,
            num_heads=heads,
        )
        for dim, heads in COMPUTE_WIDTHS
    ]
    net = snnet.SNNet(anchors).eval()
    snnet.save(net, run / "model")
    net = snnet.load(run / "model").eval()
    res = Results.for_network(net)
    for r in res:
        res.update(r.stitch, top1=proxy_top1(r.stitch, depth=12))
    res.meta["top1"] = PROXY
    print("measuring latency of every stitch (batch 1, 1 thread, interleaved) ...", flush=True)
    res = measure_interleaved(net, res, rounds=9, fastest=True)
    res.save(results_path)
    return run


def prepare_run(run: Path, *, eval_images: int | None) -> Path:
    """The demo family, least-squares init on 512 training images, evaluated and timed."""
    from snnet.data import fashion_mnist
    from snnet.measure.evaluate import evaluate_all

    results_path = run / "results.json"
    if _prepared(results_path):
        return run
    torch.set_num_threads(1)
    anchors, options = snnet.resolve_anchors("fmnist-xs-sm-l")
    net = snnet.SNNet(anchors, **options).eval()
    if not (run / "model" / "config.json").exists():
        train = fashion_mnist("train")
        g = torch.Generator().manual_seed(0)
        idx = torch.randperm(len(train), generator=g)[:512]
        snnet.init_least_squares(net, train.batch(idx)[0])
        snnet.save(net, run / "model")
    net = snnet.load(run / "model").eval()
    print("evaluating every stitch on the Fashion-MNIST test set ...", flush=True)
    res = evaluate_all(
        net,
        fashion_mnist("test"),
        max_images=eval_images,
        path=results_path,
        device="cpu",
        progress=False,
        data_name="fashion-mnist test",
    )
    print("measuring latency of every stitch (batch 1, 1 thread, interleaved) ...", flush=True)
    res = measure_interleaved(net, res)
    res.save(results_path)
    return run


def measure_interleaved(
    net: snnet.SNNet, res: Results, *, rounds: int = 21, fastest: bool = False
) -> Results:
    """Batch-1 latency of every stitch, robust to a machine whose load drifts: each round times
    every stitch once (best of 3 calls), and a stitch's latency is its median over the rounds
    (``fastest``: its fastest round, which on a heavily shared machine keeps the order that the
    stitches' compute implies; the server scales the table by the slowdown it observes).
    (Timing stitch after stitch, as ``snnet latency`` does, let a load change between stitches
    reorder the front on the shared machine this was developed on.)"""
    import statistics

    from snnet.measure.latency import machine as machine_info

    torch.set_num_threads(1)
    x = torch.zeros(1, *net.anchors[0].input_size)
    times: dict = {s: [] for s in net.stitches}
    with torch.inference_mode():
        for s in net.stitches:  # warm-up
            net(x, stitch=s)
        for _ in range(rounds):
            for s in net.stitches:
                best = float("inf")
                for _ in range(3):
                    t0 = time.perf_counter()
                    net(x, stitch=s)
                    best = min(best, (time.perf_counter() - t0) * 1e3)
                times[s].append(best)
    for s, ts in times.items():
        value = min(ts) if fastest else statistics.median(ts)
        res.update(s, latency_ms=value, latency_p90_ms=percentile(ts, 90))
    res.meta["latency"] = {
        "batch_size": 1,
        "method": f"interleaved: {rounds} rounds over every stitch, best of 3 calls per round, "
        f"{'fastest' if fastest else 'median'} round",
        **machine_info(),
    }
    return res


def test_images(n: int = 512, *, px: int | None = None) -> list[tuple[bytes, int]]:
    """Fashion-MNIST test images as PNG bytes with their labels: 28×28 grey, or ``px``×``px``
    RGB (upscaled) for a family that takes larger colour images."""
    from PIL import Image

    from snnet.data import fashion_mnist

    test = fashion_mnist("test")
    out = []
    for i in range(n):
        img = Image.fromarray(test.memory[i, 0].numpy(), "L")
        if px is not None:
            img = img.resize((px, px), Image.BILINEAR).convert("RGB")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append((buf.getvalue(), int(test.targets[i])))
    return out


# -- server and load ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, run: Path, args: list[str], log: Path) -> None:
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "snnet", "serve", str(run), "--port", str(self.port)]
        cmd += [*args, "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError("server not ready")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def competitor() -> subprocess.Popen:
    """A second process that keeps both cores busy with matrix products."""
    code = (
        "import torch; torch.set_num_threads(2); a = torch.randn(512, 512)\n"
        "while True: a = (a @ a).tanh()"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "2"}
    )


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams. httpx costs a few ms of CPU per
    request, which on a 2-core machine shared with the server would be measured as server
    latency; this one costs a fraction of that."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        #: seconds the last new connection of each post took to open (0: a kept-alive one),
        #: by the task that posted: where a request's time outside the server goes
        self.connect_s: dict[asyncio.Task, float] = {}

    async def post(self, path: str, body: bytes, ctype: str) -> tuple[int, dict, bytes]:
        task = asyncio.current_task()
        self.connect_s[task] = 0.0
        if self.idle:  # a kept-alive connection the server may have closed meanwhile: retry once
            try:
                return await self._post(self.idle.pop(), path, body, ctype)
            except (ConnectionError, IndexError, asyncio.IncompleteReadError):
                pass
        t = time.perf_counter()
        conn = await asyncio.open_connection(self.host, self.port)
        self.connect_s[task] = time.perf_counter() - t
        return await self._post(conn, path, body, ctype)

    async def _post(self, conn, path: str, body: bytes, ctype: str) -> tuple[int, dict, bytes]:
        reader, writer = conn
        try:
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            writer.write(head.encode() + body)
            status = int((await reader.readline()).split()[1])
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                k, _, v = line.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            data = await reader.readexactly(int(headers.get("content-length", 0)))
        except BaseException:
            writer.close()
            raise
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self.idle.append(conn)
        return status, headers, data

    def close(self) -> None:
        for _, w in self.idle:
            w.close()


async def drive(
    url: str,
    schedule: list[tuple[str, float, float]],
    images: list[tuple[bytes, int]],
    *,
    seed: int,
    on_phase=None,
) -> list[dict[str, Any]]:
    """Open-loop Poisson arrivals: for each (phase, seconds, rate) send requests at exponential
    gaps, never waiting for answers. Returns one record per request: latency from the moment it
    was due (so a late client counts against the result, no coordinated omission), the server's
    own queue + compute time, and how late the client sent it.

    The garbage collector is off meanwhile: a full pass over this process's heap (torch and
    the records so far) stalled the client for 240 ms in a surge, which counted as 240 ms of
    latency against the server."""
    gc.collect()
    gc.disable()
    try:
        return await _drive(url, schedule, images, seed=seed, on_phase=on_phase)
    finally:
        gc.enable()


async def _drive(url, schedule, images, *, seed, on_phase) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    client = RawClient(url)
    start = time.perf_counter()

    async def one(phase: str, sent: float, k: int) -> None:
        body, label = images[k % len(images)]
        due = start + sent
        rec = {"phase": phase, "t": sent, "status": None, "stitch": None, "latency_ms": None}
        rec["lag_ms"] = (time.perf_counter() - due) * 1e3
        try:
            status, _, data = await client.post("/v1/predict", body, "image/png")
            rec["connect_ms"] = client.connect_s.pop(asyncio.current_task(), 0.0) * 1e3
            rec["status"] = status
            if status == 200:
                answer = json.loads(data)
                rec["stitch"] = answer["stitch"]
                rec["server_ms"] = answer["latency_ms"]  # arrival at the app -> answer ready
                pred = answer["predictions"][0]
                rec["batcher_ms"] = pred["queue_ms"] + pred["compute_ms"]
                rec["correct"] = answer["predictions"][0]["top"][0]["index"] == label
        except (OSError, ValueError, asyncio.IncompleteReadError) as e:
            rec["status"] = f"error: {type(e).__name__}"
        rec["latency_ms"] = (time.perf_counter() - due) * 1e3
        records.append(rec)

    tasks = []
    t = 0.0
    k = 0
    for phase, seconds, rate in schedule:
        if on_phase:
            on_phase(phase, "start")
        end = t + seconds
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                t = end
                break
            delay = start + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(phase, t, k)))
            k += 1
        delay = start + end - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if on_phase:
            on_phase(phase, "end")
    await asyncio.gather(*tasks)
    client.close()
    return records


def outside_server(ok: list[dict[str, Any]]) -> dict[str, Any]:
    """The slowest 1 % of answered requests: their time outside the server, split."""
    if not ok:
        return {}
    slow = sorted(ok, key=lambda r: r["latency_ms"])[-max(1, len(ok) // 100) :]
    outside = [r["latency_ms"] - r["server_ms"] - r["lag_ms"] for r in slow]
    connect = [r.get("connect_ms", 0.0) for r in slow]
    return {
        "slowest_1pct": len(slow),
        "slowest_new_connections": sum(c > 0 for c in connect),
        "slowest_mean_ms": {
            "total": round(sum(r["latency_ms"] for r in slow) / len(slow), 1),
            "in_server": round(sum(r["server_ms"] for r in slow) / len(slow), 1),
            "client_lag": round(sum(r["lag_ms"] for r in slow) / len(slow), 1),
            "connect": round(sum(connect) / len(slow), 1),
            "outside_server": round(sum(outside) / len(slow), 1),
        },
    }


def summarize(
    records: list[dict[str, Any]],
    top1: dict[str, float],
    gmacs: dict[str, float],
    trained: bool,
    seconds: float,
) -> dict:
    """One phase's figures (``top1`` per stitch; ``trained``: the answers mean something)."""
    ok = [r for r in records if r["status"] == 200]
    refused = [r for r in records if r["status"] in (429, 503)]
    failed = [r for r in records if r["status"] not in (200, 429, 503)]
    lat = [r["latency_ms"] for r in ok]
    return {
        "sent": len(records),
        "answered": len(ok),
        "throughput_rps": round(len(ok) / seconds, 2),
        "p50_ms": round(percentile(lat, 50), 2) if lat else None,
        "p99_ms": round(percentile(lat, 99), 2) if lat else None,
        "refused_share": round(len(refused) / max(len(records), 1), 4),
        "failed": len(failed),
        "server_p99_ms": round(percentile([r["server_ms"] for r in ok], 99), 2) if ok else None,
        "batcher_p99_ms": round(percentile([r["batcher_ms"] for r in ok], 99), 2) if ok else None,
        "client_lag_p99_ms": round(percentile([r["lag_ms"] for r in records], 99), 2)
        if records
        else None,
        # where the client's p99 and the server's differ: the slowest 1 % of answers, how many
        # opened a new connection and how long opening took (the rest of their time outside the
        # server lies between the client's write and the app's arrival stamp, or on the way back)
        **outside_server(ok),
        "served_top1": round(sum(top1[r["stitch"]] for r in ok) / len(ok), 3) if ok else None,
        "served_gmacs": round(sum(gmacs[r["stitch"]] for r in ok) / len(ok), 4) if ok else None,
        # the same requests' own answers against their labels (512 test images, noisier)
        "answered_correct_pct": round(100 * sum(r["correct"] for r in ok) / len(ok), 2)
        if ok and trained
        else None,
        "stitches": {
            s: sum(r["stitch"] == s for r in ok) for s in sorted({r["stitch"] for r in ok})
        },
    }


class StatusSampler:
    """Polls ``/v1/status`` once a second on a thread, for what the SLO controller worked from
    (slowdown, overhead, calibration, observed throughput, queue bound, last decision); the
    event loop that sends the load is never blocked by it."""

    FIELDS = ("stitch", "slowdown", "overhead_ms", "calibration", "served_rps", "max_queue")

    def __init__(self, url: str, every_s: float = 1.0) -> None:
        import threading

        self.url, self.every_s, self.samples = url, every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StatusSampler:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import httpx

        while not self._stop.wait(self.every_s):
            try:
                st = httpx.get(f"{self.url}/v1/status", timeout=2).json()
            except (httpx.HTTPError, ValueError):
                continue
            row = {"at": time.monotonic(), "load_avg_1min": st.get("load_avg_1min")}
            row.update({k: st.get(k) for k in self.FIELDS})
            row["decision"] = st.get("decision")
            row["loop_lag_ms"] = (st.get("loop_lag_ms") or {}).get("max_1s")
            self.samples.append(row)

    def loop_lag(self, start: float, end: float) -> float | None:
        """The server's event-loop lag over a phase: the largest of its per-second maxima."""
        lags = [r["loop_lag_ms"] for r in self.samples if start <= r["at"] <= end]
        return max((x for x in lags if x is not None), default=None)

    def phase(self, start: float, end: float) -> dict[str, Any] | None:
        """The controller's state over one phase: each figure's min / median / max, the
        stitches it ran, its last decision; ``None`` for a server without an SLO."""
        rows = [r for r in self.samples if start <= r["at"] <= end and r["calibration"] is not None]
        if not rows:
            return None

        def spread(key: str) -> list[float] | None:
            xs = sorted(r[key] for r in rows if r[key] is not None)
            return [xs[0], xs[len(xs) // 2], xs[-1]] if xs else None

        return {
            "samples": len(rows),
            **{k: spread(k) for k in ("slowdown", "overhead_ms", "calibration", "served_rps")},
            "max_queue": spread("max_queue"),
            "load_avg_1min": spread("load_avg_1min"),
            "stitches": sorted({r["stitch"] for r in rows}),
            "last_decision": rows[-1]["decision"],
        }


def set_stitch(server: Server, stitch: str) -> None:
    import httpx

    httpx.put(f"{server.url}/v1/stitch", json={"stitch": stitch}).raise_for_status()


def run_mode(server: Server, schedule, images, scores, seed: int) -> dict[str, Any]:
    """The whole schedule against ``server``; ``scores`` = (top-1, GMACs) per stitch."""
    hog: list[subprocess.Popen] = []
    load: dict[str, float] = {}
    spans: dict[str, list[float]] = {}

    def on_phase(phase: str, when: str) -> None:
        spans.setdefault(phase, []).append(time.monotonic())
        if when == "end":
            load[phase] = os.getloadavg()[0]
        if phase == "contention" and when == "start":
            hog.append(competitor())
        if phase == "contention" and when == "end":
            for p in hog:
                p.kill()
                p.wait()

    try:
        # warm-up outside the measurement: the first requests pay for lazy initialisation
        asyncio.run(drive(server.url, [("warmup", 3.0, schedule[0][2])], images, seed=99))
        load_before = os.getloadavg()[0]
        with StatusSampler(server.url) as sampler:
            records = asyncio.run(drive(server.url, schedule, images, seed=seed, on_phase=on_phase))
    finally:
        for p in hog:
            p.kill()
    phases = {}
    for phase, seconds, rate in schedule:
        rows = [r for r in records if r["phase"] == phase]
        phases[phase] = {
            "rate_rps": rate,
            "seconds": seconds,
            "load_avg_1min_at_end": load.get(phase),
            **summarize(rows, *scores, seconds),
            "controller": sampler.phase(*spans[phase]) if len(spans.get(phase, [])) == 2 else None,
            "server_loop_lag_max_ms": sampler.loop_lag(*spans[phase])
            if len(spans.get(phase, [])) == 2
            else None,
        }
    return {"load_avg_before": load_before, "phases": phases, "records": records}


def probe_best_fixed(server: Server, front, rate: float, slo: float, images, scores, seconds):
    """The most accurate front stitch whose p99 at ``rate`` stays under the SLO with < 1 %
    refused, found by bisection over the front (holding is taken to fall with cost), on a
    fixed server switched with PUT /v1/stitch."""
    probes = []
    lo, hi = 0, len(front) - 1  # front[lo] is taken to hold; the answer lies in [lo, hi]
    asyncio.run(drive(server.url, [("warmup", 2.0, rate)], images, seed=98))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        stitch = str(front[mid].stitch)
        set_stitch(server, stitch)
        s = probe(server, stitch, rate, slo, images, scores, seconds, seed=97)
        probes.append(s)
        print(f"  probe {stitch}: p99 {s['p99_ms']} ms, refused {s['refused_share']:.1%}")
        lo, hi = (mid, hi) if s["holds"] else (lo, mid - 1)
    return str(front[lo].stitch), probes


def slo_capacity(
    server: Server, stitch: str, top: float, slo: float, images, scores, *, seconds: float = 4.0
) -> tuple[float, list[dict[str, Any]]]:
    """The highest open-loop Poisson rate at which ``stitch``, fixed, answers with p99 within
    ``slo`` and < 1 % refused, by five bisection steps over (0, ``top``] (an upper bound: a
    closed-loop capacity; for the cheapest front stitch the smallest anchor's, which is the
    one measured), each a ``seconds`` run of this benchmark's own client."""
    set_stitch(server, stitch)
    lo, hi, probes = 0.0, top, []
    for _ in range(5):
        rate = round((lo + hi) / 2, 1)
        s = probe(server, stitch, rate, slo, images, scores, seconds, seed=96)
        probes.append(s)
        print(f"  {stitch} at {rate} req/s: p99 {s['p99_ms']} ms, refused {s['refused_share']:.1%}")
        lo, hi = (rate, hi) if s["holds"] else (lo, rate)
    return lo, probes


def probe(
    server: Server, stitch: str, rate: float, slo: float, images, scores, seconds, *, seed: int
) -> dict[str, Any]:
    """``stitch``, set on the fixed ``server``, at ``rate`` for ``seconds``: the phase's figures
    and ``holds``, whether it kept p99 within ``slo`` with < 1 % refused."""
    recs = asyncio.run(drive(server.url, [("probe", seconds, rate)], images, seed=seed))
    s = summarize(recs, *scores, seconds)
    holds = s["p99_ms"] is not None and s["p99_ms"] <= slo and s["refused_share"] < 0.01
    return {"stitch": stitch, "rate_rps": rate, "holds": holds, **s}


def measure_capacity(server: Server, stitch: str, max_batch: int, body: bytes) -> float:
    """Images per second ``stitch`` answers with full batches through the whole server (HTTP
    included): a closed loop of 4 × max_batch concurrent clients for 5 s."""
    set_stitch(server, stitch)

    async def loop() -> int:
        done = 0
        stop = time.perf_counter() + 5.0
        client = RawClient(server.url)

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                status, _, _ = await client.post("/v1/predict", body, "image/png")
                done += status == 200

        await asyncio.gather(*(worker() for _ in range(4 * max_batch)))
        client.close()
        return done

    asyncio.run(loop())  # warm-up
    return asyncio.run(loop()) / 5.0


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = result["modes"]
    fig, axes = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    colors = {"adaptive": "C3", "largest": "C0", "smallest": "C2", "best_fixed": "C1"}
    for name, m in modes.items():
        recs = sorted((r for r in m["records"] if r["status"] == 200), key=lambda r: r["t"])
        if not recs:
            continue
        # p99 over 2-second bins
        bins: dict[int, list[float]] = {}
        for r in recs:
            bins.setdefault(int(r["t"] // 2), []).append(r["latency_ms"])
        xs = sorted(bins)
        axes[0].plot(
            [2 * x + 1 for x in xs],
            [percentile(bins[x], 99) for x in xs],
            label=f"{name} p99",
            color=colors.get(name),
        )
    axes[0].axhline(result["slo_ms"], color="k", ls="--", label="SLO")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("p99 latency, ms (2 s bins)")
    axes[0].legend(fontsize=8)
    ad = modes.get("adaptive")
    if ad:
        recs = sorted((r for r in ad["records"] if r["status"] == 200), key=lambda r: r["t"])
        front = sorted({r["stitch"] for r in recs}, key=lambda s: result["top1"][s])
        order = {s: i for i, s in enumerate(front)}
        axes[1].scatter(
            [r["t"] for r in recs], [order.get(r["stitch"], -1) for r in recs], s=2, color="C3"
        )
        axes[1].set_yticks(range(len(front)))
        axes[1].set_yticklabels(front, fontsize=7)
        axes[1].set_ylabel("adaptive: stitch (cheap → accurate)")
    t = 0.0
    for phase, seconds, _ in result["schedule"]:
        for ax in axes:
            ax.axvline(t, color="grey", lw=0.5)
        axes[0].text(t + 0.5, result["slo_ms"] * 1.1, phase, fontsize=8)
        t += seconds
    axes[1].set_xlabel("seconds")
    fig.suptitle(
        f"snnet serve ({result.get('family', 'demo')} family): SLO {result['slo_ms']} ms, "
        f"steady {result['rate_rps']} req/s"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--family",
        choices=("demo", "compute"),
        default="demo",
        help="demo: trained Fashion-MNIST ViTs (accuracy); compute: random-init 112 px ViTs "
        "where compute dominates (latency only)",
    )
    p.add_argument("--run", type=Path, default=None, help="default runs/serve-bench-FAMILY")
    p.add_argument("--slo-ms", type=float, default=100.0)
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="steady rate R (default: the surge 4R midway between the anchors' capacities)",
    )
    p.add_argument("--phase-seconds", "--phase-s", dest="phase_s", type=float, default=30.0)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    p.add_argument("--modes", nargs="+", default=["adaptive", "largest", "smallest", "best_fixed"])
    p.add_argument("--eval-images", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="short phases, for a smoke test")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default results/serve.json (demo), serve-compute.json",
    )
    p.add_argument("--replot", action="store_true", help="redraw the PNG from saved results")
    p.add_argument("--prepare-only", action="store_true", help="build and time the run, then stop")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers in `finally`
    args.run = args.run or HERE.parent / "runs" / f"serve-bench-{args.family}"
    name = "serve.json" if args.family == "demo" else f"serve-{args.family}.json"
    args.out = args.out or HERE / "results" / name
    out_dir = args.run.parent / f"serve-bench-{args.family}-logs"  # raw records: not committed
    if args.replot:
        result = json.loads(args.out.read_text())
        records = json.loads((out_dir / "records.json").read_text())
        for name, m in result["modes"].items():
            m["records"] = records[name]
        plot(result, args.out.with_suffix(".png"))
        return 0
    if args.quick:
        args.phase_s = 6.0
        args.eval_images = args.eval_images or 1000
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    if args.family == "compute":
        run = prepare_compute_run(args.run)
        images = test_images(px=COMPUTE_PX)
    else:
        run = prepare_run(args.run, eval_images=args.eval_images)
        images = test_images()
    if args.prepare_only:
        return 0
    res = Results.load(run / "results.json")
    front = res.pareto("latency_ms", "top1")
    top1 = {str(r.stitch): r.top1 for r in res}
    gmacs = {str(r.stitch): r.gmacs for r in res}
    scores = (top1, gmacs, args.family != "compute")
    largest = str(len(res.network["anchors"]) - 1)

    common = ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    common += ["--threads", str(args.threads)]
    # one fixed server (switched by PUT /v1/stitch) for capacities, probes and the fixed modes:
    # a server start costs tens of seconds on a busy machine
    fixed_server = Server(run, ["--stitch", largest, *common], out_dir / "serve-fixed.log")
    try:
        return run_all(
            args, run, res, front, images, scores, fixed_server, common, out_dir, started
        )
    finally:
        fixed_server.stop()


def run_all(args, run, res, front, images, scores, fixed_server, common, out_dir, started) -> int:
    top1 = scores[0]
    largest, smallest = str(len(res.network["anchors"]) - 1), "0"
    span = front[-1].latency_ms / front[0].latency_ms
    print(f"front by latency: {[str(r.stitch) for r in front]}")
    print(
        f"front batch-1 latency {front[0].latency_ms:.2f} .. {front[-1].latency_ms:.2f} ms "
        f"({span:.1f}×)"
    )
    if args.family == "compute":
        print(f"top-1 here is a {PROXY}: not an accuracy")
    cap = {
        s: measure_capacity(fixed_server, s, args.max_batch, images[0][0])
        for s in (largest, smallest)
    }
    print(
        f"through the server, the largest anchor carries {cap[largest]:.1f} req/s and the "
        f"smallest {cap[smallest]:.1f} ({cap[smallest] / cap[largest]:.2f}×)"
    )
    cheapest = str(front[0].stitch)
    slo_cap, cap_probes = {}, []
    if args.rate is None:
        for s, top in ((largest, cap[largest]), (cheapest, max(cap[smallest], cap[largest]))):
            slo_cap[s], probes = slo_capacity(
                fixed_server, s, top, args.slo_ms, images, scores, seconds=args.phase_s
            )
            cap_probes += probes
        print(
            f"within the SLO, the largest anchor carries {slo_cap[largest]} req/s and the "
            f"cheapest stitch {cheapest} {slo_cap[cheapest]}"
        )
    if args.rate is not None:
        rate = args.rate
    elif slo_cap[cheapest] > slo_cap[largest]:
        # the surge (4R) midway between what the largest and the cheapest hold within the SLO
        rate = round((slo_cap[largest] + slo_cap[cheapest]) / 8, 1)
    else:
        rate = round(max(slo_cap[largest], 1.0) / 4, 1)
        print("  the cheapest holds no more than the largest here: switching cannot add capacity")
    surge_checks = []
    if args.rate is None and slo_cap[cheapest] > slo_cap[largest]:
        # The goal needs a surge that some stitch holds for a whole phase: check that the
        # cheapest does, and lower R by 10 % (at most twice) while it does not.
        while True:
            set_stitch(fixed_server, cheapest)
            check = probe(
                fixed_server, cheapest, 4 * rate, args.slo_ms, images, scores, args.phase_s, seed=95
            )
            surge_checks.append(check)
            print(
                f"  check: {cheapest} at the surge {4 * rate:.1f} req/s: p99 {check['p99_ms']} ms"
            )
            lower = round(0.9 * rate, 1)
            if check["holds"] or len(surge_checks) == 3 or 4 * lower <= slo_cap[largest]:
                break
            rate = lower
    print(f"steady rate {rate} req/s, surge {4 * rate:.1f}")
    schedule = [(ph, args.phase_s, rate * FACTOR[ph]) for ph in PHASES]
    result: dict[str, Any] = {
        "family": args.family,
        "top1_meaning": PROXY if args.family == "compute" else "measured top-1, test set",
        "slo_ms": args.slo_ms,
        "rate_rps": rate,
        "capacity_rps": cap,
        "capacity_ratio": round(cap[smallest] / cap[largest], 2),
        "slo_capacity_rps": slo_cap,
        "slo_capacity_probes": cap_probes,
        "surge_checks": surge_checks,
        "front_latency_ms": [front[0].latency_ms, front[-1].latency_ms],
        "front_latency_span": round(span, 2),
        "schedule": schedule,
        "front": [str(r.stitch) for r in front],
        "top1": top1,
        "machine": machine(),
        "load_avg_start": os.getloadavg(),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "modes": {},
    }
    fixed = {"largest": largest, "smallest": smallest}
    if "best_fixed" in args.modes:
        best, probes = probe_best_fixed(
            fixed_server, front, rate, args.slo_ms, images, scores, args.phase_s
        )
        fixed["best_fixed"] = best
        result["best_fixed_probes"] = probes
        print(f"best fixed stitch at {rate} req/s: {best}")
    for i, mode in enumerate(args.modes):
        if mode == "adaptive":
            margs = ["--slo-ms", str(args.slo_ms), *common]
            print(f"mode {mode}: {' '.join(margs)}", flush=True)
            server = Server(run, margs, out_dir / "serve-adaptive.log")
            try:
                m = run_mode(server, schedule, images, scores, seed=i)
            finally:
                server.stop()
        else:
            margs = ["--stitch", fixed[mode], *common]
            print(f"mode {mode}: {' '.join(margs)}", flush=True)
            set_stitch(fixed_server, fixed[mode])
            m = run_mode(fixed_server, schedule, images, scores, seed=i)
        result["modes"][mode] = {"args": margs, **m}
        for ph, s in m["phases"].items():
            print(
                f"  {ph:13s} {s['throughput_rps']:7.1f} req/s  p50 {s['p50_ms']} ms  "
                f"p99 {s['p99_ms']} ms (server {s['server_p99_ms']}, batcher "
                f"{s['batcher_p99_ms']})  refused {s['refused_share']:.2%}  "
                f"top-1 {s['served_top1']}  GMACs {s['served_gmacs']}  failed {s['failed']}  "
                f"load {s['load_avg_1min_at_end']:.1f}\n    server loop lag max "
                f"{s['server_loop_lag_max_ms']} ms; slowest 1 %: "
                f"{s.get('slowest_mean_ms')} ms, {s.get('slowest_new_connections')} of "
                f"{s.get('slowest_1pct')} on new connections",
                flush=True,
            )
    result["machine_after"] = machine()
    result["load_avg_end"] = os.getloadavg()
    result["wall_s"] = round(time.monotonic() - started, 1)
    slim = {**result, "modes": {k: {**v, "records": None} for k, v in result["modes"].items()}}
    plot(result, args.out.with_suffix(".png"))
    atomic_write(args.out, lambda f: json.dump(slim, f, indent=2))
    atomic_write(
        out_dir / "records.json",
        lambda f: json.dump({k: v["records"] for k, v in result["modes"].items()}, f),
    )
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
