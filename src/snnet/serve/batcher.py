"""Dynamic micro-batching with a latency SLO: requests queue, batches form, one thread computes.

Requests wait in one bounded queue. A batch closes when it holds ``max_batch`` images or its first
image has waited ``max_wait_ms``; the :class:`~snnet.serve.executor.BatchExecutor` picks its
stitch and runs it off the event loop on a single worker thread, so the loop keeps accepting and
refusing requests while the network computes. Admission is decided at once: a request the queue
cannot take within the SLO even on the cheapest stitch is refused with a retry hint, and every
request that was accepted gets an answer, also while draining for shutdown.

Latency is end to end inside the server: from the moment the request reached the app (stamped
before its body is read, see ``app.Gate``) to its answer being ready. The batcher sees only the
part from queue entry to the end of compute; :meth:`Batcher.finish` records the whole, so that a
slow upload, decoding, or an event loop busy with other requests counts against the SLO too.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from snnet.control.slo import SloController
from snnet.control.window import TimeWindow, percentile
from snnet.serve.backend import Backend
from snnet.serve.errors import ServeError
from snnet.serve.executor import (
    BatchExecutor,
    Hooks,
    Item,
    Prediction,
    stitch_name,
    tune_interpreter,
)
from snnet.serve.settings import ServeSettings
from snnet.serve.want import Want
from snnet.stitch import Stitch

#: Seconds of end-to-end latencies kept for ``/v1/status``, and of event-loop lags.
RECENT_S, LAG_S = 10.0, 10.0


class Batcher:
    """The serving loop of one replica (create it inside a running event loop).

    Example:
        >>> batcher = Batcher(ServedModel.load("runs/demo"), ServeSettings(slo_ms=50))
        >>> await batcher.start()
        >>> arrived = batcher.clock()
        >>> [pred] = await batcher.submit([batcher.backend.pixels(img)], Want())
        >>> latency_ms = batcher.finish([pred], arrived)
        >>> await batcher.drain()
    """

    def __init__(
        self,
        backend: Backend,
        settings: ServeSettings,
        *,
        hooks: Hooks | None = None,
        clock: Callable[[], float] = time.monotonic,
        batch_ms: dict[Stitch, float] | None = None,
    ) -> None:
        self.backend, self.settings, self.clock = backend, settings, clock
        self.hooks = hooks or Hooks()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="snnet-infer")
        self.executor = BatchExecutor(
            backend,
            settings,
            offload=self._offload,
            hooks=self.hooks,
            clock=clock,
            batch_ms=batch_ms,
        )
        self.started = clock()
        self._queue: deque[tuple[Item, asyncio.Future]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._watch: asyncio.Task | None = None
        self.draining = False
        self.counts: Counter[str] = Counter()  # images answered per stitch
        self.refused: Counter[str] = Counter()
        self._recent = TimeWindow[float](RECENT_S)  # end-to-end latency (ms), stamped at the end
        self._lag = TimeWindow[float](LAG_S)  # event-loop lag (ms)
        self.history: deque[dict[str, Any]] = deque(maxlen=600)  # one point per second
        self._next_sample = 0.0

    @property
    def ctrl(self) -> SloController | None:
        """The SLO controller (None without an SLO)."""
        return self.executor.ctrl

    @property
    def stitch(self) -> Stitch:
        """The running stitch."""
        return self.executor.stitch

    def _offload(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        # a runtime's thread count may be a setting of each thread: set it inside the worker too
        await self._offload(self.backend.set_threads, self.settings.threads)
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
            self._lag.add(now, lag_ms)
            self._lag.forget(now)
            self.hooks.loop_lag(lag_ms / 1e3)

    def loop_lag(self, window_s: float = 1.0) -> float:
        """The event loop's largest lag (ms) over the last ``window_s`` seconds (at most 10)."""
        now = self.clock()
        lags = (ms for t, ms in self._lag.items() if t >= now - window_s)
        return round(max(lags, default=0.0), 2)

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
        """Images the queue takes now (see :func:`~snnet.serve.admission.queue_limit`)."""
        return self.executor.queue_limit(self.clock())

    def inflight_limit(self) -> int:
        """Predictions the server holds at once before refusing (see
        :func:`~snnet.serve.admission.inflight_limit`)."""
        return self.executor.inflight_limit(self.clock())

    def resolve(
        self,
        stitch: str | None = None,
        max_gmacs: float | None = None,
        max_latency_ms: float | None = None,
    ) -> Want:
        """Check a request's stitch or budget now (4xx on error), before it queues."""
        return self.executor.resolve(stitch, max_gmacs, max_latency_ms)

    async def submit(self, images: list[Any], want: Want) -> list[Prediction]:
        """Queue images (``Backend.pixels`` of each); answers once all ran, or refuses at once
        (503)."""
        if self.draining:
            self.refuse("draining")
            raise ServeError(503, "shutting_down", "the server is shutting down", retry_after=1)
        if len(self._queue) + len(images) > self.max_queue():
            self.refuse("overload")
            raise self.executor.overloaded(len(self._queue))
        loop = asyncio.get_running_loop()
        now = self.clock()
        waiting = [(Item(x, want, now), loop.create_future()) for x in images]
        self._queue.extend(waiting)
        self.executor.arrived(now, len(waiting))
        self._wake.set()
        return list(await asyncio.gather(*(future for _, future in waiting)))

    def refuse(self, reason: str) -> None:
        """Count a request refused for ``reason``."""
        self.refused[reason] += 1
        self.hooks.refused(reason)

    # -- the loop -----------------------------------------------------------------------------
    async def _loop(self) -> None:
        s = self.settings
        while True:
            if not self._queue:
                if self.draining:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            # the batch closes when full or when its oldest image has waited max_wait_ms
            deadline = self._queue[0][0].queued + s.max_wait_ms / 1e3
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
            items = [item for item, _ in batch]
            futures = [future for _, future in batch]
            chosen = self._choose(items)
            await self.executor.run(items, chosen, functools.partial(_settle, futures))

    def _choose(self, items: list[Item]) -> Stitch:
        """The stitch for the batch ``items``, its oldest first (see BatchExecutor.choose)."""
        now = self.clock()
        waited_ms = (now - items[0].queued) * 1e3
        return self.executor.choose(now, len(self._queue), waited_ms, len(items))

    def finish(self, preds: list[Prediction], arrived: float) -> float:
        """Record a request whose answer is ready now: its end-to-end latency (ms, from
        ``arrived``, the clock reading when it reached the server) goes to the controller, the
        recent window, the per-stitch counts and the hooks. Returns that latency."""
        now = self.clock()
        latency = self.executor.finish(preds, arrived, now)
        for p in preds:
            self._recent.add(now, latency)
            self.counts[stitch_name(p.stitch)] += 1
        self._sample(now)
        return latency

    # -- what the status page shows -----------------------------------------------------------
    def recent(self, window_s: float = 10.0) -> dict[str, float | None]:
        """Median and p99 (nearest rank, as the SLO controller's) of end-to-end latency over
        the last ``window_s`` seconds, and the rate of answers."""
        now = self.clock()
        self._recent.forget(now)
        xs = [ms for t, ms in self._recent.items() if t >= now - window_s]
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
                "stitch": str(self.stitch),
                "queue": len(self._queue),
                **self._controller_state(),
            }
        )

    def _controller_state(self) -> dict[str, Any]:
        """What the SLO controller works from: the slowdown, the overhead and calibration
        factor it applies, and the throughput it observes (empty without an SLO)."""
        c = self.ctrl
        if c is None:
            return {}
        rps = c.served_rps()
        return {
            "slowdown": round(c.slowdown, 3),
            "overhead_ms": round(c.overhead_ms, 2),
            "calibration": round(c.calibration, 3),
            "served_rps": None if rps is None else round(rps, 1),
        }

    def status(self) -> dict[str, Any]:
        s, c = self.settings, self.ctrl
        self._sample(self.clock())
        return {
            "stitch": str(self.stitch),
            "mode": "slo" if c is not None else "fixed",
            "slo_ms": s.slo_ms,
            "fits": c.fits if c is not None else True,
            # the stitches the SLO controller moves between (cheap to accurate)
            "slo_front": [str(r.stitch) for r in c.front] if c is not None else None,
            "queue_depth": len(self._queue),
            "max_queue": self.max_queue(),
            "max_inflight": self.inflight_limit(),
            # the event loop's largest lag over the last second and 10 s (not in the latencies)
            "loop_lag_ms": {"max_1s": self.loop_lag(1.0), "max_10s": self.loop_lag(10.0)},
            "max_batch": s.max_batch,
            "max_wait_ms": s.max_wait_ms,
            "threads": s.threads,
            "slowdown": round(self.executor.slowdown, 3),
            **self._controller_state(),
            "decision": dict(c.decision) if c is not None else None,
            "switches": c.switches if c is not None else 0,
            "relief_batches": c.reliefs if c is not None else 0,  # batches below the running one
            "recent": self.recent(),
            "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "requests_per_stitch": dict(self.counts),
            "refused": dict(self.refused),
            "uptime_s": round(self.clock() - self.started, 1),
            "draining": self.draining,
            "history": list(self.history),
        }


def _settle(futures: list[asyncio.Future], k: int, answer: Prediction | ServeError) -> None:
    """Answer the ``k``-th image of a batch (a client that went away leaves a cancelled
    future)."""
    future = futures[k]
    if future.done():
        return
    if isinstance(answer, ServeError):
        future.set_exception(answer)
    else:
        future.set_result(answer)
