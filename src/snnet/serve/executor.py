"""Running one replica's micro-batches: the one executor the batcher and the Ray deployment share.

Before each batch the executor asks the SLO controller for the stitch (or runs the fixed one),
groups the batch's images by the stitch each must run (a request may ask for a stitch or cap
it by a budget), computes each group on the replica's worker thread, and tells the controller
what it saw. When a request's answer is ready, :meth:`BatchExecutor.finish` records its
end-to-end latency: from its arrival at the server to that moment.
"""

from __future__ import annotations

import functools
import gc
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from snnet.control.slo import SloController
from snnet.serve import admission
from snnet.serve.backend import Backend
from snnet.serve.errors import ServeError
from snnet.serve.settings import ServeSettings
from snnet.serve.want import Want, resolve_want, stitch_for
from snnet.stitch import Stitch

#: How long a thread may hold the GIL while another waits (Python's default: 5 ms).
SWITCH_INTERVAL_S = 0.001


def tune_interpreter() -> None:
    """Set up the serving process's interpreter, once everything is loaded.

    - Keep what was loaded (the runtime, the network, the web stack), which lives as long as
      the server, out of the cyclic garbage collector's full passes: a full pass over it holds
      the GIL long enough for the event loop to read no request meanwhile.
    - Hand the GIL over within 1 ms instead of 5: the worker thread gives it up around every
      call into the runtime and must win it back from an event loop busy parsing a surge
      (``benchmarks/bench_trace.py`` measures both intervals).
    """
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(SWITCH_INTERVAL_S)


@functools.lru_cache(maxsize=4096)
def stitch_name(stitch: Stitch) -> str:
    """``str(stitch)``, cached: each answer, metric label and count names its stitch."""
    return str(stitch)


class Hooks:
    """What a replica reports (the app turns these into Prometheus metrics)."""

    def batch(self, stitch: Stitch, size: int, compute_ms: float) -> None: ...
    def request(self, stitch: Stitch, latency_ms: float) -> None: ...  # end to end
    def refused(self, reason: str) -> None: ...
    def switched(self, old: Stitch, new: Stitch) -> None: ...
    def loop_lag(self, seconds: float) -> None: ...  # see Batcher._watch_loop


@dataclass(slots=True)
class Item:
    """One image waiting for a batch."""

    pixels: Any  # what Backend.pixels made of it
    want: Want
    queued: float  # entered the queue: the batch deadline counts from here


@dataclass(frozen=True)
class Prediction:
    """The answer for one image."""

    probs: Any  # one row of Backend.run: (classes,), or a dense network's (H, W) map
    stitch: Stitch
    batch_size: int
    queue_ms: float  # queue entry to the start of compute
    compute_ms: float


#: Runs ``fn(*args)`` on the replica's worker thread.
Offload = Callable[..., Awaitable[Any]]


def fixed_stitch(backend: Backend, settings: ServeSettings) -> Stitch:
    """The stitch a server without an SLO runs: ``settings.stitch``, else the most accurate."""
    return backend.check(settings.stitch or backend.front[-1].stitch)


def prepare(
    backend: Backend, settings: ServeSettings, *, batch_ms: dict[Stitch, float] | None = None
) -> SloController | None:
    """What a replica does before serving: get the stitches it will run ready (the front, and
    the fixed stitch) unless ``settings.trace`` is off, then return the SLO controller (None
    without an SLO), predicting from batch times measured as the backend now runs them (or
    ``batch_ms``, full batches, given)."""
    if settings.trace:
        stitches = [r.stitch for r in backend.front]
        if settings.slo_ms is None:
            stitches.append(fixed_stitch(backend, settings))
        backend.prepare(stitches, max_batch=settings.max_batch)
    if settings.slo_ms is None:
        return None
    one_ms = None
    if batch_ms is None:
        times = backend.batch_ms((1, settings.max_batch))
        one_ms, batch_ms = times[1], times[settings.max_batch]
    return SloController(backend.results, settings.policy(), batch_ms=batch_ms, one_ms=one_ms)


