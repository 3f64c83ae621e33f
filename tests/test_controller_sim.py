"""The SLO controller in a simulated server: the dynamics the benchmark measures, deterministic.

A discrete-event simulation drives the real :class:`SloController` (and the batcher's real
admission bound, :func:`queue_limit`) with a fake clock: Poisson arrivals from a seeded RNG, one
bounded queue, batches that close at ``max_batch`` or after ``max_wait_ms``, one worker computing
a batch in the table's time × the machine's speed × a little noise, and a few milliseconds per
request outside the batcher. The schedule is the benchmark's (``benchmarks/bench_serve.py``):
steady at R, a surge to 4R, R again, then R on a machine 1.5× slower (contention). The front is
shaped like the benchmark's compute family (batch-1 latency 4 to 28.6 ms, a full batch 6.2× that,
stand-in top-1 70 to 80), and R puts the surge midway between what the largest and the
smallest stitch carry in full batches (the benchmark takes the same midpoint of what they carry
within the SLO, measured with its client beside the server). The assertions are the serving
goals: p99 under the SLO and under 1 % refused in every phase, served top-1 within 0.3 point of
the best fixed stitch that holds the SLO at R, no flapping of the running stitch (relief batches,
which run a cheaper stitch for one batch whose oldest request would miss its deadline, are not
switches).
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

import pytest

import snnet
from families import FAMILIES
from snnet.control import SloController
from snnet.measure.results import Results
from snnet.serve.admission import queue_limit
from snnet.serve.settings import ServeSettings
from test_controller import policy

SLO_MS, MAX_BATCH, MAX_WAIT_MS = 100.0, 8, 5.0
FULL_OVER_ONE = 6.2  # a full batch of 8 costs this many batch-1 latencies
OUTSIDE_MS = 3.0  # per request outside the batcher (reading, decoding, answering), plus noise


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    rate: float  # requests per second
    speed: float = 1.0  # compute time × this (the machine's slowdown against the table)


@dataclass
class PhaseStats:
    latencies: list[float] = field(default_factory=list)  # ms, of answered requests
    refused: int = 0
    top1: list[float] = field(default_factory=list)  # the served stitch's, per answer
    indices: list[tuple[float, int]] = field(default_factory=list)  # (time, running index)

    @property
    def p99(self) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, math.ceil(0.99 * len(xs)) - 1)]

    @property
    def refused_share(self) -> float:
        return self.refused / (self.refused + len(self.latencies))

    @property
    def served_top1(self) -> float:
        return sum(self.top1) / len(self.top1)


def make_controller(**knobs) -> SloController:
    net = snnet.SNNet(FAMILIES["vit"][0]()).eval()
    res = Results.for_network(net)
    rows = sorted(res, key=lambda r: r.gmacs)
    n = len(rows) - 1
    for i, r in enumerate(rows):
        res.update(r.stitch, top1=round(70 + 10 * i / n, 3), latency_ms=4.0 + 24.6 * i / n)
    batch_ms = {r.stitch: FULL_OVER_ONE * r.latency_ms for r in res}
    settings = {"slo_ms": SLO_MS, "max_batch": MAX_BATCH, "max_wait_ms": MAX_WAIT_MS, **knobs}
    return SloController(res, policy(**settings), batch_ms=batch_ms)


def true_batch_ms(ctrl: SloController, index: int, size: int) -> float:
    """What a batch really costs on a machine as fast as the table's (linear in the size)."""
    r = ctrl.front[index]
    t1, tb = r.latency_ms, FULL_OVER_ONE * r.latency_ms
    return t1 + (tb - t1) * (size - 1) / (MAX_BATCH - 1)


def capacity(ctrl: SloController, index: int, speed: float = 1.0) -> float:
    """Requests per second ``index`` carries in full batches at ``speed``."""
    return MAX_BATCH / (true_batch_ms(ctrl, index, MAX_BATCH) * speed) * 1e3


def schedule(ctrl: SloController, seconds: float = 15.0) -> list[Phase]:
    """The benchmark's phases, with the surge midway between the two ends' capacities."""
    rate = (capacity(ctrl, 0) + capacity(ctrl, len(ctrl.front) - 1)) / 2 / 4
    return [
        Phase("steady", seconds, rate),
        Phase("surge", seconds, 4 * rate),
        Phase("steady_again", seconds, rate),
        Phase("contention", seconds, rate, speed=1.5),
    ]


