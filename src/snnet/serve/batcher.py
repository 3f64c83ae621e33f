"""Dynamic micro-batching with a latency SLO: requests queue, batches form, one thread computes.

Requests wait in one bounded queue. A batch closes when it holds ``max_batch`` images or its first
image has waited ``max_wait_ms``; it runs off the event loop on a single worker thread (torch
uses a fixed number of threads inside it), so the loop keeps accepting and refusing requests while
the network computes. Before each batch the :class:`~snnet.controller.BudgetController` picks the
stitch (``net(x, stitch=s)``: a value, no weights move). Admission is decided at once: a request
the queue cannot take within the SLO even on the cheapest stitch is refused with a retry hint,
and every request that was accepted gets an answer, also while draining for shutdown.

Latency is end to end inside the server: from the moment the request reached the app (stamped
before its body is read, see ``app.Gate``) to its answer being ready. The batcher sees only the
part from queue entry to the end of compute; :meth:`Batcher.finish` records the whole, so that a
slow upload, decoding, or an event loop busy with other requests counts against the SLO too.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from snnet.controller import BudgetController, SloPolicy
from snnet.measure.latency import percentile
from snnet.measure.results import Record
from snnet.serve.model import ServedModel, ServeError
from snnet.stitch import Stitch

logger = logging.getLogger("snnet.serve")


@dataclass(frozen=True)
class ServeSettings:
    """How one replica serves (the ``snnet serve`` options)."""

    slo_ms: float | None = None  # follow this end-to-end p99; None: run ``stitch`` always
    stitch: str | None = None  # the fixed stitch without an SLO (default: the most accurate)
    max_batch: int = 8
    max_wait_ms: float = 5.0
    threads: int = 1
    max_queue: int | None = None  # default: what the cheapest stitch clears within the SLO
    max_images: int = 16  # per request
    max_pixels: int = 4096 * 4096
    top_k: int = 5
    hold_s: float = SloPolicy.hold_s
    device: str = "cpu"  # where the network runs: cpu, cuda, cuda:1, ...
    trace: bool = True  # run the front (and the fixed stitch) traced: ServedModel.trace

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_wait_ms < 0 or self.threads < 1 or self.max_images < 1:
            raise ValueError("max_batch, threads, max_images >= 1 and max_wait_ms >= 0 required")
        if self.slo_ms is not None and self.slo_ms <= self.max_wait_ms:
            raise ValueError(f"the SLO ({self.slo_ms} ms) must exceed max_wait_ms")


@dataclass(frozen=True)
class Want:
    """What one request asks for: a stitch, or a cap the controller's choice must respect."""

    stitch: Stitch | None = None
    cap: Record | None = None  # the most accurate stitch within the request's budget


@dataclass
class _Item:
    x: torch.Tensor  # (C, H, W)
    want: Want
    queued: float  # entered the queue: the batch deadline counts from here
    future: asyncio.Future = field(repr=False)


@dataclass(frozen=True)
class Prediction:
    """The answer for one image."""

    probs: torch.Tensor  # (classes,)
    stitch: Stitch
    batch_size: int
    queue_ms: float  # queue entry to the start of compute
    compute_ms: float


def fixed_stitch(model: ServedModel, settings: ServeSettings) -> Stitch:
    """The stitch a server without an SLO runs: ``settings.stitch``, else the most accurate."""
    return model.net.space.check(settings.stitch or model.front[-1].stitch)


def prepare(
    model: ServedModel, settings: ServeSettings, *, batch_ms: dict[Stitch, float] | None = None
) -> BudgetController:
    """What a replica (the batcher's or Ray's) does before serving: trace the stitches it will
    run (the front, and the fixed stitch) unless ``settings.trace`` is off, then return the
    controller, following the SLO from batch times measured as the model now runs (or
    ``batch_ms``, full batches, given), or with the fixed stitch set."""
    if settings.trace:
        stitches = [r.stitch for r in model.front]
        if settings.slo_ms is None:
            stitches.append(fixed_stitch(model, settings))
        start = time.perf_counter()
        eager = model.trace(stitches, max_batch=settings.max_batch)
        logger.info(
            "traced %d stitches (TorchScript) in %.1f s; %d stay eager",
            len(model.traced),
            time.perf_counter() - start,
            len(eager),
        )
    ctrl = model.controller()
    if settings.slo_ms is None:
        model.net.stitch = fixed_stitch(model, settings)
        return ctrl
    policy = SloPolicy(
        slo_ms=settings.slo_ms,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        hold_s=settings.hold_s,
    )
    one_ms = None
    if batch_ms is None:
        times = model.batch_ms((1, settings.max_batch))
        one_ms, batch_ms = times[1], times[settings.max_batch]
    ctrl.set_slo(policy, batch_ms=batch_ms, one_ms=one_ms)
    return ctrl


