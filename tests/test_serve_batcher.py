"""The batcher of one replica, in process: admission, the queue bound, relief batches, the
interpreter it tunes and what ``/v1/status`` reports. Clocks are fake where time matters."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest
import torch

from test_serve import make_run

pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("batcher") / "run")


def test_a_latency_budget_counts_todays_speed(run_dir):
    from snnet.serve.batcher import Batcher
    from snnet.serve.errors import ServeError
    from snnet.serve.model import ServedModel
    from snnet.serve.settings import ServeSettings

    model = ServedModel.load(run_dir)
    batch_ms = {r.stitch: 8 * r.latency_ms for r in model.front}
    batcher = Batcher(model, ServeSettings(slo_ms=200, trace=False), batch_ms=batch_ms)
    fast = batcher.resolve(max_latency_ms=2.0).cap
    assert fast.latency_ms <= 2.0
    batcher.ctrl.slowdown = 2.0  # the machine got twice as slow as the results say
    slow = batcher.resolve(max_latency_ms=2.0).cap
    assert slow.latency_ms <= 1.0 and slow.top1 < fast.top1
    with pytest.raises(ServeError, match="cheapest") as e:
        batcher.resolve(max_latency_ms=0.1)
    assert e.value.status == 422


def test_a_started_batcher_tunes_the_interpreter_and_reports_a_blocked_event_loop(run_dir):
    # A full garbage-collector pass over torch, the network and the web stack holds the GIL
    # while the loop reads no request, and no latency counts it; and the inference thread
    # waits up to the switch interval for the GIL after every call into torch.
    import gc
    import sys

    from snnet.serve.batcher import Batcher
    from snnet.serve.executor import SWITCH_INTERVAL_S
    from snnet.serve.model import ServedModel
    from snnet.serve.settings import ServeSettings

    async def scenario() -> dict:
        b = Batcher(ServedModel.load(run_dir), ServeSettings(trace=False))
        await b.start()
        assert gc.get_freeze_count() > 0  # what was loaded is out of the collector's passes
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)
        await asyncio.sleep(0.05)
        time.sleep(0.15)  # something holds the event loop
        await asyncio.sleep(0.05)
        lag = b.status()["loop_lag_ms"]
        await b.drain()
        return lag

    interval = sys.getswitchinterval()
    try:
        lag = asyncio.run(scenario())
    finally:
        gc.unfreeze()
        sys.setswitchinterval(interval)
    assert 140 <= lag["max_1s"] <= lag["max_10s"]


def test_the_queue_bound_leaves_room_for_the_time_outside_the_batcher(run_dir):
    from snnet.serve.batcher import Batcher
    from snnet.serve.model import ServedModel
    from snnet.serve.settings import ServeSettings

    model = ServedModel.load(run_dir)
    batch_ms = {r.stitch: 8 * r.latency_ms for r in model.front}
    settings = ServeSettings(slo_ms=200, max_batch=8, max_wait_ms=5, trace=False)
    b = Batcher(model, settings, batch_ms=batch_ms)
    rps = b.ctrl.capacity(0)  # nothing observed yet: the table's full-batch rate
    assert b.max_queue() == max(8, math.floor(rps * (200 - 5) / 1e3))
    b.ctrl.overhead_ms = 100.0  # requests spend 100 ms outside the batcher
    assert b.max_queue() == max(8, math.floor(rps * (200 - 5 - 100) / 1e3))


def _slo_batcher(run_dir, ms_per_rank: float, now: list[float], hooks=None):
    """A batcher with an SLO of 100 ms on a fake clock (``now[0]``), whose front stitches take
    ``ms_per_rank`` × their rank on the front (1, 2, ...) for a full batch of 8."""
    from snnet.serve.batcher import Batcher
    from snnet.serve.model import ServedModel
    from snnet.serve.settings import ServeSettings

    model = ServedModel.load(run_dir)
    batch_ms = {r.stitch: ms_per_rank * (k + 1) for k, r in enumerate(model.front)}
    settings = ServeSettings(slo_ms=100, max_batch=8, max_wait_ms=5, trace=False)
    return Batcher(model, settings, hooks=hooks, batch_ms=batch_ms, clock=lambda: now[0])


def test_the_queue_bound_follows_the_throughput_observed(run_dir):
    """The bound drains at the rate the server was seen to clear requests, scaled to the
    cheapest stitch (whole full batches at the table's speed would refuse part of a surge
    the cheapest stitch carries)."""
    t = 4.0  # every stitch: a full batch of 8 in 4 ms × its rank on the front
    now = [0.0]
    b = _slo_batcher(run_dir, t, now)
    ctrl = b.ctrl
    ctrl._switch(0, 0.0)  # on the cheapest stitch
    whole = 8 * math.floor((100 - 5 - t) / t)  # whole full batches at the table's speed
    for k in range(20):  # the cheapest clears 8 images every 2 ms: twice the table's speed
        ctrl.observe_batch(ctrl.front[0].stitch, 8, t / 2, now=0.01 * k)
    now[0] = 0.2
    assert ctrl.served_rps(now[0]) == pytest.approx(8 / (t / 2) * 1e3)
    assert b.max_queue() == math.floor(8 / (t / 2) * 1e3 * 0.095) > whole
    now[0] = 0.2 + ctrl.policy.windows.latency_s + 1  # observations age out: back to the table
    assert b.max_queue() == math.floor(ctrl.capacity(0) * 0.095)
    # a light load: batches of one on the third stitch, at the speed the table now expects;
    # a backlog would run in full batches of the cheapest, so the bound counts at that rate
    ctrl._switch(2, now[0])
    for k in range(20):
        ctrl.observe_batch(ctrl.front[2].stitch, 1, ctrl.batch_time(2, 1), now=now[0] + 0.01 * k)
    now[0] += 0.3
    assert ctrl.served_rps(now[0]) == pytest.approx(ctrl.capacity(0), rel=0.02)


def test_status_reports_the_p99_the_controller_acts_on(run_dir):
    """One percentile: /v1/status's p99 over a window is the SLO controller's over the same
    requests (nearest rank)."""
    import random

    from snnet.serve.executor import Prediction

    now = [10.0]
    b = _slo_batcher(run_dir, 1.0, now)
    rng = random.Random(0)
    for k in range(57):
        now[0] = 10.0 + k * 0.01
        latency_ms = rng.uniform(1.0, 9.0)
        pred = Prediction(None, b.stitch, 1, 0.0, 1.0)
        b.finish([pred], arrived=now[0] - latency_ms / 1e3)
    p99 = b.ctrl.observed_p99(now[0])
    assert b.recent()["p99_ms"] == p99 == b.status()["recent"]["p99_ms"]
    assert p99 in [ms for _, ms in b._recent.items()]  # one of the latencies, not between


def test_a_batch_that_waited_too_long_runs_a_cheaper_stitch_and_the_running_one_stays(run_dir):
    """Relief batches, as the batcher asks for them: the oldest request's wait decides."""
    from snnet.serve.executor import Hooks, Item
    from snnet.serve.want import Want

    class Switches(Hooks):
        def __init__(self):
            self.seen = []

        def switched(self, old, new):
            self.seen.append((old, new))

    now = [10.0]
    hooks = Switches()
    b = _slo_batcher(run_dir, 1.0, now, hooks)  # full batches of 1 to 71 ms along the front
    ctrl = b.ctrl
    ctrl._switch(len(ctrl.front) - 1, 0.0)
    running, switches = b.stitch, ctrl.switches

    def batch(waited_ms: float) -> list:
        return [Item(torch.zeros(1, 28, 28), Want(), now[0] - waited_ms / 1e3)] * 8

    assert b._choose(batch(1.0)) == running
    hooks.seen.clear()  # (the switch to the top, if there was one)
    relief = b._choose(batch(80.0))  # 80 ms waited: 5 ms left before 0.85 × SLO
    assert ctrl.batch_time(relief, 8) <= 5.0 < ctrl.batch_time(running, 8)
    assert b.stitch == running and hooks.seen == []  # a relief batch is no switch
    assert b.status()["relief_batches"] == 1 and b.status()["switches"] == switches