def simulate(
    ctrl: SloController,
    phases: list[Phase],
    *,
    seed: int = 0,
    fixed: int | None = None,
    on_batch: Callable[[float, SloController], None] | None = None,
) -> dict[str, PhaseStats]:
    """Serve ``phases`` with ``ctrl`` choosing the stitch before each batch (or the front stitch
    ``fixed``, with the queue bound of ``snnet serve`` without an SLO); per phase
    (by arrival time) what the clients saw."""
    rng = random.Random(seed)
    arrivals = poisson_arrivals(phases, rng)
    stats = {ph.name: PhaseStats() for ph in phases}
    settings = ServeSettings(slo_ms=None if fixed is not None else SLO_MS, max_batch=MAX_BATCH)
    queue: deque[tuple[float, float, Phase]] = deque()  # (arrived, queued, phase)
    k, now = 0, 0.0

    def admit_until(t: float, stop_at_full: bool = False) -> float | None:
        """Admit the arrivals that reached the queue by ``t``; with ``stop_at_full``, stop
        once the queue holds a full batch and return when that happened."""
        nonlocal k
        while k < len(arrivals):
            arrived, queued, ph = arrivals[k]
            if queued > t:
                return None
            k += 1
            limit = queue_limit(settings, None if fixed is not None else ctrl, queued)
            if len(queue) + 1 > limit:
                stats[ph.name].refused += 1
                continue
            queue.append((arrived, queued, ph))
            if fixed is None:
                ctrl.observe_arrival(queued)
            if stop_at_full and len(queue) >= MAX_BATCH:
                return queued
        return None

    while k < len(arrivals) or queue:
        admit_until(now)
        if not queue:
            now = max(now, arrivals[k][1])
            continue
        if len(queue) < MAX_BATCH:  # the batch closes when full or at its deadline
            deadline = queue[0][1] + MAX_WAIT_MS / 1e3
            full_at = admit_until(deadline, stop_at_full=True)
            now = max(now, full_at if full_at is not None else deadline)
        batch = [queue.popleft() for _ in range(min(MAX_BATCH, len(queue)))]
        if fixed is None:  # the stitch for this batch (a relief batch's or the running one)
            waited_ms = (now - batch[0][1]) * 1e3
            stitch = ctrl.update(now, len(queue), waited_ms=waited_ms, batch_size=len(batch))
            index, running = ctrl.front_index(stitch), ctrl.index
        else:
            index = running = fixed
        st = stats[batch[0][2].name]
        st.indices.append((now, running))
        noise = math.exp(rng.gauss(0.0, 0.1))
        speed = phase_at(phases, now).speed
        ms = true_batch_ms(ctrl, index, len(batch)) * speed * noise
        end = now + ms / 1e3
        admit_until(end)  # arrivals during the compute queue up (or are refused) meanwhile
        stitch = ctrl.front[index].stitch
        if fixed is None:
            ctrl.observe_batch(stitch, len(batch), ms, end)
        for arrived, queued, ph in batch:
            done = end + (OUTSIDE_MS * (0.5 + rng.random())) / 2e3
            latency = (done - arrived) * 1e3
            if fixed is None:
                ctrl.observe_request(done, latency, batcher_ms=(end - queued) * 1e3)
            stats[ph.name].latencies.append(latency)
            stats[ph.name].top1.append(ctrl.front[index].top1)
        if on_batch is not None:
            on_batch(end, ctrl)
        now = end
    return stats


def poisson_arrivals(phases: list[Phase], rng: random.Random) -> list[tuple[float, float, Phase]]:
    """Each request's arrival at the server and at the queue (half the time outside the
    batcher later), and its phase."""
    arrivals = []
    start = 0.0
    for ph in phases:
        t = start + rng.expovariate(ph.rate)
        while t < start + ph.seconds:
            before_ms = OUTSIDE_MS * (0.5 + rng.random()) / 2  # half of it before the queue
            arrivals.append((t, t + before_ms / 1e3, ph))
            t += rng.expovariate(ph.rate)
        start += ph.seconds
    return arrivals


def phase_at(phases: list[Phase], t: float) -> Phase:
    start = 0.0
    for ph in phases:
        if t < start + ph.seconds:
            return ph
        start += ph.seconds
    return phases[-1]


def best_fixed(ctrl: SloController, phase: Phase, seed: int = 0) -> tuple[int, float]:
    """The most accurate front stitch whose p99 at ``phase`` stays under the SLO, with the
    top-1 it serves (the benchmark's ``best_fixed`` mode)."""
    best = 0
    for i in range(len(ctrl.front)):
        if simulate(ctrl, [phase], seed=seed, fixed=i)[phase.name].p99 < SLO_MS:
            best = i
    return best, ctrl.front[best].top1


