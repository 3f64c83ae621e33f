"""`snnet serve` over real HTTP: a server subprocess on a free loopback port, the demo anchors
stitched into a network saved with ``snnet.save``, and a results file with costs, accuracy and
latency filled in. Nothing here asserts a duration (the CPUs are shared and noisy): overload is
made certain by a long batching window, not by racing the clock."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import snnet
from snnet.measure.results import FIELDS, Results
from snnet.task import Task

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

SRC = Path(__file__).resolve().parents[1] / "src"
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


# -- helpers (also used by test_serve_page.py) -------------------------------------------------------
def make_run(
    path: Path,
    *,
    latency: bool = True,
    front: Sequence[str] | None = None,
    task: Task | None = None,
) -> Path:
    """The demo family stitched (71 stitches; with a dense ``task``, one head shared by every
    stitch), saved as a run with a results file. The task's metric improves and latency grows
    with GMACs (AbsRel falls), so the latency/metric front is every stitch, or only ``front``
    (the others score below the smallest anchor: a server traces the front only, so it starts
    sooner); the stitching layers keep their random init (outputs only need to be
    deterministic here)."""
    anchors, options = snnet.resolve_anchors("fmnist")
    torch.manual_seed(0)
    net = snnet.SNNet(anchors, task=task, **options).eval()
    snnet.save(net, path / "model")
    res = Results.for_network(net)
    metric = net.task.metric
    for r in res:
        extra = {"latency_ms": 0.3 + 300 * r.gmacs} if latency else {}
        quality = 80 + 800 * r.gmacs if front is None or str(r.stitch) in front else 50.0
        value = quality if FIELDS[metric].better == "higher" else 1 / quality
        res.update(r.stitch, **{metric: value}, **extra)
    res.save(path / "results.json")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``snnet serve RUN ARGS`` in a subprocess; ``url`` once ready."""

    def __init__(self, run: Path, *args: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "snnet", "serve", str(run), "--port", str(self.port), *args],
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server not ready within 180 s:\n{log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def png(seed: int = 0, size: tuple[int, int] = (28, 28), mode: str = "L") -> bytes:
    rng = np.random.default_rng(seed)
    shape = size[::-1] if mode == "L" else (*size[::-1], 3)
    img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("serve") / "run")


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    s = Server(
        run_dir,
        "--slo-ms",
        "200",
        "--max-body-mb",
        "1",
        "--max-images",
        "4",
        "--api-key",
        KEY,
        log=tmp_path_factory.mktemp("log") / "server.log",
    )
    yield s
    s.stop()


def predict(url: str, body: bytes, ctype: str = "image/png", **params) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/predict",
        content=body,
        headers={"content-type": ctype, **AUTH},
        params=params,
        timeout=60,
    )


# -- predictions --------------------------------------------------------------------------------
def test_predictions_equal_the_network_for_the_stitch_it_reports(server, run_dir):
    from snnet.serialize import read_config
    from snnet.serve.model import preprocessing

    net = snnet.load(run_dir / "model").eval()
    prep = preprocessing(net, read_config(run_dir / "model"))
    images = [png(i) for i in range(3)]
    cases = [
        predict(server.url, images[0], top_k=10),
        predict(server.url, images[0], stitch="0:5-1:6", top_k=10),
        httpx.post(
            f"{server.url}/v1/predict",
            files=[("images", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)],
            data={"top_k": "10"},
            headers=AUTH,
            timeout=60,
        ),
    ]
    assert cases[1].json()["stitch"] == "0:5-1:6"
    for r in cases:
        assert r.status_code == 200, r.text
        body = r.json()
        for img, pred in zip(images, body["predictions"], strict=False):
            x = prep(Image.open(io.BytesIO(img)))[None]
            with torch.inference_mode():
                want = net(x, stitch=pred["stitch"]).softmax(-1)[0]
            got = torch.zeros(10)
            for t in pred["top"]:
                got[t["index"]] = t["prob"]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
            assert pred["top"][0]["label"] in snnet.data.FASHION_MNIST_CLASSES
    assert len(cases[2].json()["predictions"]) == 3