class BatchExecutor:
    """Chooses, computes and records the batches of one replica, whoever forms them.

    ``offload(fn, *args)`` runs ``fn`` on the replica's worker thread; ``clock`` is the
    monotonic clock every time here is read from.

    Example:
        >>> ex = BatchExecutor(backend, ServeSettings(slo_ms=50), offload=asyncio.to_thread)
        >>> stitch = ex.choose(now, queue_depth=0, waited_ms=3.0, size=len(items))
        >>> await ex.run(items, stitch, deliver=lambda k, answer: ...)
        >>> latency_ms = ex.finish(preds, arrived)
    """

    def __init__(
        self,
        backend: Backend,
        settings: ServeSettings,
        *,
        offload: Offload,
        hooks: Hooks | None = None,
        clock: Callable[[], float] = time.monotonic,
        batch_ms: dict[Stitch, float] | None = None,
    ) -> None:
        self.backend, self.settings, self.offload = backend, settings, offload
        self.hooks, self.clock = hooks or Hooks(), clock
        backend.set_threads(settings.threads)
        self.ctrl = prepare(backend, settings, batch_ms=batch_ms)
        self._fixed = fixed_stitch(backend, settings) if self.ctrl is None else None
        self._last = self.stitch  # the running stitch the hooks last heard of
        self._answered: deque[float] = deque()  # when each image of the last second was answered

    @property
    def stitch(self) -> Stitch:
        """The running stitch: the SLO controller's, or the fixed one."""
        return self.ctrl.stitch if self.ctrl is not None else self._fixed

    def set_stitch(self, stitch: Stitch) -> None:
        """Run ``stitch`` from the next batch on (no SLO: the controller's choice otherwise)."""
        if self.ctrl is not None:
            raise ValueError("the SLO controller chooses the stitch")
        self._fixed = stitch

    @property
    def slowdown(self) -> float:
        """Today's compute time against the measured one (1 without an SLO)."""
        return self.ctrl.slowdown if self.ctrl is not None else 1.0

    # -- admission -----------------------------------------------------------------------------
    def resolve(
        self,
        stitch: str | None = None,
        max_gmacs: float | None = None,
        max_latency_ms: float | None = None,
    ) -> Want:
        """Check a request's stitch or budget now (4xx on error), before it queues."""
        return resolve_want(self.backend, self.slowdown, stitch, max_gmacs, max_latency_ms)

    def queue_limit(self, now: float | None = None) -> int:
        """Images the queue takes now (:func:`~snnet.serve.admission.queue_limit`)."""
        return admission.queue_limit(self.settings, self.ctrl, now)

    def answered_rps(self, now: float | None = None) -> float:
        """Images answered over the last second."""
        now = self.clock() if now is None else now
        while self._answered and self._answered[0] < now - 1.0:
            self._answered.popleft()
        return float(len(self._answered))

    def inflight_limit(self, now: float | None = None) -> int:
        """Predictions this replica holds at once before refusing
        (:func:`~snnet.serve.admission.inflight_limit`)."""
        now = self.clock() if now is None else now
        return admission.inflight_limit(
            self.settings, self.queue_limit(now), self.answered_rps(now)
        )

    def overloaded(self, waiting: int) -> ServeError:
        """The 503 for a full queue: retry after a few full batches of the cheapest stitch
        (with an SLO) or the running one."""
        b = self.settings.max_batch
        if self.ctrl is not None:
            full_ms = self.ctrl.batch_time(0, b)
        else:
            full_ms = self.backend.results[self.stitch].latency_ms * b
        return admission.overloaded(waiting, full_ms)

    # -- batches -------------------------------------------------------------------------------
    def arrived(self, now: float, count: int) -> None:
        """``count`` images entered the queue at ``now``."""
        if self.ctrl is not None:
            self.ctrl.observe_arrival(now, count)

    def choose(self, now: float, queue_depth: int, waited_ms: float, size: int) -> Stitch:
        """The stitch for a batch of ``size`` whose oldest image has waited ``waited_ms``: the
        running one, or a cheaper one when that image would miss its deadline on it (a relief
        batch; the running stitch stays)."""
        if self.ctrl is None:
            return self.stitch
        chosen = self.ctrl.update(now, queue_depth, waited_ms=waited_ms, batch_size=size)
        running = self.ctrl.stitch
        if running != self._last:
            self.hooks.switched(self._last, running)
            self._last = running
        return chosen

    async def run(
        self,
        items: Sequence[Item],
        chosen: Stitch,
        deliver: Callable[[int, Prediction | ServeError], None],
    ) -> None:
        """Compute ``items`` (``chosen``: :meth:`choose`'s stitch), one group per stitch its
        images must run, and ``deliver(k, answer)`` for each as its group ends: a
        :class:`Prediction`, or a 500 :class:`ServeError` if the group's compute failed."""
        groups: dict[Stitch, list[int]] = {}
        for k, item in enumerate(items):
            groups.setdefault(stitch_for(self.backend, item.want, chosen), []).append(k)
        for stitch, ks in groups.items():
            try:
                probs, compute_ms = await self.offload(
                    self._compute, stitch, [items[k].pixels for k in ks]
                )
            except Exception as e:  # an answer for every accepted request, even an error
                error = ServeError(500, "inference_failed", f"{type(e).__name__}: {e}")
                for k in ks:
                    deliver(k, error)
                continue
            now = self.clock()
            n = len(ks)
            if self.ctrl is not None and self.ctrl.on_front(stitch):
                self.ctrl.observe_batch(stitch, n, compute_ms, now)
            self.hooks.batch(stitch, n, compute_ms)
            for k, p in zip(ks, probs, strict=True):
                queue_ms = max(0.0, (now - items[k].queued) * 1e3 - compute_ms)
                deliver(k, Prediction(p, stitch, n, queue_ms, compute_ms))

    def _compute(self, stitch: Stitch, pixels: list[Any]) -> tuple[Sequence[Any], float]:
        start = time.perf_counter()
        probs = self.backend.run(pixels, stitch)
        return probs, (time.perf_counter() - start) * 1e3

    def finish(
        self, preds: Sequence[Prediction], arrived: float, now: float | None = None
    ) -> float:
        """Record a request whose answer is ready (at ``now``, default the clock): its
        end-to-end latency (ms, from ``arrived``, the clock reading when it reached the server)
        goes to the controller and the hooks. Returns that latency."""
        now = self.clock() if now is None else now
        latency = (now - arrived) * 1e3
        self._answered.extend(now for _ in preds)
        for p in preds:
            if self.ctrl is not None:
                self.ctrl.observe_request(now, latency, p.queue_ms + p.compute_ms)
            self.hooks.request(p.stitch, latency)
        return latency