#: How long a thread may hold the GIL while another waits (Python's default: 5 ms).
SWITCH_INTERVAL_S = 0.001


def tune_interpreter() -> None:
    """Set up the serving process's interpreter, once everything is loaded.

    - Keep what was loaded (torch, the network, the web stack), which lives as long as the
      server, out of the cyclic garbage collector's full passes. Without this, a full pass at a
      surge's start held the GIL for 189 ms: the event loop read no request meanwhile (p99 at
      the client 226 ms against 85 ms in the server; 2-core machine, compute family).
    - Hand the GIL over within 1 ms instead of 5. The inference thread gives it up around every
      call into torch and must win it back from an event loop busy parsing a surge: with a
      thread spinning in Python beside it, traced batches of the demo family ran 93 times a
      second at 5 ms and 331 at 1 ms (583 alone; ``benchmarks/bench_trace.py``).
    """
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(SWITCH_INTERVAL_S)


class Hooks:
    """What the batcher reports (the app turns these into Prometheus metrics)."""

    def batch(self, stitch: Stitch, size: int, compute_ms: float) -> None: ...
    def request(self, stitch: Stitch, latency_ms: float) -> None: ...  # end to end
    def refused(self, reason: str) -> None: ...
    def switched(self, old: Stitch, new: Stitch) -> None: ...
    def loop_lag(self, seconds: float) -> None: ...  # see Batcher._watch_loop


def resolve_want(
    model: ServedModel,
    slowdown: float,
    stitch: str | None = None,
    max_gmacs: float | None = None,
    max_latency_ms: float | None = None,
) -> Want:
    """A request's stitch, or the most accurate front stitch within its budget (latency at
    today's speed: the measured latency × ``slowdown``); a :class:`ServeError` when the stitch
    is unknown (400) or no stitch fits the budget (422, naming the cheapest)."""
    if stitch is not None:
        try:
            return Want(stitch=model.net.space.check(stitch))
        except ValueError as e:
            raise ServeError(400, "unknown_stitch", str(e)) from None
    if max_gmacs is None and max_latency_ms is None:
        return Want()
    rows = [
        r
        for r in model.front
        if (max_gmacs is None or r.gmacs <= max_gmacs)
        and (max_latency_ms is None or r.latency_ms * slowdown <= max_latency_ms)
    ]
    if not rows:
        cheapest = model.front[0]
        raise ServeError(
            422,
            "impossible_budget",
            f"no stitch fits max_gmacs={max_gmacs}, max_latency_ms={max_latency_ms}; the "
            f"cheapest is '{cheapest.stitch}' ({cheapest.gmacs:.4g} GMACs, "
            f"{cheapest.latency_ms * slowdown:.3g} ms now)",
        )
    return Want(cap=max(rows, key=lambda r: (r.top1, -r.latency_ms)))


def stitch_for(model: ServedModel, want: Want, chosen: Stitch) -> Stitch:
    """The stitch one image runs: the one it asked for, else the controller's choice unless
    that exceeds the image's budget (then the best stitch within the budget)."""
    if want.stitch is not None:
        return want.stitch
    if want.cap is not None:
        row = model.results[chosen]
        fits = row.gmacs <= want.cap.gmacs and row.latency_ms <= want.cap.latency_ms
        return chosen if fits else want.cap.stitch
    return chosen