def _metric_sum(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_latency_counts_from_arrival_so_a_slow_body_shows(server):
    """The server's latency starts when the request reaches the app, before its body is read:
    a client that takes 1 s to send the body sees (and the SLO controller and /metrics count)
    at least 1 s, not only the time from queue entry to the end of compute."""
    get = lambda path: httpx.get(f"{server.url}{path}", headers=AUTH, timeout=60)  # noqa: E731
    before = _metric_sum(get("/metrics").text, "snnet_request_latency_seconds_sum")
    body = png(3)
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(head.encode())
        time.sleep(1.0)  # the headers arrived; the body comes a second later
        sock.sendall(body)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    status, _, payload = raw.partition(b"\r\n\r\n")
    assert status.split()[1] == b"200", raw
    import json

    answer = json.loads(payload)
    assert answer["latency_ms"] >= 1000
    pred = answer["predictions"][0]
    assert pred["queue_ms"] + pred["compute_ms"] < answer["latency_ms"] - 900  # outside the batcher
    after = _metric_sum(get("/metrics").text, "snnet_request_latency_seconds_sum")
    assert after - before >= 1.0


def test_a_budget_caps_the_stitch(server, run_dir):
    res = Results.load(run_dir / "results.json")
    r = predict(server.url, png(), max_gmacs=0.002)
    assert r.status_code == 200, r.text
    assert res[r.json()["stitch"]].gmacs <= 0.002


# -- bad input -------------------------------------------------------------------------------------
def _truncated() -> bytes:
    big = png(1, (200, 200))
    return big[: len(big) // 2]


def _huge() -> bytes:  # 5000×5000 zeros compress to a few KB: the body is small, the image is not
    buf = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buf, format="PNG")
    return buf.getvalue()


BAD = {
    "not_an_image": lambda url: predict(url, b"this is not an image at all"),
    "truncated_image": lambda url: predict(url, _truncated()),
    "image_too_large": lambda url: predict(url, _huge()),
    "empty_image": lambda url: predict(url, b""),
    "unsupported_media_type": lambda url: predict(url, png(), "text/plain"),
    "unknown_stitch": lambda url: predict(url, png(), stitch="7:99-3:1"),
    "impossible_budget": lambda url: predict(url, png(), max_gmacs=1e-9),
    "bad_parameter": lambda url: predict(url, png(), max_latency_ms="fast"),
    "too_many_images": lambda url: httpx.post(
        f"{url}/v1/predict",
        files=[("images", (f"{i}.png", png(i), "image/png")) for i in range(6)],
        headers=AUTH,
        timeout=60,
    ),
    "body_too_large": lambda url: predict(url, os.urandom(2 * 2**20)),
    "no_image": lambda url: httpx.post(
        f"{url}/v1/predict", files={"note": (None, "hi")}, headers=AUTH, timeout=60
    ),
    "unauthorized": lambda url: httpx.post(
        f"{url}/v1/predict", content=png(), headers={"content-type": "image/png"}, timeout=60
    ),
    "not_found": lambda url: httpx.get(f"{url}/v1/nothing", headers=AUTH, timeout=60),
}


@pytest.mark.parametrize("code", list(BAD))
def test_bad_input_gets_a_json_4xx_and_the_server_keeps_serving(server, code):
    r = BAD[code](server.url)
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["message"]
    ok = predict(server.url, png(7))
    assert ok.status_code == 200 and ok.json()["predictions"][0]["top"]


def test_off_loopback_needs_an_api_key(run_dir):
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    env.pop("SNNET_API_KEY", None)
    out = subprocess.run(
        [sys.executable, "-m", "snnet", "serve", str(run_dir), "--host", "0.0.0.0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "--api-key" in out.stderr


# -- the other endpoints -------------------------------------------------------------------------
def test_endpoints_describe_the_front_status_health_and_metrics(server):
    get = lambda path: httpx.get(f"{server.url}{path}", headers=AUTH, timeout=60)  # noqa: E731
    predict(server.url, png())
    stitches = get("/v1/stitches").json()
    assert len(stitches["stitches"]) == 71 and len(stitches["front"]) == 71
    assert stitches["classes"][0] == "t-shirt_top"
    status = get("/v1/status").json()
    assert status["mode"] == "slo" and status["slo_ms"] == 200
    assert status["stitch"] in {r["stitch"] for r in stitches["front"]}
    assert status["queue_depth"] == 0 and sum(status["requests_per_stitch"].values()) >= 1
    assert status["recent"]["p99_ms"] > 0
    assert get("/healthz").json() == {"status": "ok"}
    assert get("/readyz").status_code == 200
    metrics = get("/metrics").text
    for name in (
        "snnet_request_latency_seconds_bucket",
        "snnet_queue_depth",
        "snnet_requests_total",
        "snnet_stitch_switches_total",
        "snnet_refused",
        "snnet_event_loop_lag_seconds_bucket",
    ):
        assert name in metrics
    assert set(status["loop_lag_ms"]) == {"max_1s", "max_10s"}
    assert httpx.get(f"{server.url}/metrics").status_code == 401  # the key guards metrics too
    assert "/v1/predict" in get("/openapi.json").json()["paths"]
    assert get("/docs").status_code == 200
    r = httpx.put(f"{server.url}/v1/stitch", json={"stitch": "0"}, headers=AUTH)
    assert r.status_code == 409  # the SLO controller owns the stitch


# -- overload and shutdown ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_batches(run_dir, tmp_path_factory):
    """Batches wait 3 s to fill, the queue takes 4 images: a burst overflows it for certain."""
    s = Server(
        run_dir,
        "--stitch",
        "2",
        "--max-batch",
        "64",
        "--max-wait-ms",
        "3000",
        "--max-queue",
        "4",
        "--no-trace",  # tracing is not what this server tests
        log=tmp_path_factory.mktemp("log") / "slow.log",
    )
    yield s
    s.stop()


def _burst(url: str, n: int) -> list[httpx.Response]:
    with ThreadPoolExecutor(n) as pool:
        return list(
            pool.map(
                lambda i: httpx.post(
                    f"{url}/v1/predict",
                    content=png(i),
                    headers={"content-type": "image/png"},
                    timeout=120,
                ),
                range(n),
            )
        )


@pytest.mark.slow
def test_overload_is_refused_at_once_and_no_accepted_request_is_lost(slow_batches):
    answers = _burst(slow_batches.url, 12)
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 503}
    assert 1 <= codes.count(200) <= 4 and codes.count(503) >= 8 - 4
    for r in answers:
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "overloaded" and int(r.headers["retry-after"]) >= 1
        else:
            assert r.json()["stitch"] == "2"
    status = httpx.get(f"{slow_batches.url}/v1/status").json()
    assert status["refused"]["overload"] == codes.count(503)
    assert sum(status["requests_per_stitch"].values()) == codes.count(200)
    metrics = httpx.get(f"{slow_batches.url}/metrics").text
    assert f'snnet_refused_total{{reason="overload"}} {float(codes.count(503))}' in metrics
    # a fixed server switches by request: a value swap, seen by the next batch
    r = httpx.put(f"{slow_batches.url}/v1/stitch", json={"stitch": "1"})
    assert r.json() == {"stitch": "1"}
    assert _burst(slow_batches.url, 1)[0].json()["stitch"] == "1"


@pytest.mark.slow
def test_sigterm_answers_every_accepted_request_then_exits(slow_batches):
    with ThreadPoolExecutor(3) as pool:
        futures = [
            pool.submit(
                httpx.post,
                f"{slow_batches.url}/v1/predict",
                content=png(i),
                headers={"content-type": "image/png"},
                timeout=120,
            )
            for i in range(3)
        ]
        deadline = time.monotonic() + 60
        while httpx.get(f"{slow_batches.url}/v1/status").json()["queue_depth"] < 3:
            assert time.monotonic() < deadline, "requests never queued"
            time.sleep(0.05)
        slow_batches.proc.send_signal(signal.SIGTERM)  # while the batch still waits to fill
        answers = [f.result() for f in futures]
    assert [r.status_code for r in answers] == [200] * 3
    # uvicorn re-raises the signal once shut down, so supervisors see how it ended
    assert slow_batches.proc.wait(60) in (0, -signal.SIGTERM)
    log = slow_batches.log.read_text()
    assert "Application shutdown complete" in log and "Traceback" not in log


def test_the_gate_refuses_before_reading_and_counts_predictions_in_flight():

    from snnet.serve.app import Gate
    from snnet.serve.errors import ServeError

    state = {"inflight": 0}
    seen = []

    async def inner(scope, receive, send):
        seen.append((scope["path"], state["inflight"]))

    full = [False]
    refusal = ServeError(503, "overloaded", "busy", retry_after=1)
    gate = Gate(inner, api_key="k", admit=lambda: refusal if full[0] else None, state=state)

    async def call(path, auth=b"Bearer k"):
        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "path": path, "headers": [(b"authorization", auth)]}
        await gate(scope, None, send)
        return sent[0]["status"] if sent else None

    assert asyncio.run(call("/v1/predict")) is None and seen[-1] == ("/v1/predict", 1)
    assert state["inflight"] == 0
    assert asyncio.run(call("/v1/predict", b"Bearer nope")) == 401
    full[0] = True
    assert asyncio.run(call("/v1/predict")) == 503 and len(seen) == 1  # never reached the app
    assert asyncio.run(call("/v1/status")) is None and seen[-1] == ("/v1/status", 0)
    assert asyncio.run(call("/")) is None  # the page needs no key
