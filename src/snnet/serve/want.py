"""What one request asks for (a stitch, or a budget), checked before it queues, and the stitch
each of its images runs."""

from __future__ import annotations

from dataclasses import dataclass

from snnet.measure.results import FIELDS, Record
from snnet.serve.backend import Backend
from snnet.serve.errors import ServeError
from snnet.stitch import Stitch


@dataclass(frozen=True)
class Want:
    """What one request asks for: a stitch, or a cap the controller's choice must respect."""

    stitch: Stitch | None = None
    cap: Record | None = None  # the most accurate stitch within the request's budget


def resolve_want(
    backend: Backend,
    slowdown: float,
    stitch: str | None = None,
    max_gmacs: float | None = None,
    max_latency_ms: float | None = None,
) -> Want:
    """A request's stitch, or the most accurate front stitch within its budget (latency at
    today's speed: the measured latency × ``slowdown``); a :class:`ServeError` when the stitch
    is unknown (400) or no stitch fits the budget (422, naming the cheapest).

    Example:
        >>> resolve_want(backend, 1.0, max_latency_ms=2.0).cap.stitch
        Stitch('0:5-1:6')
    """
    if stitch is not None:
        try:
            return Want(stitch=backend.check(stitch))
        except ValueError as e:
            raise ServeError(400, "unknown_stitch", str(e)) from None
    if max_gmacs is None and max_latency_ms is None:
        return Want()
    rows = [
        r
        for r in backend.front
        if (max_gmacs is None or r.gmacs <= max_gmacs)
        and (max_latency_ms is None or r.latency_ms * slowdown <= max_latency_ms)
    ]
    if not rows:
        cheapest = backend.front[0]
        raise ServeError(
            422,
            "impossible_budget",
            f"no stitch fits max_gmacs={max_gmacs}, max_latency_ms={max_latency_ms}; the "
            f"cheapest is '{cheapest.stitch}' ({cheapest.gmacs:.4g} GMACs, "
            f"{cheapest.latency_ms * slowdown:.3g} ms now)",
        )
    metric = backend.results.metric
    sign = FIELDS[metric].sign  # absrel: lower is better
    return Want(cap=max(rows, key=lambda r: (sign * getattr(r, metric), -r.latency_ms)))


def stitch_for(backend: Backend, want: Want, chosen: Stitch) -> Stitch:
    """The stitch one image runs: the one it asked for, else the controller's choice unless
    that exceeds the image's budget (then the best stitch within the budget)."""
    if want.stitch is not None:
        return want.stitch
    if want.cap is not None:
        row = backend.results[chosen]
        fits = row.gmacs <= want.cap.gmacs and row.latency_ms <= want.cap.latency_ms
        return chosen if fits else want.cap.stitch
    return chosen
