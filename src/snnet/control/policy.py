"""How a served network follows a latency SLO: the target, the batcher it predicts, when it
switches stitches (:class:`Steps`) and what it looks back at (:class:`Windows`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class Steps:
    """When the running stitch changes, as fractions of the SLO and seconds.

    The controller steps down as soon as a stitch's predicted p99 exceeds ``down_at`` × SLO,
    or the p99 observed since the last switch does; it steps up only when the next stitch's
    prediction (and the observed p99) has stayed under ``up_at`` × SLO for ``hold_s`` seconds:
    the gap between the two fractions and the hold are the hysteresis that stops it flapping.
    A step up climbs one stitch, or straight to the most accurate stitch predicted under
    ``jump_at`` × SLO when that is higher (``jump_at=None``: one stitch per hold). After a step
    up the next one waits only ``climb_s``: the hold guards against stepping up right after a
    step down, and stepping up twice is no flap.

    A batch whose oldest request would end after ``deadline_at`` × SLO on the running stitch
    (the time outside the batcher included) runs on the most accurate cheaper stitch that ends
    in time, or the cheapest (a *relief* batch): the running stitch stays, and the tail that
    bursts of arrivals add is cut where it forms.
    """

    down_at: float = 1.0
    up_at: float = 0.85
    jump_at: float | None = 0.85
    deadline_at: float = 0.85
    hold_s: float = 2.0
    climb_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.deadline_at <= 1:
            raise ValueError("need 0 < deadline_at <= 1 (a fraction of the SLO)")
        if not 0 < self.up_at < self.down_at <= 1:
            raise ValueError("need 0 < up_at < down_at <= 1 (the gap is the hysteresis)")
        if self.jump_at is not None and not 0 < self.jump_at <= self.up_at:
            raise ValueError("need 0 < jump_at <= up_at (a jump needs more margin than a step)")


@dataclass(frozen=True, kw_only=True)
class Windows:
    """What the controller looks back at, in seconds.

    The arrival rate is the mean over ``rate_s``, or the rate over the last ``burst_s`` (or
    four times that) when that count is more than ``burst_sigmas`` standard deviations of a
    Poisson count away from the mean's: a step in the load shows within a fraction of a
    second, a Poisson fluctuation does not move the estimate (``burst_sigmas=inf``: the mean
    alone). End-to-end latencies, the time outside the batcher and the batches run are kept for
    ``latency_s``; stepping and calibrating read the p99 of the last ``recent_s`` when it holds
    ``min_samples`` requests on the running stitch, else of the whole window.
    """

    rate_s: float = 6.0
    burst_s: float = 0.25
    burst_sigmas: float = 5.0
    latency_s: float = 10.0
    recent_s: float = 3.0
    min_samples: int = 30


@dataclass(frozen=True, kw_only=True)
class SloPolicy:
    """A latency SLO and the batcher it is held with (see :class:`~snnet.control.SloController`).

    ``slo_ms`` is the end-to-end p99 to hold; ``max_batch`` and ``max_wait_ms`` describe the
    batcher (a batch runs when it holds ``max_batch`` requests or its first request has waited
    ``max_wait_ms``); ``steps`` and ``windows`` tune the controller.

    Example:
        >>> SloPolicy(slo_ms=50, max_batch=8, steps=Steps(hold_s=3.0))
    """

    slo_ms: float
    max_batch: int = 8
    max_wait_ms: float = 5.0
    steps: Steps = field(default_factory=Steps)
    windows: Windows = field(default_factory=Windows)

    def __post_init__(self) -> None:
        if self.slo_ms <= 0 or self.max_batch < 1 or self.max_wait_ms < 0:
            raise ValueError("slo_ms must be > 0, max_batch >= 1 and max_wait_ms >= 0")
