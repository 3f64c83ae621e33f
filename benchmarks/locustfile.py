"""Locust load for `snnet serve`, driven by ``bench_load.py``: FastHttpUser, one PNG per request,
a constant throughput per user, and the phases' rates set by the number of users.

Set by the environment: ``SNNET_PHASES`` (``name:seconds:rate,...``), ``SNNET_PER_USER_RPS``
(requests per second per user), ``SNNET_PNGS`` (a folder of PNGs, sent in turn) and
``SNNET_RECORDS`` (where each request's record is written as JSON when the test stops: when it
was sent, its phase, status, latency at the client, and the server's own latency, stitch and
batcher time (queue + compute) from the answer).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from pathlib import Path

import gevent
from locust import FastHttpUser, LoadTestShape, events, task

PHASES = [
    (name, float(seconds), float(rate))
    for name, seconds, rate in (p.split(":") for p in os.environ["SNNET_PHASES"].split(","))
]
PER_USER_RPS = float(os.environ.get("SNNET_PER_USER_RPS", "2"))
PNGS = [p.read_bytes() for p in sorted(Path(os.environ["SNNET_PNGS"]).glob("*.png"))]
HEADERS = {"content-type": "image/png"}
RECORDS: list[list] = []
CLOCK = {"start": None}
NEXT_IMAGE = itertools.count()


def phase_at(t: float) -> str:
    for name, seconds, _ in PHASES:
        if t < seconds:
            return name
        t -= seconds
    return PHASES[-1][0]


@events.test_start.add_listener
def _start(**_) -> None:
    CLOCK["start"] = time.monotonic()


@events.test_stop.add_listener
def _stop(**_) -> None:
    Path(os.environ["SNNET_RECORDS"]).write_text(json.dumps(RECORDS))


def paced(user: Client) -> float:
    """A constant throughput per user, each on its own schedule from its first request:
    locust's ``constant_throughput`` paces every user from its start, so the users of a phase,
    started together, would send together, in clumps of every user at once."""
    user.next_at += 1.0 / PER_USER_RPS
    return max(0.0, user.next_at - time.monotonic())


class Client(FastHttpUser):
    wait_time = paced

    def on_start(self) -> None:
        gevent.sleep(random.random() / PER_USER_RPS)  # a random phase within one period
        self.next_at = time.monotonic()

    @task
    def predict(self) -> None:
        body = PNGS[next(NEXT_IMAGE) % len(PNGS)]
        sent = time.monotonic()
        t = sent - CLOCK["start"]
        with self.client.post(
            "/v1/predict", data=body, headers=HEADERS, catch_response=True, name="predict"
        ) as r:
            client_ms = (time.monotonic() - sent) * 1e3
            server_ms = stitch = batcher_ms = None
            if r.status_code == 200:
                answer = json.loads(r.content)
                server_ms, stitch = answer["latency_ms"], answer["stitch"]
                pred = answer["predictions"][0]
                batcher_ms = pred["queue_ms"] + pred["compute_ms"]
            r.success()  # refusals are results here, not errors of the load tool
        RECORDS.append(
            [round(t, 4), phase_at(t), r.status_code, client_ms, server_ms, stitch, batcher_ms]
        )


class Phases(LoadTestShape):
    """Each phase's rate as users at ``PER_USER_RPS`` each, started (or stopped) at once."""

    def tick(self):
        t = self.get_run_time()
        for _, seconds, rate in PHASES:
            if t < seconds:
                return max(1, round(rate / PER_USER_RPS)), 10_000
            t -= seconds
        return None
