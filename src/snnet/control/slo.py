"""Holding a latency SLO by switching stitches, for a server that batches requests.

The controller predicts each front stitch's end-to-end p99 (forming a batch + waiting for the
batches ahead + computing it + the time a request spends in the server outside the batcher) with
the :class:`~snnet.control.queueing.QueueModel`, from the arrival rate and the times it observes,
calibrated by how the p99 it observes on the running stitch compares with the model's figure
there, and runs the most accurate stitch whose prediction stays under the SLO. It steps down at
once, and after a hold steps up one stitch, or straight to the best stitch predicted well under
the SLO. A batch whose oldest request would miss its deadline on the running stitch runs on a
cheaper one (a *relief* batch), so the running stitch can sit as close to the SLO as the best
fixed stitch does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from snnet.control.policy import SloPolicy
from snnet.control.queueing import QueueModel
from snnet.control.rate import ArrivalRate
from snnet.control.window import TimeWindow, percentile
from snnet.measure.pareto import pareto_front
from snnet.measure.results import FIELDS, Record, Results
from snnet.stitch import Stitch

#: Window statistics (observed p99s, the overhead quantile, the observed throughput) are at most
#: this old (s): each sorts or scans up to ``latency_s`` of requests, too much for every batch
#: and every admission at a thousand requests per second. The arrival rate is always fresh.
STATS_EVERY_S = 0.25
#: Weight of each batch's observed / predicted compute time in the slowdown factor.
SPEED_SMOOTHING = 0.2
#: The quantile of the time outside the batcher that every prediction adds.
OVERHEAD_QUANTILE = 90.0
#: The calibration (observed / model p99 on the running stitch) moves at most once per
#: ``CALIBRATE_EVERY_S``, by ``CALIBRATION_SMOOTHING`` of the way, within ``CALIBRATION_BOUNDS``,
#: and learns only from requests that arrived below ``CALIBRATE_BELOW`` of the stitch's capacity.
CALIBRATE_EVERY_S = 0.5
CALIBRATION_SMOOTHING = 0.5
CALIBRATION_BOUNDS = (0.25, 4.0)
CALIBRATE_BELOW = 0.9


def slo_front(results: Results, full_ms: Mapping[Stitch, float], metric: str) -> list[Record]:
    """The stitches an SLO moves between, cheapest first: on the front of batch-1 latency
    against ``metric``, on the multiply-adds front (doing more work for less accuracy is never
    a step down, however the timings fell), and on the front of full-batch time (``full_ms``)
    against ``metric`` (under load batches fill, and a stitch a little faster at batch 1 can be
    slower per full batch than a more accurate one)."""
    front = results.pareto("latency_ms", metric, complete=True)
    if not results.missing("gmacs"):
        by_macs = {r.stitch for r in results.pareto("gmacs", metric)}
        front = [r for r in front if r.stitch in by_macs] or front
    sign = FIELDS[metric].sign  # absrel: lower is better
    return pareto_front(front, lambda r: full_ms[r.stitch], lambda r: sign * getattr(r, metric))


class SloController:
    """Keeps a server on the most accurate stitch whose predicted p99 holds ``policy.slo_ms``.

    ``batch_ms`` gives the measured time of a full batch (``policy.max_batch`` images) per
    stitch; a stitch without one is assumed to cost ``max_batch`` × its batch-1 latency, which
    overestimates and so errs towards holding the SLO. ``one_ms`` gives the batch-1 time where
    the server runs stitches otherwise than the results measured them (traced); default: the
    results' ``latency_ms``. The controller starts on the best stitch for an idle server.

    :meth:`observe_arrival`, :meth:`observe_batch` and :meth:`observe_request` tell it what
    happens; :meth:`update`, called before each batch, picks the stitch. Every method takes the
    time ``now`` (seconds, any monotonic clock), so the policy is a pure function of what it was
    told. It switches by value: ``stitch`` is the running stitch, and nothing else changes.

    Example:
        >>> ctrl = SloController(results, SloPolicy(slo_ms=50), batch_ms={...})
        >>> ctrl.observe_arrival(time.monotonic())
        >>> stitch = ctrl.update(time.monotonic(), queue_depth=3, waited_ms=4.0, batch_size=8)
    """

    def __init__(
        self,
        results: Results,
        policy: SloPolicy,
        *,
        batch_ms: Mapping[Stitch, float] | None = None,
        one_ms: Mapping[Stitch, float] | None = None,
        metric: str | None = None,
    ) -> None:
        metric = metric or results.metric  # the task's: top1, miou or absrel
        self.policy = policy
        b = policy.max_batch
        full = {
            r.stitch: (batch_ms or {}).get(r.stitch, r.latency_ms * b)
            for r in results.pareto("latency_ms", metric, complete=True)
        }
        self.front: list[Record] = slo_front(results, full, metric)
        self.model = QueueModel(
            one_ms=tuple((one_ms or {}).get(r.stitch, r.latency_ms) for r in self.front),
            full_ms=tuple(full[r.stitch] for r in self.front),
            max_batch=b,
            max_wait_ms=policy.max_wait_ms,
        )
        self.slowdown = 1.0  # observed / measured compute time (smoothed)
        self.overhead_ms = 0.0  # recent time outside the batcher (OVERHEAD_QUANTILE)
        self.calibration = 1.0  # observed / model p99 on the running stitch (smoothed)
        self.fits = True  # the last update found a stitch predicted under the SLO
        self.switches = 0
        self.reliefs = 0  # batches run below the running stitch
        self.decision: dict[str, Any] = {}  # what the last update saw and did
        w = policy.windows
        self._positions = {r.stitch: i for i, r in enumerate(self.front)}
        self._rate = ArrivalRate(w)
        self._latencies = TimeWindow[float](w.latency_s)  # ms end to end, stamped at the end
        self._overheads = TimeWindow[float](w.latency_s)  # ms outside the batcher
        self._batches = TimeWindow[tuple[int, int, float]](w.latency_s)  # (index, size, ms)
        self._calibrated_at = -math.inf
        self._learnt_at = -math.inf  # the last calibration from evidence (not a decay)
        self._learnt_rate = 0.0  # ... and the arrival rate of that evidence
        self._switched_at = -math.inf
        self._up_since: float | None = None  # calm for a step up since
        self._climbing = False  # the last switch was a step up
        self._stats_at = -math.inf
        self._stats: tuple[float | None, float | None] = (None, None)  # (seen, recent) p99
        self._rps_at = -math.inf
        self._rps: tuple[int, float | None] = (-1, None)  # (running index, served_rps)
        idle = [
            i
            for i in range(len(self.front))
            if self.predict_p99(i, 0.0, 0) <= policy.steps.up_at * policy.slo_ms
        ]
        self._index = idle[-1] if idle else 0

    # -- the front -----------------------------------------------------------------------------
    @property
    def stitch(self) -> Stitch:
        """The running stitch."""
        return self.front[self._index].stitch

    @property
    def index(self) -> int:
        """The running stitch's position on :attr:`front` (0: the cheapest)."""
        return self._index

    def on_front(self, stitch: Stitch) -> bool:
        """Whether ``stitch`` is one the controller runs (its batches teach it the speed)."""
        return stitch in self._positions

    def front_index(self, stitch: Stitch) -> int:
        if stitch not in self._positions:
            raise ValueError(f"stitch {stitch} is not on the front the SLO controller uses")
        return self._positions[stitch]

    def _at(self, stitch: Stitch | int) -> int:
        return stitch if isinstance(stitch, int) else self.front_index(stitch)

    # -- predictions ---------------------------------------------------------------------------
    def batch_time(self, stitch: Stitch | int, size: int) -> float:
        """Predicted compute time (ms) of a batch of ``size`` on ``stitch`` at today's speed."""
        return self.model.batch_time(self._at(stitch), size, self.slowdown)

    def capacity(self, stitch: Stitch | int | None = None) -> float:
        """Requests per second ``stitch`` (default: the cheapest) carries at full batches."""
        return self.model.capacity(0 if stitch is None else self._at(stitch), self.slowdown)

    def model_p99(self, stitch: Stitch | int, rate: float, queue_depth: int) -> float:
        """The uncalibrated p99 (ms) at ``rate`` requests/s with ``queue_depth`` waiting, at
        today's speed and overhead (:meth:`QueueModel.p99 <snnet.control.queueing.QueueModel.p99>`)."""
        return self.model.p99(
            self._at(stitch),
            rate,
            queue_depth,
            slowdown=self.slowdown,
            overhead_ms=self.overhead_ms,
        )

    def predict_p99(self, stitch: Stitch | int, rate: float, queue_depth: int) -> float:
        """Predicted end-to-end p99 (ms): the model's figure times ``calibration``. Two parts
        are not scaled down: clearing the queue ahead (compute the backlog needs, whatever the
        model's pessimism about waiting) and computing the request's own batch (no p99 is
        shorter)."""
        i = self._at(stitch)
        ahead = self.model.ahead(i, queue_depth, self.slowdown)
        rest = self.model_p99(i, rate, queue_depth) - ahead
        return ahead + max(rest * self.calibration, self.model.own_batch(i, rate, self.slowdown))

    # -- what happens --------------------------------------------------------------------------
    def observe_arrival(self, now: float, count: int = 1) -> None:
        """``count`` requests arrived at ``now``."""
        self._rate.add(now, count)

    def observe_batch(
        self, stitch: Stitch, size: int, compute_ms: float, now: float | None = None
    ) -> None:
        """A batch of ``size`` ran on ``stitch`` in ``compute_ms``: track the machine's speed,
        and (given ``now``) the throughput it actually reaches (:meth:`served_rps`)."""
        i = self.front_index(stitch)
        predicted = self.model.batch_time(i, size)
        if predicted > 0:
            self.slowdown += SPEED_SMOOTHING * (compute_ms / predicted - self.slowdown)
        if now is not None:
            self._batches.add(now, (i, size, compute_ms))

    def observe_request(
        self, now: float, latency_ms: float, batcher_ms: float | None = None
    ) -> None:
        """A request finished at ``now`` after ``latency_ms`` end to end: from its arrival at
        the server (before its body was read) to its answer being ready. ``batcher_ms`` is the
        part the batcher saw (queue + compute); the rest (reading, decoding, waiting for the
        event loop, answering) is overhead that every stitch pays alike."""
        self._latencies.add(now, latency_ms)
        if batcher_ms is not None:
            self._overheads.add(now, max(0.0, latency_ms - batcher_ms))

    # -- what was observed ---------------------------------------------------------------------
    def arrival_rate(self, now: float) -> float:
        """Requests per second (see :class:`~snnet.control.rate.ArrivalRate`)."""
        return self._rate(now)

    def observed_p99(
        self, now: float, *, since_switch: bool = False, window_s: float | None = None
    ) -> float | None:
        """p99 of end-to-end latency over ``windows.latency_s`` (or the shorter ``window_s``;
        with ``since_switch``, of the requests that arrived after the last switch, and only
        once there are ``min_samples`` of them), if any."""
        self._latencies.forget(now)
        start = self._switched_at if since_switch else -math.inf
        if window_s is not None:
            start = max(start, now - window_s)
        xs = [ms for t, ms in self._latencies.items() if t - ms / 1e3 >= start]
        if not xs or (since_switch and len(xs) < self.policy.windows.min_samples):
            return None
        return percentile(xs, 99)

    def served_rps(self, now: float | None = None) -> float | None:
        """Requests per second the cheapest stitch clears in full batches at today's speed,
        from the batches observed over ``windows.latency_s`` (``None`` before any batch with
        ``now``): the images the batches on the running stitch completed per second they
        computed, converted by the model's ratio of per-image times (the running stitch at the
        batch size observed, the cheapest at a full batch). A backlog drains at that rate, so it
        sizes the admission queue."""
        if now is None:
            return self._served_rps()
        index, rps = self._rps
        if index == self._index and 0 <= now - self._rps_at < STATS_EVERY_S:
            return rps
        self._batches.forget(now)
        self._rps_at, self._rps = now, (self._index, self._served_rps())
        return self._rps[1]

    def _served_rps(self) -> float | None:
        runs = [(n, ms) for i, n, ms in self._batches.values() if i == self._index and ms > 0]
        if not runs:
            return None
        images, busy_ms = sum(n for n, _ in runs), sum(ms for _, ms in runs)
        size = max(1, round(images / len(runs)))
        b = self.policy.max_batch
        scale = (self.batch_time(self._index, size) / size) / (self.batch_time(0, b) / b)
        return images / busy_ms * 1e3 * scale

    def _window_stats(self, now: float) -> tuple[float | None, float | None]:
        """The p99 since the last switch over the whole window and over the recent one, and
        the overhead, recomputed at most every ``STATS_EVERY_S``."""
        if not 0 <= now - self._stats_at < STATS_EVERY_S:
            self._overheads.forget(now)
            xs = list(self._overheads.values())
            self.overhead_ms = percentile(xs, OVERHEAD_QUANTILE) if xs else 0.0
            self._stats_at = now
            self._stats = (
                self.observed_p99(now, since_switch=True),
                self.observed_p99(now, since_switch=True, window_s=self.policy.windows.recent_s),
            )
        return self._stats

    # -- deciding ------------------------------------------------------------------------------
    def update(
        self,
        now: float,
        queue_depth: int,
        *,
        waited_ms: float | None = None,
        batch_size: int = 1,
    ) -> Stitch:
        """Choose the running stitch (see :class:`~snnet.control.policy.Steps`), and return the
        stitch for the next batch: the running one, or a cheaper one for a relief batch when
        its oldest request has waited ``waited_ms`` (``batch_size`` images) and would miss its
        deadline (``waited_ms=None``: no relief).

        The running stitch follows the arrival rate: it is chosen on predictions for an empty
        queue (a queue that a burst forms is the relief batches' business; one that stays
        comes with a rate beyond the stitch). Stepping and calibrating follow the last
        ``windows.recent_s`` when it holds enough requests (a surge that has passed must not
        hold the server down for the whole window), else the whole window. ``queue_depth`` is
        recorded in ``decision``, which says what this update saw and did."""
        rate = self.arrival_rate(now)
        cur = self._index
        seen, recent = self._window_stats(now)
        if recent is not None:
            judged, window = recent, self.policy.windows.recent_s
        else:
            judged, window = seen, None
        self._calibrate(now, judged, window, rate)
        preds = [self.predict_p99(i, rate, 0) for i in range(len(self.front))]
        action = self._step(now, preds, judged, seen)
        run = self._index if waited_ms is None else self._relief(waited_ms, batch_size)
        if run != self._index:
            self.reliefs += 1
        self.decision = {
            "action": action,
            "from": str(self.front[cur].stitch),
            "to": str(self.stitch),
            "ran": str(self.front[run].stitch),
            "rate_rps": round(rate, 2),
            "queue_depth": queue_depth,
            "observed_p99_ms": None if seen is None else round(seen, 2),
            "recent_p99_ms": None if recent is None else round(recent, 2),
            "predicted_p99_ms": _ms(preds[cur]),
            "predicted_next_p99_ms": _ms(preds[cur + 1]) if cur + 1 < len(preds) else None,
            "slowdown": round(self.slowdown, 3),
            "overhead_ms": round(self.overhead_ms, 2),
            "calibration": round(self.calibration, 3),
        }
        return self.front[run].stitch

    def _step(
        self, now: float, preds: list[float], judged: float | None, seen: float | None
    ) -> str:
        """Step down at once as far as needed, or up after a calm hold; the action taken."""
        s, slo = self.policy.steps, self.policy.slo_ms
        cur = self._index
        fit = [i for i, v in enumerate(preds) if v <= s.down_at * slo]
        target = fit[-1] if fit else 0
        self.fits = bool(fit)
        if judged is not None and judged > s.down_at * slo:
            target = min(target, cur - 1)
        if target < cur:
            self._up_since, self._climbing = None, False
            self._switch(max(target, 0), now)
            return "down" if self._index < cur else "floor"
        calm = preds[cur + 1] <= s.up_at * slo if cur + 1 < len(preds) else False
        calm = calm and (judged is None or judged <= s.up_at * slo)
        # after a step up the next waits only climb_s (with min_samples seen on the new stitch)
        hold = s.climb_s if self._climbing and seen is not None else s.hold_s
        if not calm:
            self._up_since = None
        elif self._up_since is None:
            self._up_since = now
        elif now - self._up_since >= hold and now - self._switched_at >= hold:
            self._up_since = None
            up = cur + 1
            if s.jump_at is not None:  # straight to the best stitch well under the SLO
                up = max([up] + [i for i in fit if preds[i] <= s.jump_at * slo])
            self._switch(up, now)
            self._climbing = True
            return "up"
        return "stay"

    def _calibrate(
        self, now: float, seen: float | None, window_s: float | None, rate_now: float
    ) -> None:
        """Move ``calibration`` towards observed / model p99 on the running stitch.

        Both sides cover the same requests: those that arrived since the last switch within
        ``window_s`` (default ``windows.latency_s``), the model taken at the rate at which they
        arrived. Windows near capacity (their p99 is the backlog's) or at a rate 25 % away from
        the current one (they straddle a step in the load) teach nothing. Without evidence for
        ``windows.latency_s`` the factor decays towards 1, and a step in the load (the rate
        halves or doubles against the evidence's) restarts it from 1: it is the model's error
        at one load. The factor carries across switches: the next stitch is predicted with what
        the running one taught."""
        w = self.policy.windows
        if now - self._calibrated_at < CALIBRATE_EVERY_S:
            return
        if self._learnt_rate > 0 and not 0.5 < rate_now / self._learnt_rate < 2:
            self.calibration, self._learnt_rate = 1.0, 0.0
        if now - self._learnt_at > w.latency_s:  # no evidence for a while: decay
            decay = math.exp(-CALIBRATE_EVERY_S / w.latency_s)
            self.calibration = 1.0 + (self.calibration - 1.0) * decay
            self._calibrated_at = now
        if seen is None:
            return
        start = max(self._switched_at, now - (window_s or w.latency_s))
        arrived = [t - ms / 1e3 for t, ms in self._latencies.items() if t - ms / 1e3 >= start]
        span = now - min(arrived) if arrived else 0.0
        if span <= 0:
            return
        rate = len(arrived) / span
        if rate >= CALIBRATE_BELOW * self.capacity(self._index):
            return
        if abs(rate - rate_now) > 0.25 * max(rate, rate_now):
            return
        model = self.model_p99(self._index, rate, 0)
        if not 0 < model < math.inf:
            return
        lo, hi = CALIBRATION_BOUNDS
        ratio = min(hi, max(lo, seen / model))
        self.calibration += CALIBRATION_SMOOTHING * (ratio - self.calibration)
        self._calibrated_at = self._learnt_at = now
        self._learnt_rate = rate

    def _relief(self, waited_ms: float, size: int) -> int:
        """The front index for a batch of ``size`` whose oldest request has waited
        ``waited_ms``: the running stitch if it ends by ``deadline_at`` × SLO, else the most
        accurate cheaper one that does, else the cheapest."""
        p = self.policy
        left = p.steps.deadline_at * p.slo_ms - waited_ms - self.overhead_ms
        for i in range(self._index, 0, -1):
            if self.batch_time(i, size) <= left:
                return i
        return 0

    def _switch(self, index: int, now: float) -> Stitch:
        if index != self._index:
            self._index, self._switched_at = index, now
            self._stats_at = -math.inf  # what was seen since the last switch starts again
            self.switches += 1
        return self.stitch

    def __repr__(self) -> str:
        return (
            f"SloController(p99 <= {self.policy.slo_ms:g} ms, stitch='{self.stitch}', "
            f"front={len(self.front)} stitches, slowdown={self.slowdown:.2f})"
        )


def _ms(x: float) -> float | None:
    """A prediction for JSON: rounded, ``None`` for beyond capacity (infinite)."""
    return round(x, 2) if math.isfinite(x) else None