def queue_limit(settings: ServeSettings, ctrl: BudgetController, now: float | None = None) -> int:
    """Images one replica's queue takes: ``max_queue``, else what the cheapest stitch clears
    within the SLO after the wait for a batch and the time outside the batcher (without an
    SLO: 32 batches), at the rate the server was observed to clear requests
    (:meth:`~snnet.controller.BudgetController.served_rps`; before any batch, the rate the
    measured table predicts at full batches). An earlier bound took whole full batches at the
    table's pessimistic speed and kept one back for the batch in flight: it refused part of a
    surge that the cheapest stitch carried well within the SLO."""
    s = settings
    if s.max_queue is not None:
        return s.max_queue
    if s.slo_ms is None:
        return 32 * s.max_batch
    rps = ctrl.served_rps(now)
    if rps is None:
        rps = ctrl.capacity(0)
    room_ms = s.slo_ms - s.max_wait_ms - ctrl.overhead_ms
    return max(s.max_batch, math.floor(rps * room_ms / 1e3))


def overloaded(
    model: ServedModel, settings: ServeSettings, ctrl: BudgetController, waiting: int
) -> ServeError:
    """The 503 for a full queue, with ``Retry-After`` of a few full batches of the cheapest
    stitch (with an SLO) or the running one."""
    b = settings.max_batch
    if settings.slo_ms is not None:
        full_ms = ctrl.batch_time(0, b)
    else:
        full_ms = model.results[model.net.stitch].latency_ms * b
    return ServeError(
        503,
        "overloaded",
        f"the queue is full ({waiting} images waiting; the cheapest stitch cannot answer more "
        "within the latency target): retry later",
        retry_after=max(1, math.ceil(4 * full_ms / 1e3)),
    )