def test_the_requests_in_flight_are_bounded_by_what_the_server_answers_in_time(run_dir):
    """Little's law: with an SLO the server holds no more predictions than it answered over the
    last second × 0.5 × SLO (never fewer than two batches, never more than the queue plus two
    batches), so a backlog in reading and decoding, unseen by the queue bound, is refused."""
    from snnet.serve.admission import inflight_limit
    from snnet.serve.executor import Prediction
    from snnet.serve.settings import ServeSettings

    s = ServeSettings(slo_ms=100, max_batch=8)
    assert inflight_limit(s, queue=500, answered_rps=1000.0) == 50
    assert inflight_limit(s, queue=500, answered_rps=10.0) == 16  # two batches at least
    assert inflight_limit(s, queue=20, answered_rps=1000.0) == 36  # the queue + two batches
    assert inflight_limit(ServeSettings(max_batch=8), queue=256, answered_rps=1.0) == 272

    now = [0.0]
    b = _slo_batcher(run_dir, 4.0, now)
    stitch = b.ctrl.front[0].stitch
    pred = Prediction(None, stitch, 1, 0.0, 1.0)
    for k in range(400):  # 400 answers over the last second
        now[0] = 1.0 + k / 400
        b.finish([pred], arrived=now[0] - 0.01)
    assert b.executor.answered_rps(now[0]) == pytest.approx(400, abs=1)
    assert b.inflight_limit() == min(b.max_queue() + 16, math.floor(400 * 0.5 * 0.1))
    now[0] += 2.0  # nothing answered for two seconds: two batches
    assert b.inflight_limit() == 16
