"""Admission: how many images one replica's queue takes, and the refusal beyond that."""

from __future__ import annotations

import math

from snnet.control.slo import SloController
from snnet.serve.errors import ServeError
from snnet.serve.settings import ServeSettings

#: Without an SLO the queue takes this many full batches.
FIXED_QUEUE_BATCHES = 32
#: With an SLO, the share of it that requests admitted under overload may spend waiting behind
#: those already in flight.
INFLIGHT_SLO_SHARE = 0.5


def queue_limit(
    settings: ServeSettings, ctrl: SloController | None, now: float | None = None
) -> int:
    """Images one replica's queue takes: ``max_queue``, else what the cheapest stitch clears
    within the SLO after the wait for a batch and the time outside the batcher (without an
    SLO: 32 batches), at the rate the server was observed to clear requests
    (:meth:`~snnet.control.SloController.served_rps`; before any batch, the rate the measured
    table predicts at full batches).

    Example:
        >>> queue_limit(ServeSettings(slo_ms=50), ctrl, time.monotonic())
        212
    """
    s = settings
    if s.max_queue is not None:
        return s.max_queue
    if s.slo_ms is None or ctrl is None:
        return FIXED_QUEUE_BATCHES * s.max_batch
    rps = ctrl.served_rps(now)
    if rps is None:
        rps = ctrl.capacity(0)
    room_ms = s.slo_ms - s.max_wait_ms - ctrl.overhead_ms
    return max(s.max_batch, math.floor(rps * room_ms / 1e3))


def overloaded(waiting: int, full_batch_ms: float) -> ServeError:
    """The 503 for a full queue (``waiting`` images in it), with ``Retry-After`` of four full
    batches of ``full_batch_ms``."""
    return ServeError(
        503,
        "overloaded",
        f"the queue is full ({waiting} images waiting; the cheapest stitch cannot answer more "
        "within the latency target): retry later",
        retry_after=max(1, math.ceil(4 * full_batch_ms / 1e3)),
    )


def inflight_limit(settings: ServeSettings, queue: int, answered_rps: float) -> int:
    """Predictions one replica holds at once (being read, decoded, queued or computed) before it
    refuses the next: its queue (``queue`` images) plus two batches, and with an SLO no more
    than it answers in half the SLO at the rate it answered over the last second (never fewer than
    two batches). By Little's law a request admitted beyond that would wait past the SLO: when
    reading and decoding, not the network, limit the rate, the queue bound (which counts
    compute) does not see it.

    Example:
        >>> inflight_limit(ServeSettings(slo_ms=50), queue=200, answered_rps=500.0)
        16
    """
    bound = queue + 2 * settings.max_batch
    if settings.slo_ms is None:
        return bound
    by_rate = math.floor(answered_rps * INFLIGHT_SLO_SHARE * settings.slo_ms / 1e3)
    return min(bound, max(2 * settings.max_batch, by_rate))