class Batcher:
    """The serving loop of one replica (create it inside a running event loop).

    Example:
        >>> batcher = Batcher(ServedModel.load("runs/demo"), ServeSettings(slo_ms=50))
        >>> await batcher.start()
        >>> arrived = batcher.clock()
        >>> [pred] = await batcher.submit([model.preprocess.pixels(img)], Want())
        >>> latency_ms = batcher.finish([pred], arrived)
        >>> await batcher.drain()
    """

    def __init__(
        self,
        model: ServedModel,
        settings: ServeSettings,
        *,
        hooks: Hooks | None = None,
        clock: Callable[[], float] = time.monotonic,
        batch_ms: dict[Stitch, float] | None = None,
    ) -> None:
        self.model, self.settings, self.hooks, self.clock = model, settings, hooks or Hooks(), clock
        torch.set_num_threads(settings.threads)
        self.ctrl = prepare(model, settings, batch_ms=batch_ms)
        self.started = clock()
        self._queue: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="snnet-infer")
        self._task: asyncio.Task | None = None
        self.draining = False
        self.counts: Counter[str] = Counter()  # images answered per stitch
        self.refused: Counter[str] = Counter()
        self._recent: deque[tuple[float, float]] = deque()  # (finished, latency ms)
        self.history: deque[dict[str, Any]] = deque(maxlen=600)  # one point per second
        self._next_sample = 0.0
        self._last_stitch = model.net.stitch
        self._lag: deque[tuple[float, float]] = deque()  # (when, event-loop lag ms), last 10 s
        self._watch: asyncio.Task | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        # torch's intra-op thread count is per thread: set it inside the worker too
        await asyncio.get_running_loop().run_in_executor(
            self._pool, torch.set_num_threads, self.settings.threads
        )
        tune_interpreter()
        self._task = asyncio.create_task(self._loop(), name="snnet-batcher")
        self._watch = asyncio.create_task(self._watch_loop(), name="snnet-loop-lag")

    async def _watch_loop(self, every_s: float = 0.01) -> None:
        """How late the event loop wakes a task that sleeps ``every_s``: while it is late, no
        request is read or parsed, and that wait precedes the arrival stamp every latency here
        starts from. Clients see it; the server's own latencies do not."""
        while True:
            start = self.clock()
            await asyncio.sleep(every_s)
            now = self.clock()
            lag_ms = max(0.0, (now - start - every_s) * 1e3)
            self._lag.append((now, lag_ms))
            while self._lag[0][0] < now - 10:
                self._lag.popleft()
            self.hooks.loop_lag(lag_ms / 1e3)

    def loop_lag(self, window_s: float = 1.0) -> float:
        """The event loop's largest lag (ms) over the last ``window_s`` seconds (at most 10)."""
        now = self.clock()
        return round(max((ms for t, ms in self._lag if t >= now - window_s), default=0.0), 2)

    async def drain(self) -> None:
        """Refuse new requests, answer every accepted one, then stop."""
        self.draining = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._watch is not None:
            self._watch.cancel()
        self._pool.shutdown(wait=True)

    # -- requests -----------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def max_queue(self) -> int:
        """Images the queue takes now (see :func:`queue_limit`)."""
        return queue_limit(self.settings, self.ctrl, self.clock())

    def resolve(
        self,
        stitch: str | None = None,
        max_gmacs: float | None = None,
        max_latency_ms: float | None = None,
    ) -> Want:
        """Check a request's stitch or budget now (4xx on error), before it queues."""
        return resolve_want(self.model, self.ctrl.slowdown, stitch, max_gmacs, max_latency_ms)

    async def submit(self, images: list[torch.Tensor], want: Want) -> list[Prediction]:
        """Queue preprocessed images; answers once all ran, or refuses at once (503)."""
        if self.draining:
            self._refuse("draining")
            raise ServeError(503, "shutting_down", "the server is shutting down", retry_after=1)
        if len(self._queue) + len(images) > self.max_queue():
            self._refuse("overload")
            raise overloaded(self.model, self.settings, self.ctrl, len(self._queue))
        loop = asyncio.get_running_loop()
        now = self.clock()
        items = [_Item(x, want, now, loop.create_future()) for x in images]
        self._queue.extend(items)
        if self.settings.slo_ms is not None:
            self.ctrl.observe_arrival(now, len(items))
        self._wake.set()
        return list(await asyncio.gather(*(i.future for i in items)))

    def _refuse(self, reason: str) -> None:
        self.refused[reason] += 1
        self.hooks.refused(reason)

    # -- the loop -----------------------------------------------------------------------------
    async def _loop(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self.draining:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            # the batch closes when full or when its oldest image has waited max_wait_ms
            deadline = self._queue[0].queued + s.max_wait_ms / 1e3
            while len(self._queue) < s.max_batch and not self.draining:
                left = deadline - self.clock()
                if left <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except TimeoutError:
                    break
            batch = [self._queue.popleft() for _ in range(min(s.max_batch, len(self._queue)))]
            chosen = self._choose(batch)
            groups: dict[Stitch, list[_Item]] = {}
            for item in batch:
                groups.setdefault(stitch_for(self.model, item.want, chosen), []).append(item)
            for stitch, items in groups.items():
                try:
                    probs, compute_ms = await loop.run_in_executor(
                        self._pool, self._compute, stitch, items
                    )
                except Exception as e:  # an answer for every accepted request, even an error
                    for item in items:
                        if not item.future.done():
                            item.future.set_exception(
                                ServeError(500, "inference_failed", f"{type(e).__name__}: {e}")
                            )
                    continue
                self._answer(stitch, items, probs, compute_ms)

    def _choose(self, batch: list[_Item]) -> Stitch:
        """The stitch for ``batch``: the running one, or a cheaper one when its oldest request
        would miss its deadline on it (a relief batch; the running stitch stays)."""
        if self.settings.slo_ms is None:
            return self.model.net.stitch
        now = self.clock()
        waited_ms = (now - batch[0].queued) * 1e3
        chosen = self.ctrl.update(now, len(self._queue), waited_ms=waited_ms, batch_size=len(batch))
        running = self.model.net.stitch
        if running != self._last_stitch:
            self.hooks.switched(self._last_stitch, running)
            self._last_stitch = running
        return chosen

    def _compute(self, stitch: Stitch, items: list[_Item]) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        probs = self.model.predict(torch.stack([i.x for i in items]), stitch)
        return probs, (time.perf_counter() - start) * 1e3

    def _answer(
        self, stitch: Stitch, items: list[_Item], probs: torch.Tensor, compute_ms: float
    ) -> None:
        now = self.clock()
        n = len(items)
        if self.settings.slo_ms is not None and self.ctrl.on_front(stitch):
            self.ctrl.observe_batch(stitch, n, compute_ms, now)
        self.hooks.batch(stitch, n, compute_ms)
        for item, p in zip(items, probs, strict=True):
            queue_ms = max(0.0, (now - item.queued) * 1e3 - compute_ms)
            if not item.future.done():  # a client that went away leaves a cancelled future
                item.future.set_result(Prediction(p, stitch, n, queue_ms, compute_ms))

    def finish(self, preds: list[Prediction], arrived: float) -> float:
        """Record a request whose answer is ready now: its end-to-end latency (ms, from
        ``arrived``, the clock reading when it reached the server) goes to the controller, the
        recent window, the per-stitch counts and the hooks. Returns that latency."""
        now = self.clock()
        latency = (now - arrived) * 1e3
        for p in preds:
            if self.settings.slo_ms is not None:
                self.ctrl.observe_request(now, latency, p.queue_ms + p.compute_ms)
            self._recent.append((now, latency))
            self.counts[str(p.stitch)] += 1
            self.hooks.request(p.stitch, latency)
        self._sample(now)
        return latency

    # -- what the status page shows -----------------------------------------------------------
    def recent(self, window_s: float = 10.0) -> dict[str, float | None]:
        now = self.clock()
        while self._recent and self._recent[0][0] < now - 60:
            self._recent.popleft()
        xs = [ms for t, ms in self._recent if t >= now - window_s]
        if not xs:
            return {"p50_ms": None, "p99_ms": None, "rate": 0.0}
        return {
            "p50_ms": percentile(xs, 50),
            "p99_ms": percentile(xs, 99),
            "rate": len(xs) / window_s,
        }

    def _sample(self, now: float) -> None:
        if now < self._next_sample:
            return
        self._next_sample = now + 1.0
        r = self.recent(5.0)
        self.history.append(
            {
                "t": round(now - self.started, 2),
                "p50_ms": r["p50_ms"],
                "p99_ms": r["p99_ms"],
                "rate": r["rate"],
                "stitch": str(self.model.net.stitch),
                "queue": len(self._queue),
                **self._controller_state(),
            }
        )

    def _controller_state(self) -> dict[str, Any]:
        """What the SLO controller works from: the slowdown, the overhead and calibration
        factor it applies, and its last decision (empty without an SLO)."""
        if self.settings.slo_ms is None:
            return {}
        c = self.ctrl
        rps = c.served_rps()
        return {
            "slowdown": round(c.slowdown, 3),
            "overhead_ms": round(c.overhead_ms, 2),
            "calibration": round(c.calibration, 3),
            "served_rps": None if rps is None else round(rps, 1),
        }

    def status(self) -> dict[str, Any]:
        s = self.settings
        self._sample(self.clock())
        return {
            "stitch": str(self.model.net.stitch),
            "mode": "slo" if s.slo_ms is not None else "fixed",
            "slo_ms": s.slo_ms,
            "fits": self.ctrl.fits,
            # the stitches the SLO controller moves between (cheap to accurate)
            "slo_front": [str(r.stitch) for r in self.ctrl.front] if s.slo_ms else None,
            "queue_depth": len(self._queue),
            "max_queue": self.max_queue(),
            # the event loop's largest lag over the last second and 10 s (not in the latencies)
            "loop_lag_ms": {"max_1s": self.loop_lag(1.0), "max_10s": self.loop_lag(10.0)},
            "max_batch": s.max_batch,
            "max_wait_ms": s.max_wait_ms,
            "threads": s.threads,
            "slowdown": round(self.ctrl.slowdown, 3),
            **self._controller_state(),
            "decision": dict(self.ctrl.decision) if s.slo_ms is not None else None,
            "switches": self.ctrl.switches,
            "relief_batches": self.ctrl.reliefs,  # batches run below the running stitch
            "recent": self.recent(),
            "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "requests_per_stitch": dict(self.counts),
            "refused": dict(self.refused),
            "uptime_s": round(self.clock() - self.started, 1),
            "draining": self.draining,
            "history": list(self.history),
        }
