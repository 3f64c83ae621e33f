"""Where a request's time goes in `snnet serve`: each stage's CPU time, and the server's CPU per
request over loopback.

Stages (in this process, one thread, medians of ``--repeats`` runs of ``--n`` requests; a PNG of
the family's input size per request):

- ``http_parse``: the request's bytes through the HTTP parser uvicorn uses (httptools, and h11
  for comparison);
- ``app``: the whole ASGI app for one request, called in-process with the batcher running
  (framework, body, decoding, preprocessing, batching, the network, the answer's JSON), in waves
  of ``max_batch`` concurrent requests so that batches fill as under load;
- ``decode`` (PIL), ``pixels`` (resize/crop to uint8), ``network`` (per image, a batch of
  ``max_batch`` on the running stitch), ``json`` (the answer encoded): each alone;
- ``framework``: ``app`` less the stages above (routing, middleware, request and response
  objects, the batcher's bookkeeping, the event loop);
- ``multipart_extra``: what the same image costs more sent as ``multipart/form-data``;
- ``thread_handoff_wall``: the wall time of handing a no-op to a worker thread and back, what
  each batch pays to reach the worker thread (the GIL changes hands twice).

Then the server as a user runs it (``snnet serve RUN``, or ``--server-args``), driven over
loopback by a closed loop of ``--connections`` keep-alive connections pinned to core 0
(``taskset -c 0``) for ``--seconds``: answers per second, the client's p50/p99, and the server's
CPU time per answer (all its processes, from /proc).

Run: python benchmarks/bench_request_path.py RUN [--out results/request_path.json] [--label before]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(SRC))


def png_of(size: tuple[int, int, int], seed: int = 0) -> bytes:
    import numpy as np
    from PIL import Image

    c, h, w = size
    rng = np.random.default_rng(seed)
    shape = (h, w) if c == 1 else (h, w, 3)
    img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), "L" if c == 1 else "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def per_call_us(fn, n: int, repeats: int) -> float:
    """Median over ``repeats`` of the CPU time (µs) per call of ``fn`` over ``n`` calls."""
    fn()
    runs = []
    for _ in range(repeats):
        t = time.process_time()
        for _ in range(n):
            fn()
        runs.append((time.process_time() - t) / n * 1e6)
    return round(statistics.median(runs), 1)


def raw_request(body: bytes) -> bytes:
    head = (
        "POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def http_parse_us(body: bytes, n: int, repeats: int) -> dict[str, float]:
    out = {}
    data = raw_request(body)
    try:
        import httptools

        class Sink:
            def on_body(self, b: bytes) -> None: ...

        def httptools_parse() -> None:
            httptools.HttpRequestParser(Sink()).feed_data(data)

        out["httptools"] = per_call_us(httptools_parse, n, repeats)
    except ImportError:
        pass
    import h11

    def h11_parse() -> None:
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(data)
        while conn.next_event() not in (h11.NEED_DATA, h11.PAUSED):
            pass

    out["h11"] = per_call_us(h11_parse, n, repeats)
    return out


def stages(run: Path, *, n: int, repeats: int, max_batch: int) -> dict[str, Any]:
    """Each stage's CPU µs per request (see the module's docstring)."""
    from snnet.serve.app import answer, create_app
    from snnet.serve.backend import load_backend
    from snnet.serve.executor import Prediction
    from snnet.serve.images import decode_image
    from snnet.serve.settings import ServeSettings

    backend = load_backend(run, threads=1)
    size = tuple(backend.preprocess_json()["size"])
    size = (backend.preprocess_json()["channels"], *size)
    body = png_of(size)
    settings = ServeSettings(slo_ms=50, max_batch=max_batch)
    stitch = backend.front[-1].stitch
    backend.prepare([stitch], max_batch=max_batch)  # as the server runs it (traced)
    img = decode_image(body, max_pixels=settings.max_pixels)
    px = backend.pixels(img)
    batch = [px] * max_batch
    probs = backend.run(batch, stitch)
    preds = [Prediction(probs[0], stitch, max_batch, 1.0, 1.0)]
    encode = _encoder()
    out: dict[str, Any] = {
        "http_parse": http_parse_us(body, n, repeats),
        "decode": per_call_us(lambda: decode_image(body, max_pixels=1 << 30), n, repeats),
        "pixels": per_call_us(lambda: backend.pixels(img), n, repeats),
        "network": round(
            per_call_us(lambda: backend.run(batch, stitch), max(1, n // 8), repeats) / max_batch,
            1,
        ),
        "json": per_call_us(lambda: encode(answer(backend, preds, 5, lambda: 1.0)), n, repeats),
    }
    app = create_app(backend, settings)
    out["app"] = asyncio.run(_app_us(app, body, n=n, repeats=repeats, wave=max_batch))
    out["framework"] = round(
        out["app"] - out["decode"] - out["pixels"] - out["network"] - out["json"], 1
    )
    boundary = "snnetbenchboundary"
    multipart = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="a.png"'
            f"\r\nContent-Type: image/png\r\n\r\n"
        ).encode()
        + body
        + f"\r\n--{boundary}--\r\n".encode()
    )
    ctype = f"multipart/form-data; boundary={boundary}"
    app = create_app(backend, settings)
    with_form = asyncio.run(
        _app_us(app, multipart, n=n, repeats=repeats, wave=max_batch, ctype=ctype)
    )
    out["multipart_extra"] = round(with_form - out["app"], 1)
    out["thread_handoff_wall"] = asyncio.run(_handoff_us(n))
    out["body_bytes"] = len(body)
    return out


def _encoder():
    """What the app encodes its answers with: orjson where the app uses it, else json."""
    try:
        from snnet.serve.predict import orjson

        return orjson.dumps
    except ImportError:
        return lambda obj: json.dumps(obj).encode()


async def _handoff_us(n: int) -> float:
    """Median wall time (µs) of handing a no-op to a worker thread and awaiting it: what each
    batch pays to reach the worker thread and come back (the GIL changes hands twice)."""
    from concurrent.futures import ThreadPoolExecutor

    loop = asyncio.get_running_loop()
    times = []
    with ThreadPoolExecutor(1) as pool:
        for _ in range(n):
            t = time.perf_counter()
            await loop.run_in_executor(pool, int)
            times.append((time.perf_counter() - t) * 1e6)
    return round(statistics.median(times), 1)


async def _app_us(
    app, body: bytes, *, n: int, repeats: int, wave: int, ctype: str = "image/png"
) -> float:
    """CPU µs per request of the whole ASGI app, requests sent in waves of ``wave``."""
    scope_base = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/predict",
        "raw_path": b"/v1/predict",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", ctype.encode()),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }

    async def one() -> int:
        status = []

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(dict(scope_base, headers=list(scope_base["headers"])), receive, send)
        return status[0]

    async with app.router.lifespan_context(app):
        for _ in range(3):  # warm-up
            await asyncio.gather(*(one() for _ in range(wave)))
        runs = []
        for _ in range(repeats):
            t = time.process_time()
            codes = []
            for _ in range(max(1, n // wave)):
                codes += await asyncio.gather(*(one() for _ in range(wave)))
            runs.append((time.process_time() - t) / len(codes) * 1e6)
            if set(codes) != {200}:
                raise RuntimeError(f"the app answered {sorted(set(codes))}")
    return round(statistics.median(runs), 1)


# -- the server over loopback -----------------------------------------------------------------------
CLIENT = r"""
import asyncio, json, sys, time
port, conns, seconds, path = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
body = open(path, "rb").read()
head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(body)}\r\n\r\n").encode()
lat, codes, server = [], {}, []
async def worker(stop):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    while time.perf_counter() < stop:
        t = time.perf_counter()
        w.write(head + body)
        status, n = int((await r.readline()).split()[1]), 0
        while (line := await r.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode().partition(":")
            if k.lower() == "content-length":
                n = int(v)
        data = await r.readexactly(n)
        lat.append((time.perf_counter() - t) * 1e3)
        codes[status] = codes.get(status, 0) + 1
        if status == 200:
            server.append(json.loads(data)["latency_ms"])
    w.close()
async def main():
    stop = time.perf_counter() + seconds
    await asyncio.gather(*(worker(stop) for _ in range(conns)))
asyncio.run(main())
lat.sort(); server.sort()
q = lambda xs, p: xs[min(len(xs) - 1, int(len(xs) * p))] if xs else None
print(json.dumps({"answers_per_s": round(codes.get(200, 0) / seconds, 1), "codes": codes,
                  "client_p50_ms": q(lat, .5), "client_p99_ms": q(lat, .99),
                  "server_p99_ms": q(server, .99)}))
"""


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its children, from /proc."""
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return sum(p.cpu_times().user + p.cpu_times().system for p in procs)


def over_loopback(run: Path, args: list[str], *, conns: int, seconds: float) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from bench_serve import Server  # the server as a user runs it, on a free port
    from snnet.serve.backend import load_backend

    backend = load_backend(run, threads=1)
    size = (backend.preprocess_json()["channels"], *backend.preprocess_json()["size"])
    body_path = Path("/tmp") / f"snnet-bench-{os.getpid()}.png"
    body_path.write_bytes(png_of(size))
    log = Path("/tmp") / f"snnet-bench-{os.getpid()}.log"
    server = Server(run, args, log)
    try:
        client = [sys.executable, "-c", CLIENT, str(server.port), str(conns)]
        warm = subprocess.run(
            ["taskset", "-c", "0", *client, "3", str(body_path)], capture_output=True, text=True
        )
        if warm.returncode:
            raise RuntimeError(warm.stderr)
        cpu0 = tree_cpu_s(server.proc.pid)
        done = subprocess.run(
            ["taskset", "-c", "0", *client, str(seconds), str(body_path)],
            capture_output=True,
            text=True,
        )
        cpu = tree_cpu_s(server.proc.pid) - cpu0
    finally:
        server.stop()
        body_path.unlink(missing_ok=True)
    out = json.loads(done.stdout)
    answers = max(1, out["codes"].get("200", out["codes"].get(200, 0)))
    out["server_cpu_ms_per_answer"] = round(cpu / answers * 1e3, 3)
    out["server_args"] = args
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--label", default="current", help="the key these figures are stored under")
    p.add_argument("--out", type=Path, default=HERE / "results" / "request_path.json")
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--server-args", default="--slo-ms 50", help="snnet serve's options")
    p.add_argument("--no-server", action="store_true", help="the in-process stages only")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result: dict[str, Any] = {"load_avg_start": os.getloadavg()}
    result["stages_us"] = stages(args.run, n=args.n, repeats=args.repeats, max_batch=args.max_batch)
    print("CPU µs per request:", json.dumps(result["stages_us"]), flush=True)
    if not args.no_server:
        result["loopback"] = over_loopback(
            args.run, args.server_args.split(), conns=args.connections, seconds=args.seconds
        )
        print("over loopback:", json.dumps(result["loopback"]), flush=True)
    result["load_avg_end"] = os.getloadavg()
    print(f"load average {result['load_avg_start']} -> {result['load_avg_end']}")
    from snnet.files import atomic_write

    saved = json.loads(args.out.read_text()) if args.out.exists() else {}
    saved[args.label] = result
    atomic_write(args.out, lambda f: json.dump(saved, f, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
