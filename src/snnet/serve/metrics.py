"""Prometheus metrics of one replica, in a registry of its own (so several apps can share a
process, as tests do): end-to-end latency, batch sizes, queue depth, requests per stitch,
switches and refusals."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from snnet.serve.executor import Hooks, stitch_name
from snnet.stitch import Stitch

#: Latency buckets in seconds: fine around typical SLOs of small models (1 ms to 1 s).
BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)


class Metrics(Hooks):
    """The batcher's hooks, recorded as Prometheus metrics; ``render()`` is the /metrics body."""

    def __init__(self, queue_depth: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram(
            "snnet_request_latency_seconds",
            "End-to-end latency per image (queueing + batching + compute)",
            ["stitch"],
            buckets=BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "snnet_requests", "Images answered per stitch", ["stitch"], registry=r
        )
        self.batch_size = Histogram(
            "snnet_batch_size",
            "Images per micro-batch",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.compute = Histogram(
            "snnet_batch_compute_seconds",
            "Compute time per micro-batch",
            buckets=BUCKETS,
            registry=r,
        )
        self.switches = Counter("snnet_stitch_switches", "Stitch switches by the SLO", registry=r)
        self.shed = Counter("snnet_refused", "Requests refused at once", ["reason"], registry=r)
        self.errors = Counter(
            "snnet_bad_requests", "Requests answered with a 4xx error", ["code"], registry=r
        )
        self.lag = Histogram(
            "snnet_event_loop_lag_seconds",
            "How late the event loop wakes a 10 ms timer (requests wait unparsed meanwhile)",
            buckets=BUCKETS,
            registry=r,
        )
        queue = Gauge("snnet_queue_depth", "Images waiting for a batch", registry=r)
        queue.set_function(queue_depth)

    def batch(self, stitch: Stitch, size: int, compute_ms: float) -> None:
        self.batch_size.observe(size)
        self.compute.observe(compute_ms / 1e3)

    def request(self, stitch: Stitch, latency_ms: float) -> None:
        label = stitch_name(stitch)
        self.latency.labels(label).observe(latency_ms / 1e3)
        self.requests.labels(label).inc()

    def refused(self, reason: str) -> None:
        self.shed.labels(reason).inc()

    def switched(self, old: Stitch, new: Stitch) -> None:
        self.switches.inc()

    def loop_lag(self, seconds: float) -> None:
        self.lag.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
