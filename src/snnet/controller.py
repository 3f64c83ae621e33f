"""Following a budget that changes at runtime: pick the stitch for the current budget, switch.

Two kinds of budget share one controller and one Pareto front. A *cost budget* (``set_budget``)
maps to a stitch by a binary search. A *latency SLO* (``set_slo``) is for serving: the controller
predicts each front stitch's end-to-end p99 (forming a batch + waiting for the batches ahead +
computing it + the time a request spends in the server outside the batcher) from the arrival rate
and the times it observes, calibrated by how the p99 it observes on the running stitch compares
with its own prediction there, and runs the most accurate stitch whose prediction stays under the
SLO; it steps down at once, and after a hold steps up one stitch, or straight to the best stitch
predicted well under the SLO. The queue is handled batch by batch: a batch whose oldest request
would miss its deadline on the running stitch runs on a cheaper one (a *relief* batch), so the
running stitch can sit as close to the SLO as the best fixed stitch does.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from snnet.measure.pareto import pareto_front
from snnet.measure.results import FIELDS, Record, Results
from snnet.network import SNNet
from snnet.stitch import Stitch


@dataclass(frozen=True)
class SloPolicy:
    """How a served network follows a latency SLO (see :meth:`BudgetController.set_slo`).

    ``max_batch`` and ``max_wait_ms`` describe the batcher (a batch is run when it holds
    ``max_batch`` requests or its first request has waited ``max_wait_ms``). The controller steps
    down as soon as a stitch's predicted p99 exceeds ``down_at`` × SLO, or the p99 observed since
    the last switch does (over at least ``min_samples`` requests); it steps up only when the next
    stitch's prediction has stayed under ``up_at`` × SLO for ``hold_s`` seconds: the gap between
    the two fractions and the hold are the hysteresis that stops it flapping. It then climbs one
    stitch, or straight to the most accurate stitch predicted under ``jump_at`` × SLO when that
    is higher (``jump_at=None``: one stitch per hold), so that the server is back on the stitch
    the load allows within one hold after a surge, not one hold per stitch. After a step up the
    next one waits only ``climb_s`` (and ``min_samples`` requests seen on the new stitch):
    stepping up twice is no flap, and the hold is against stepping up right after a step down.

    A batch whose oldest request has waited so long that computing it on the running stitch
    would end after ``deadline_at`` × SLO (with the time outside the batcher) runs on the most
    accurate cheaper stitch that ends in time (the cheapest if none does): the running stitch
    does not change, no weights move, and the tail that queueing bursts add is cut where it
    forms. Without it the running stitch had to keep its *predicted* p99 under 0.8 × SLO to
    absorb those bursts, and settled 2 to 3 points of top-1 below the best fixed stitch.

    The arrival rate is the mean over ``rate_window_s``, or the rate over the last
    ``burst_window_s`` (or four times that) when that count is beyond what the mean allows (more
    than ``burst_sigmas`` standard deviations of a Poisson count above or below it): a step in
    the load shows within a fraction of a second, a Poisson fluctuation does not move the
    estimate.

    The calibration (observed / model p99 on the running stitch) learns only from windows of at
    least ``min_samples`` requests on one stitch that arrived at under ``calibrate_below`` of its
    capacity (a backlog's latencies say nothing about the model away from overload) and at a
    rate within 25 % of the current one (a window that straddles the end of a surge pairs the
    surge's latencies with a rate it averaged down). It decays towards 1 with time constant
    ``latency_window_s`` while no window qualifies, so that a surge cannot leave it at its
    bound, and a step in the load (the rate halves or doubles) restarts it from 1.

    The statistics over the long windows (observed p99s, the overhead quantile, the observed
    throughput) are recomputed at most every ``stats_every_s``: each sorts or scans up to
    ``latency_window_s`` of requests, and recomputing them for every batch and admission cost
    the event loop more than a third of the requests a demo-family server carried at 1,100
    per second; every 20 ms they still took 2.5 ms in 20 at 1,300 per second. The arrival rate
    is read at every update.
    """

    slo_ms: float
    max_batch: int = 8
    max_wait_ms: float = 5.0
    down_at: float = 1.0
    up_at: float = 0.85
    jump_at: float | None = 0.85
    hold_s: float = 2.0
    climb_s: float = 2.0  # the hold after a step up (see BudgetController.update)
    deadline_at: float = 0.85  # relief batches: see above
    # arrival rate over this window: a 2-s mean moved the prediction of the stitch above the
    # best one by +-25 % at a steady Poisson load, and the step up was never calm for a hold
    rate_window_s: float = 6.0
    burst_window_s: float = 0.25  # ... or over this one, when a step in the load shows there
    # 3 sigmas were crossed by chance every few seconds (tested at every batch), each a step down
    burst_sigmas: float = 5.0
    latency_window_s: float = 10.0  # observed p99 over this window
    recent_window_s: float = 3.0  # p99 for calibrating and stepping up: what the load is now
    min_samples: int = 30
    smoothing: float = 0.2  # of the compute slowdown factor
    overhead_quantile: float = 90.0  # of the time outside the batcher, added to every prediction
    # observed / predicted p99 on the running stitch: at most one step per calibrate_every_s,
    # by calibration_smoothing of the way, within calibration_range (see BudgetController.update)
    calibrate_every_s: float = 0.5
    calibration_smoothing: float = 0.5
    calibration_range: tuple[float, float] = (0.25, 4.0)
    calibrate_below: float = 0.9  # of the running stitch's capacity
    stats_every_s: float = 0.25  # window statistics are at most this old (0: always fresh)

    def __post_init__(self) -> None:
        if self.slo_ms <= 0 or self.max_batch < 1 or self.max_wait_ms < 0:
            raise ValueError("slo_ms must be > 0, max_batch >= 1 and max_wait_ms >= 0")
        if not 0 < self.deadline_at <= 1:
            raise ValueError("need 0 < deadline_at <= 1 (a fraction of the SLO)")
        if not 0 < self.up_at < self.down_at <= 1:
            raise ValueError("need 0 < up_at < down_at <= 1 (the gap is the hysteresis)")
        if self.jump_at is not None and not 0 < self.jump_at <= self.up_at:
            raise ValueError("need 0 < jump_at <= up_at (a jump needs more margin than a step)")
        lo, hi = self.calibration_range
        if not 0 < lo <= 1 <= hi or not 0 < self.calibration_smoothing <= 1:
            raise ValueError("need 0 < low <= 1 <= high calibration and smoothing in (0, 1]")


class BudgetController:
    """Keeps ``net`` on the most accurate stitch that fits the current budget.

    Only stitches on the Pareto front of ``cost`` (``latency_ms``, ``gmacs`` or ``params``)
    against ``metric`` are candidates, so a budget maps to a stitch by one binary search, and
    switching only sets ``net.stitch`` (no weights move). A budget below the cheapest stitch
    runs the cheapest one and reports ``fits = False`` instead of failing a live service.

    With ``adapt=True`` (latency budgets), :meth:`observe` takes the latency actually seen and
    scales the measured table by a smoothed slowdown factor, so the controller steps down when
    the machine gets busier than it was when latency was measured, and back up when it calms.

    With a latency SLO (:meth:`set_slo`, for a server), :meth:`observe_arrival`,
    :meth:`observe_batch` and :meth:`observe_request` feed it what happens, and :meth:`update`
    (called before each batch, with the queue depth) picks the stitch. Every method takes the time
    ``now`` (seconds, any monotonic clock) so the policy is a pure function of what it was told.

    Example:
        >>> ctrl = BudgetController(net, results, cost="latency_ms")
        >>> ctrl.set_budget(20.0)          # net now runs the best stitch under 20 ms
        Stitch('1:9-2:10')
        >>> start = time.perf_counter(); y = net(x)
        >>> ctrl.observe((time.perf_counter() - start) * 1e3)   # adapts to the machine's load
        >>> ctrl.set_slo(SloPolicy(slo_ms=50, max_batch=8), batch_ms={...})  # serving
        >>> stitch = ctrl.update(time.monotonic(), queue_depth=3)
    """

    def __init__(
        self,
        net: SNNet,
        results: Results,
        *,
        cost: str = "latency_ms",
        metric: str = "top1",
        adapt: bool = False,
        smoothing: float = 0.2,
    ) -> None:
        results.check_network(net)
        self.net, self.cost, self.metric = net, cost, metric
        self.results = results
        self.front: list[Record] = results.pareto(cost, metric, complete=True)
        self._costs = [getattr(r, cost) for r in self.front]
        self.adapt, self.smoothing = adapt, smoothing
        self.slowdown = 1.0  # observed / measured cost of the running stitch (smoothed)
        self.budget: float | None = None
        self.fits = True
        self.slo: SloPolicy | None = None
        self.switches = 0
        self.reliefs = 0  # with an SLO: batches run below the running stitch (see update)
        self.overhead_ms = 0.0  # with an SLO: recent time outside the batcher (ms)
        self.calibration = 1.0  # with an SLO: observed / predicted p99 (smoothed)
        self.decision: dict[str, object] = {}  # with an SLO: what the last update saw and did

    # -- latency SLO ------------------------------------------------------------------------
    def set_slo(
        self,
        policy: SloPolicy,
        *,
        batch_ms: Mapping[Stitch, float] | None = None,
        one_ms: Mapping[Stitch, float] | None = None,
    ) -> Stitch:
        """Follow a latency SLO from now on, starting on the best stitch for an idle server.

        ``batch_ms`` gives the measured time of a full batch (``policy.max_batch`` images) per
        front stitch; a stitch without one is assumed to cost ``max_batch`` × its batch-1
        latency, which overestimates and so errs towards holding the SLO. ``one_ms`` gives the
        batch-1 time where the server runs stitches otherwise than the results measured them
        (traced); default: the results' ``latency_ms``.
        """
        if self.cost != "latency_ms":
            raise ValueError("a latency SLO needs cost='latency_ms' (measure with snnet latency)")
        self.slo, self.budget = policy, None
        b = policy.max_batch
        full = {r.stitch: (batch_ms or {}).get(r.stitch, r.latency_ms * b) for r in self.front}
        # Under load batches fill, and a stitch only a little faster at batch 1 (fixed cost per
        # block, or timing noise) can be slower per full batch than a more accurate one: it would
        # never help to step down to it. So the SLO moves between stitches that are also on the
        # multiply-adds front (doing more work for less accuracy is never a step down, however
        # the timings fell), and on the front of full-batch time against the metric.
        metric = self.metric
        if not self.results.missing("gmacs"):
            by_macs = {r.stitch for r in self.results.pareto("gmacs", metric)}
            self.front = [r for r in self.front if r.stitch in by_macs] or self.front
        self.front = pareto_front(
            self.front, lambda r: full[r.stitch], lambda r: getattr(r, metric)
        )
        self._costs = [getattr(r, self.cost) for r in self.front]  # (set_budget: not with an SLO)
        self._t1 = [(one_ms or {}).get(r.stitch, r.latency_ms) for r in self.front]
        self._tb = [full[r.stitch] for r in self.front]
        self._arrivals: deque[float] = deque()
        self._since: float | None = None  # the first arrival, or the last step in the load
        self._latencies: deque[tuple[float, float]] = deque()  # (finished at, ms)
        self._overheads: deque[tuple[float, float]] = deque()  # (finished at, ms outside batcher)
        self._batches: deque[tuple[float, int, int, float]] = deque()  # (at, index, size, ms)
        self.overhead_ms = 0.0
        self.calibration, self._calibrated_at, self.decision = 1.0, float("-inf"), {}
        self._learnt_at = float("-inf")  # the last calibration from evidence (not a decay)
        self._learnt_rate = 0.0  # ... and the arrival rate of that evidence
        self._index, self._switched_at, self._up_since = 0, float("-inf"), None
        self._stats_at, self._stats = float("-inf"), (None, None)  # (seen, recent) p99s
        self._rps_at, self._rps = float("-inf"), (-1, None)  # (running index, served_rps)
        self._climbing = False  # the last switch was a step up
        self.slowdown = 1.0
        idle = [
            i
            for i in range(len(self.front))
            if self.predict_p99(i, 0.0, 0) <= policy.up_at * policy.slo_ms
        ]
        self._index = idle[-1] if idle else 0  # the best stitch for an idle server
        self.net.stitch = self.front[self._index].stitch
        return self.net.stitch

    def batch_time(self, stitch: Stitch | int, size: int) -> float:
        """Predicted compute time (ms) of a batch of ``size`` on ``stitch`` at today's speed:
        linear between the batch-1 latency and the full-batch time, times the slowdown."""
        i = stitch if isinstance(stitch, int) else self._front_index(stitch)
        b = self.slo.max_batch if self.slo else 1
        t1, tb = self._t1[i], self._tb[i]
        per_image = (tb - t1) / (b - 1) if b > 1 else 0.0
        return (t1 + per_image * (max(size, 1) - 1)) * self.slowdown

    def observe_arrival(self, now: float, count: int = 1) -> None:
        """``count`` requests arrived at ``now``."""
        self._arrivals.extend([now] * count)
        if self._since is None:
            self._since = now

    def observe_batch(
        self, stitch: Stitch, size: int, compute_ms: float, now: float | None = None
    ) -> None:
        """A batch of ``size`` ran on ``stitch`` in ``compute_ms``: track the machine's speed,
        and (given ``now``) the throughput it actually reaches (:meth:`served_rps`)."""
        i = self._front_index(stitch)
        predicted = self.batch_time(i, size) / self.slowdown
        if predicted > 0:
            ratio = compute_ms / predicted
            self.slowdown += self.slo.smoothing * (ratio - self.slowdown)
        if now is not None:
            self._batches.append((now, i, size, compute_ms))

    def served_rps(self, now: float | None = None) -> float | None:
        """Requests per second the cheapest stitch clears in full batches at today's speed,
        from what was observed over ``latency_window_s`` (``None`` before any batch with
        ``now``): the images the batches on the running stitch completed per second they
        computed, converted by the table's ratio of per-image times (the running stitch at the
        batch size observed, the cheapest at a full batch). A backlog drains at that rate (it
        runs in full batches, on the cheapest stitch), so it sizes the admission queue: under
        a light load batches hold one or two images, and their own rate would refuse the
        start of a surge that full batches clear."""
        if now is not None:
            index, rps = self._rps
            if index == self._index and 0 <= now - self._rps_at < self.slo.stats_every_s:
                return rps
            while self._batches and self._batches[0][0] < now - self.slo.latency_window_s:
                self._batches.popleft()
            self._rps_at, self._rps = now, (self._index, self._served_rps())
            return self._rps[1]
        return self._served_rps()

    def _served_rps(self) -> float | None:
        runs = [(n, ms) for _, i, n, ms in self._batches if i == self._index and ms > 0]
        if not runs:
            return None
        images, busy_ms = sum(n for n, _ in runs), sum(ms for _, ms in runs)
        size = max(1, round(images / len(runs)))
        b = self.slo.max_batch
        scale = (self.batch_time(self._index, size) / size) / (self.batch_time(0, b) / b)
        return images / busy_ms * 1e3 * scale

    def observe_request(
        self, now: float, latency_ms: float, batcher_ms: float | None = None
    ) -> None:
        """A request finished at ``now`` after ``latency_ms`` end to end: from its arrival at
        the server (before its body was read) to its answer being ready. ``batcher_ms`` is the
        part the batcher saw (queue + compute); the rest (reading, decoding, waiting for the
        event loop, answering) is overhead that every stitch pays alike, and the controller adds
        its recent ``overhead_quantile`` to each prediction."""
        self._latencies.append((now, latency_ms))
        if batcher_ms is not None:
            self._overheads.append((now, max(0.0, latency_ms - batcher_ms)))

    def _update_overhead(self, now: float) -> float:
        while self._overheads and self._overheads[0][0] < now - self.slo.latency_window_s:
            self._overheads.popleft()
        xs = sorted(ms for _, ms in self._overheads)
        q = self.slo.overhead_quantile / 100
        self.overhead_ms = xs[min(len(xs) - 1, math.ceil(q * len(xs)) - 1)] if xs else 0.0
        return self.overhead_ms

    def arrival_rate(self, now: float) -> float:
        """Requests per second: over the last ``rate_window_s``, or over the last
        ``burst_window_s`` when more arrived there than the longer mean explains (see
        :class:`SloPolicy`). Without the short window a 4× step in the load took a second to
        show in a 2-second mean, while a full batch on an expensive stitch filled the queue."""
        p = self.slo
        window = p.rate_window_s
        while self._arrivals and self._arrivals[0] < now - window:
            self._arrivals.popleft()
        short = p.burst_window_s
        # a server younger than the window (or a load since its last step) has arrivals over
        # that time only (the whole window undercounted the first seconds' rate, and the
        # controller stepped up on it)
        if self._since is not None:
            window = min(window, max(short, now - self._since))
        rate = len(self._arrivals) / window
        # the short window shows a surge within a fraction of a second; one four times as long
        # shows its end (a 4× drop from the surge's mean is within 5 sigmas of a 0.25-s count)
        n = len(self._arrivals)  # in time order: counted by bisection (1 s is 1,300 at a surge)
        in_short = n - bisect_left(self._arrivals, now - short)
        in_long = n - bisect_left(self._arrivals, now - 4 * short)
        for w, recent in ((short, in_short), (4 * short, in_long)):
            expected = rate * w
            if abs(recent - expected) > p.burst_sigmas * math.sqrt(max(expected, 1.0)):
                # a step up (a surge) or down (its end): the mean restarts from the step, or
                # a surge's arrivals kept it up for a whole window after the surge ended
                while self._arrivals and self._arrivals[0] < now - w:
                    self._arrivals.popleft()
                self._since = now - w
                return recent / w
        return rate

    def observed_p99(
        self, now: float, *, since_switch: bool = False, window_s: float | None = None
    ) -> float | None:
        """p99 of end-to-end latency over ``latency_window_s`` (or the shorter ``window_s``;
        since the last switch with ``since_switch``), if any."""
        while self._latencies and self._latencies[0][0] < now - self.slo.latency_window_s:
            self._latencies.popleft()
        # since a switch: only requests that arrived after it, so what they saw is the new stitch
        start = self._switched_at if since_switch else float("-inf")
        if window_s is not None:
            start = max(start, now - window_s)
        xs = sorted(ms for t, ms in self._latencies if t - ms / 1e3 >= start)
        if not xs or (since_switch and len(xs) < self.slo.min_samples):
            return None
        return xs[min(len(xs) - 1, math.ceil(0.99 * len(xs)) - 1)]

    def predict_p99(self, stitch: Stitch | int, rate: float, queue_depth: int) -> float:
        """Predicted end-to-end p99 (ms) on ``stitch`` at ``rate`` requests/s with
        ``queue_depth`` requests waiting: the model's figure (:meth:`model_p99`) times the
        ``calibration`` learnt on the stitches that ran (see :meth:`update`). Two parts are
        not scaled down: clearing the queue ahead (compute the backlog needs, whatever the
        model's pessimism about waiting) and the time to compute the request's own batch at
        today's speed (no p99 is shorter)."""
        ahead = self._ahead(stitch, queue_depth)
        rest = self.model_p99(stitch, rate, queue_depth) - ahead
        return ahead + max(rest * self.calibration, self._own_batch(stitch, rate))

    def _ahead(self, stitch: Stitch | int, queue_depth: int) -> float:
        """Compute time (ms) of the full batches ``queue_depth`` waiting requests form."""
        b = self.slo.max_batch
        return math.ceil(queue_depth / b) * self.batch_time(stitch, b)

    def _own_batch(self, stitch: Stitch | int, rate: float) -> float:
        """Compute time (ms) of the batch a request arriving at ``rate`` runs in."""
        p = self.slo
        lam = rate / 1e3
        b = min(p.max_batch, max(1, round(lam * (p.max_wait_ms + self.batch_time(stitch, 1)))))
        return self.batch_time(stitch, b)

    def model_p99(self, stitch: Stitch | int, rate: float, queue_depth: int) -> float:
        """The uncalibrated p99 (ms): forming the batch, clearing the queue ahead, waiting as
        in an M/M/1 queue served at the full-batch rate (p99 wait = ln(100 ρ) / (μ − λ)),
        halved for near-constant batch times (M/D/1), computing its own batch, and the recent
        overhead outside the batcher (``overhead_ms``, see :meth:`observe_request`).

        μ is what the stitch clears in full batches: whenever requests wait, the next batch
        takes them all (up to ``max_batch``), so a backlog drains at that rate. An earlier μ
        at the batch size of a light load (one or two) overstated the p99 by a factor that grew
        with the load, from 1.2× on the cheapest stitch to 10× three stitches above the best
        one for the rate (in tests/test_controller_sim.py): no single calibration factor fitted
        them all, and the server never climbed to the stitch the rate allowed. The model is
        still off by a factor that depends on the machine and the load (within 15 % along the
        front in that simulation; 0.9 to 3.9 in a benchmark run on a loaded machine), far more
        uniform along the front, which the calibration against what is observed takes out."""
        p = self.slo
        lam = rate / 1e3  # per ms
        tb = self._own_batch(stitch, rate)
        full = self.batch_time(stitch, p.max_batch)
        mu = p.max_batch / full if full > 0 else math.inf  # requests served per ms
        if lam >= mu:
            return math.inf
        # batch size in steady state: what arrives while one batch waits and runs
        b = min(p.max_batch, max(1, round(lam * (p.max_wait_ms + self.batch_time(stitch, 1)))))
        form = min(p.max_wait_ms, b / lam) if lam > 0 else p.max_wait_ms
        ahead = self._ahead(stitch, queue_depth)
        rho = lam / mu
        # half the M/M/1 tail: a batch takes a near-constant time, and with constant service
        # (M/D/1) the Pollaczek-Khinchine mean wait is half the exponential one's
        wait = 0.5 * max(0.0, math.log(100 * rho)) / (mu - lam) if rho > 0 else 0.0
        return form + ahead + wait + tb + self.overhead_ms

    def capacity(self, stitch: Stitch | int | None = None) -> float:
        """Requests per second ``stitch`` (default: the cheapest) carries at full batches."""
        i = 0 if stitch is None else stitch
        return self.slo.max_batch / self.batch_time(i, self.slo.max_batch) * 1e3

    def _calibrate(
        self, now: float, seen: float | None, window_s: float | None, rate_now: float
    ) -> None:
        """Move ``calibration`` towards observed / model p99 on the running stitch.

        Both sides cover the same requests: those that arrived since the last switch within
        ``window_s`` (default ``latency_window_s``), the model taken at the rate at which they arrived (not the last
        ``rate_window_s``, which a surge changes before the latencies show it). One step per
        ``calibrate_every_s``, smoothed and bounded, so one odd window neither flaps the
        stitch nor switches the model off. The factor carries across switches: the next
        stitch is predicted with what the running one taught."""
        p = self.slo
        if now - self._calibrated_at < p.calibrate_every_s:
            return
        if self._learnt_rate > 0 and not 0.5 < rate_now / self._learnt_rate < 2:
            # a step in the load: the factor is the model's error at the load it was learnt
            # at (a surge left 2.3 behind on the real server, holding the next steady phase
            # on the cheapest stitch for 6 s), so it starts again from the model
            self.calibration, self._learnt_rate = 1.0, 0.0
        if now - self._learnt_at > p.latency_window_s:  # no evidence for a while: decay
            decay = math.exp(-p.calibrate_every_s / p.latency_window_s)
            self.calibration = 1.0 + (self.calibration - 1.0) * decay
            self._calibrated_at = now
        if seen is None:
            return
        start = max(self._switched_at, now - (window_s or p.latency_window_s))
        arrived = [t - ms / 1e3 for t, ms in self._latencies if t - ms / 1e3 >= start]
        span = now - min(arrived) if arrived else 0.0
        if span <= 0:
            return
        rate = len(arrived) / span
        if rate >= p.calibrate_below * self.capacity(self._index):
            return  # near overload the p99 is the backlog's, not the model's error
        if abs(rate - rate_now) > 0.25 * max(rate, rate_now):
            return  # the window straddles a step in the load: its p99 is the other side's
        model = self.model_p99(self._index, rate, 0)
        if not 0 < model < math.inf:
            return
        lo, hi = p.calibration_range
        ratio = min(hi, max(lo, seen / model))
        self.calibration += p.calibration_smoothing * (ratio - self.calibration)
        self._calibrated_at = self._learnt_at = now
        self._learnt_rate = rate

    def update(
        self,
        now: float,
        queue_depth: int,
        *,
        waited_ms: float | None = None,
        batch_size: int = 1,
    ) -> Stitch:
        """Choose the running stitch (see :class:`SloPolicy`), switch to it, and return the
        stitch for the next batch: the running one, or a cheaper one for a relief batch when
        its oldest request has waited ``waited_ms`` (``batch_size`` images) and would miss
        its deadline (``waited_ms=None``: no relief; ``net.stitch`` stays the running one).

        The running stitch follows the arrival rate: it is chosen on predictions for an empty
        queue (a queue that a burst forms is the relief batches' business; one that stays
        comes with a rate beyond the stitch), and every prediction is the model's figure
        times ``calibration``: the ratio of the p99 observed on the running stitch to the
        model's figure for it, smoothed (:meth:`_calibrate`). Without it the model's pessimism (an M/M/1 wait at batches of
        one or two, plus the tail of the time outside the batcher) kept the next stitch's
        prediction above the step-up line while the server measured a third of the SLO: it
        never climbed back. ``queue_depth`` is recorded in ``decision``, which says what this
        update saw and did (``/v1/status`` shows it)."""
        p = self.slo
        if p is None:
            raise ValueError("call set_slo first")
        rate = self.arrival_rate(now)
        cur = self._index
        if not 0 <= now - self._stats_at < p.stats_every_s:
            self._update_overhead(now)
            # calibrating and stepping follow the last few seconds when they hold enough
            # requests (once a surge has passed, its latencies must not hold the server down
            # for the whole observation window), else the whole window
            self._stats_at, self._stats = (
                now,
                (
                    self.observed_p99(now, since_switch=True),
                    self.observed_p99(now, since_switch=True, window_s=p.recent_window_s),
                ),
            )
        seen, recent = self._stats
        judged, window = (recent, p.recent_window_s) if recent is not None else (seen, None)
        self._calibrate(now, judged, window, rate)
        preds = [self.predict_p99(i, rate, 0) for i in range(len(self.front))]
        fit = [i for i, v in enumerate(preds) if v <= p.down_at * p.slo_ms]
        target = fit[-1] if fit else 0
        self.fits = bool(fit)
        if judged is not None and judged > p.down_at * p.slo_ms:
            target = min(target, cur - 1)
        action = "stay"
        if target < cur:  # step down at once, as far as needed
            self._up_since, self._climbing = None, False
            self._switch(max(target, 0), now)
            action = "down" if self._index < cur else "floor"
        else:
            calm = preds[cur + 1] <= p.up_at * p.slo_ms if cur + 1 < len(preds) else False
            calm = calm and (judged is None or judged <= p.up_at * p.slo_ms)
            # after a step up, the next waits only climb_s (with min_samples seen on the new
            # stitch); after a step down, hold_s: the hysteresis is against down-then-up
            hold = p.climb_s if self._climbing and seen is not None else p.hold_s
            if not calm:
                self._up_since = None
            elif self._up_since is None:
                self._up_since = now
            elif now - self._up_since >= hold and now - self._switched_at >= hold:
                self._up_since = None
                up = cur + 1
                if p.jump_at is not None:  # straight to the best stitch well under the SLO
                    up = max([up] + [i for i in fit if preds[i] <= p.jump_at * p.slo_ms])
                self._switch(up, now)
                self._climbing = True
                action = "up"
        run = self._index if waited_ms is None else self._relief(waited_ms, batch_size)
        if run != self._index:
            self.reliefs += 1
        self.decision = {
            "action": action,
            "from": str(self.front[cur].stitch),
            "to": str(self.net.stitch),
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

    def _relief(self, waited_ms: float, size: int) -> int:
        """The front index for a batch of ``size`` whose oldest request has waited
        ``waited_ms``: the running stitch if it ends by ``deadline_at`` × SLO, else the most
        accurate cheaper one that does, else the cheapest."""
        left = self.slo.deadline_at * self.slo.slo_ms - waited_ms - self.overhead_ms
        for i in range(self._index, 0, -1):
            if self.batch_time(i, size) <= left:
                return i
        return 0

    def _switch(self, index: int, now: float) -> Stitch:
        if index != self._index:
            self._index, self._switched_at = index, now
            self._stats_at = float("-inf")  # what was seen since the last switch starts again
            self.switches += 1
            self.net.stitch = self.front[index].stitch  # a value swap: no weights move
        return self.net.stitch

    def on_front(self, stitch: Stitch) -> bool:
        """Whether ``stitch`` is one the controller runs (its batches teach it the speed)."""
        return any(r.stitch == stitch for r in self.front)

    def _front_index(self, stitch: Stitch) -> int:
        for i, r in enumerate(self.front):
            if r.stitch == stitch:
                return i
        raise ValueError(f"stitch {stitch} is not on the Pareto front the controller uses")

    def choose(self, budget: float) -> Record:
        """The front row for ``budget`` (in units of ``cost``), without switching: the most
        accurate that fits, else the cheapest. Safe to call from several threads."""
        i = bisect_right(self._costs, budget / self.slowdown) - 1
        return self.front[max(i, 0)]

    def set_budget(self, budget: float) -> Stitch:
        """Switch ``net`` to the stitch for ``budget`` and return it."""
        row = self.choose(budget)
        self.budget = budget
        self.fits = getattr(row, self.cost) * self.slowdown <= budget
        self.net.stitch = row.stitch
        return row.stitch

    def observe(self, value: float) -> Stitch:
        """Report the cost actually seen for one call of the current stitch (e.g. measured ms);
        with ``adapt=True`` the stitch is re-chosen for the current budget."""
        if self.adapt and self.budget is not None:
            expected = getattr(self._row(self.net.stitch), self.cost)
            ratio = value / expected if expected > 0 else 1.0
            self.slowdown += self.smoothing * (ratio - self.slowdown)
            return self.set_budget(self.budget)
        return self.net.stitch

    def _row(self, stitch: Stitch) -> Record:
        return self.front[self._front_index(stitch)]

    def __repr__(self) -> str:
        budget = "none" if self.budget is None else FIELDS[self.cost].format(self.budget)
        if self.slo is not None:
            budget = f"p99 <= {self.slo.slo_ms:g} ms"
        return (
            f"BudgetController(cost={self.cost!r}, budget={budget}, stitch='{self.net.stitch}', "
            f"front={len(self.front)} stitches, slowdown={self.slowdown:.2f})"
        )


def _ms(x: float) -> float | None:
    """A prediction for JSON: rounded, ``None`` for beyond capacity (infinite)."""
    return round(x, 2) if math.isfinite(x) else None