@pytest.fixture(scope="module")
def run() -> tuple[SloController, list[Phase], dict[str, PhaseStats]]:
    ctrl = make_controller()
    phases = schedule(ctrl)
    return ctrl, phases, simulate(ctrl, phases, seed=1)


@pytest.mark.parametrize("phase", ["steady", "surge", "steady_again", "contention"])
def test_sim_p99_stays_under_the_slo_with_under_one_percent_refused(run, phase):
    """The serving goal, every phase; the surge's first second is the hard part (a full batch
    on an expensive stitch while the queue fills)."""
    _, _, stats = run
    st = stats[phase]
    assert st.p99 < SLO_MS, f"{phase}: p99 {st.p99:.0f} ms"
    assert st.refused_share < 0.01, f"{phase}: {st.refused_share:.1%} refused"


def test_sim_steady_quality_is_within_a_third_of_a_point_of_the_best_fixed_stitch(run):
    """Served top-1 at R within 0.3 point of the best fixed stitch that holds the SLO there:
    relief batches absorb the bursts, so the running stitch can sit as close to the SLO as
    the best fixed stitch."""
    _, phases, stats = run
    index, top1 = best_fixed(make_controller(), phases[0], seed=1)
    assert index > 0  # the test means something: the best fixed stitch is not the cheapest
    served = stats["steady"].served_top1
    assert served >= top1 - 0.3, f"served {served:.2f} against {top1:.2f} fixed"


def test_sim_goals_over_ten_arrival_sequences():
    """The same goals over ten seeds, so that one lucky sequence of arrivals proves nothing.
    The best fixed stitch of a seed is chosen by luck as much as by speed (its own p99 is
    close to the SLO), so the gap to it is held on the mean, with a looser bound per seed."""
    gaps = []
    for seed in range(10):
        ctrl = make_controller()
        phases = schedule(ctrl)
        stats = simulate(ctrl, phases, seed=seed)
        for name, st in stats.items():
            assert st.p99 < SLO_MS and st.refused_share < 0.01, (seed, name, st.p99)
        _, top1 = best_fixed(make_controller(), phases[0], seed=seed)
        gaps.append(stats["steady"].served_top1 - top1)
    mean = sum(gaps) / len(gaps)
    assert mean >= -0.3 and min(gaps) >= -1.0, [round(g, 2) for g in gaps]


def _settled(st: PhaseStats, after_s: float) -> list[int]:
    """The front index of each batch from ``after_s`` into the phase on."""
    t0 = st.indices[0][0]
    return [i for t, i in st.indices if t - t0 >= after_s]


def test_sim_climbs_back_within_a_few_seconds_after_the_surge(run):
    """The end of the surge shows in the short rate window and the climb jumps: within 5 s the
    server is back near the stitch it ran before the surge."""
    _, _, stats = run
    before = stats["steady"].indices[-1][1]
    assert before >= 5  # it had climbed well above the floor before the surge
    t0 = stats["steady_again"].indices[0][0]
    reached = [t - t0 for t, i in stats["steady_again"].indices if i >= before - 1]
    assert reached and reached[0] <= 5.0, f"back near {before} after {reached[:1]} s"


@pytest.mark.parametrize("phase", ["steady", "steady_again", "contention"])
def test_sim_does_not_flap_in_a_steady_phase(run, phase):
    """The hysteresis holds: once settled (3 s into a phase), few switches, no back and
    forth."""
    _, _, stats = run
    settled = _settled(stats[phase], 3.0)
    moves = [b - a for a, b in pairwise(settled) if b != a]
    reversals = sum(1 for a, b in pairwise(moves) if (a > 0) != (b > 0))
    assert len(moves) <= 4 and reversals <= 2, (moves, reversals)


def test_sim_surge_from_a_high_stitch_holds_the_slo():
    """The surge's first second: after a long steady phase the server runs an expensive
    stitch when the load steps to 4×; the short rate window steps it down before a full batch
    there fills the queue."""
    ctrl = make_controller()
    steady, surge, *_ = schedule(ctrl)
    phases = [Phase("steady", 40.0, steady.rate), Phase("surge", 5.0, surge.rate)]
    stats = simulate(ctrl, phases, seed=3)
    assert stats["steady"].indices[-1][1] >= 5
    st = stats["surge"]
    assert st.p99 < SLO_MS and st.refused_share < 0.01, (st.p99, st.refused_share)
    first = [i for t, i in st.indices if t < 40.5]
    assert capacity(ctrl, min(first)) > surge.rate  # down to a stitch that carries 4R in 0.5 s
