"""How one replica serves: the one definition that ``snnet serve``'s options and Ray Serve's
``key=value`` settings are generated from (:mod:`snnet.settings`)."""

from __future__ import annotations

from dataclasses import dataclass

from snnet.control.policy import SloPolicy, Steps
from snnet.settings import knob


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    """How one replica serves. Each field is an ``snnet serve`` option (``max_batch`` is
    ``--max-batch``) and a Ray Serve setting (``serve run snnet.serve.ray:build max_batch=8``).

    Example:
        >>> ServeSettings(slo_ms=50, max_batch=8).policy()
        SloPolicy(slo_ms=50, max_batch=8, max_wait_ms=5.0, ...)
    """

    slo_ms: float | None = knob(
        None,
        "end-to-end p99 target (ms): switch stitches to hold it (default: one fixed stitch)",
    )
    stitch: str | None = knob(
        None, "the stitch to run without --slo-ms (default: the most accurate)"
    )
    max_batch: int = knob(8, "images per micro-batch")
    max_wait_ms: float = knob(5.0, "longest wait (ms) for a batch to fill")
    threads: int = knob(1, "threads for inference")
    max_queue: int | None = knob(
        None,
        "images the queue holds before refusing (default: what the cheapest stitch clears "
        "within the SLO)",
    )
    max_images: int = knob(16, "images per request")
    max_pixels: int = knob(4096 * 4096, "pixels per image (width × height), larger is refused")
    top_k: int = knob(5, "classes per image in an answer, unless the request asks for top_k")
    hold_s: float = knob(Steps.hold_s, "seconds the load must stay low before stepping up a stitch")
    device: str = knob(
        "cpu",
        "where the network runs: cpu, cuda, cuda:1 ... (latency measured on another kind of "
        "device is measured again at start-up)",
    )
    trace: bool = knob(
        True,
        "run the front and the fixed stitch as TorchScript traces: the same operators on the "
        "same weights without Python's per-layer cost",
    )

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_wait_ms < 0 or self.threads < 1 or self.max_images < 1:
            raise ValueError("max_batch, threads, max_images >= 1 and max_wait_ms >= 0 required")
        if self.slo_ms is not None and self.slo_ms <= self.max_wait_ms:
            raise ValueError(f"the SLO ({self.slo_ms} ms) must exceed max_wait_ms")

    def policy(self) -> SloPolicy:
        """The SLO controller's policy (``slo_ms`` must be set)."""
        if self.slo_ms is None:
            raise ValueError("no SLO: slo_ms is not set")
        return SloPolicy(
            slo_ms=self.slo_ms,
            max_batch=self.max_batch,
            max_wait_ms=self.max_wait_ms,
            steps=Steps(hold_s=self.hold_s),
        )
