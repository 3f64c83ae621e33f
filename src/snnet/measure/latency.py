"""Latency of every stitch, measured on the user's device (not predicted from FLOPs).

Each stitch is timed call by call after a warm-up: median and 90th percentile per batch go into
the :class:`~snnet.measure.results.Results` rows beside accuracy and cost, and how they were measured
(batch size, threads, device, repeats, machine load) into ``results.meta["latency"]``. Results
are saved after every stitch, so an interrupted run resumes with the stitches still missing.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from snnet.files import check_writable
from snnet.measure.results import Results
from snnet.network import SNNet
from snnet.stitch import Stitch


@dataclass(frozen=True)
class Timing:
    """Wall-clock times of ``repeats`` calls, in milliseconds."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    repeats: int
    warmup: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation, like ``numpy.percentile``."""
    xs = sorted(values)
    if not xs:
        raise ValueError("no values to take a percentile of")
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def synchronize(device: torch.device | None) -> None:
    """Wait for ``device``'s queued work (CUDA runs asynchronously): before reading a clock."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def forget_latency(results: Results) -> None:
    """Drop every stitch's latency and how it was measured, so that all are measured anew."""
    for s in results.records:
        results.update(s, latency_ms=None, latency_p90_ms=None)
    results.meta.pop("latency", None)


def time_callable(
    fn: Callable[[], Any],
    *,
    repeats: int = 30,
    warmup: int = 5,
    device: torch.device | str | None = None,
) -> Timing:
    """Time ``fn()`` call by call after ``warmup`` untimed calls.

    On CUDA the device is synchronised before starting and before reading the clock after each
    call, so the time covers the kernels, not only their launch.

    Example:
        >>> t = time_callable(lambda: model(x), repeats=50, device="cuda")
        >>> t.median_ms, t.p90_ms
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be at least 1 and warmup at least 0")
    device = torch.device(device) if device is not None else None
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return Timing(
        median_ms=statistics.median(times),
        p90_ms=percentile(times, 90),
        mean_ms=statistics.fmean(times),
        min_ms=min(times),
        repeats=repeats,
        warmup=warmup,
    )


def time_module(
    module: nn.Module | Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    *,
    repeats: int = 30,
    warmup: int = 5,
) -> Timing:
    """Time ``module(x)`` for inference (``torch.inference_mode``) on ``x``'s device.

    Example:
        >>> time_module(exported, torch.randn(1, 3, 224, 224)).median_ms
    """
    with torch.inference_mode():
        return time_callable(lambda: module(x), repeats=repeats, warmup=warmup, device=x.device)


def machine() -> dict[str, Any]:
    """What the timings depend on besides the model: device, threads, load, versions."""
    info: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    if hasattr(os, "getloadavg"):
        info["load_avg_1min"] = round(os.getloadavg()[0], 2)
    return info


def _settings(
    net: SNNet, batch_size: int, device: torch.device, repeats: int, warmup: int
) -> dict[str, Any]:
    p = next(net.parameters())
    return {
        "batch_size": batch_size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(p.dtype).removeprefix("torch."),
        "input_size": list(net.anchors[0].input_size),
        "repeats": repeats,
        "warmup": warmup,
        "threads": torch.get_num_threads(),
    }


#: Settings that must match for latencies of different stitches to be comparable.
_COMPARABLE = ("batch_size", "device", "device_name", "dtype", "input_size", "threads")


def measure_latency(
    net: SNNet,
    results: Results | None = None,
    *,
    batch_size: int = 1,
    repeats: int = 30,
    warmup: int = 5,
    threads: int | None = None,
    stitches: Iterable[Stitch | str] | None = None,
    save_to: str | Path | None = None,
    overwrite: bool = False,
    settle_s: float = 3.0,
    progress: bool = True,
) -> Results:
    """Measure the latency of every stitch not measured yet and store it in ``results``.

    The network runs in eval mode under ``torch.inference_mode`` on its own device, on one
    random batch of ``batch_size`` images. ``latency_ms`` is the median and ``latency_p90_ms`` the
    90th percentile of ``repeats`` timed calls. With ``save_to`` the results are written
    atomically after each stitch; running again measures only ``results.missing("latency_ms")``.
    Resuming with other settings (batch size, threads, device) is an error unless
    ``overwrite=True``, which measures every stitch anew. Before the first stitch, the largest
    anchor runs for ``settle_s`` seconds: on a busy multi-threaded CPU the first seconds of a
    process can run far slower than the rest, which a warm-up counted in calls does not cover.

    Example:
        >>> results = measure_latency(net, Results.for_network(net), save_to="results.json")
        >>> results["0:5-1:6"].latency_ms
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be at least 1 and warmup at least 0")
    if save_to is not None:
        check_writable(save_to)  # fail now, not after the first stitch
    if threads is not None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        torch.set_num_threads(threads)
    if results is None:
        results = Results.for_network(net)
    results.check_network(net)
    p = next(net.parameters())
    device = p.device
    _start(results, _settings(net, batch_size, device, repeats, warmup), overwrite=overwrite)
    todo = results.missing("latency_ms")
    if stitches is not None:
        wanted = {net.space.check(s) for s in stitches}
        todo = [s for s in todo if s in wanted]
    x = torch.randn(batch_size, *net.anchors[0].input_size, device=device, dtype=p.dtype)
    was_training = net.training
    net.eval()
    bar = _progress(len(todo), progress)
    try:
        if todo and settle_s > 0:
            _settle(net, x, settle_s, device)
        for s in todo:
            net.plan(s)  # plan (and cache) the route outside the timed calls
            with torch.inference_mode():
                t = time_callable(
                    lambda s=s: net(x, stitch=s), repeats=repeats, warmup=warmup, device=device
                )
            results.update(s, latency_ms=round(t.median_ms, 4), latency_p90_ms=round(t.p90_ms, 4))
            if save_to is not None:
                results.save(save_to)
            bar.set_postfix_str(f"{s}: {t.median_ms:.2f} ms")
            bar.update()
    finally:
        bar.close()
        net.train(was_training)
    return results


def _start(results: Results, settings: dict[str, Any], *, overwrite: bool) -> None:
    """Record how this run measures in ``results.meta["latency"]``: anew (``overwrite``, or
    nothing measured before), or resuming latencies measured with the same settings."""
    before = results.meta.get("latency")
    if overwrite or before is None:
        forget_latency(results)
    else:
        diff = [k for k in _COMPARABLE if before.get(k) != settings[k]]
        if diff and len(results.missing("latency_ms")) < len(results):
            k = diff[0]
            raise ValueError(
                f"the results hold latencies measured with {k}={before.get(k)}, not {settings[k]}; "
                "measure with the same settings, or pass overwrite=True (--overwrite) to start anew"
            )
    results.meta["latency"] = {**settings, **machine()}


def _settle(net: SNNet, x: torch.Tensor, seconds: float, device: torch.device) -> None:
    largest = max(net.stitches, key=lambda s: net.cost(s).macs)
    end = time.perf_counter() + seconds
    with torch.inference_mode():
        while time.perf_counter() < end:
            net(x, stitch=largest)
            synchronize(device)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="latency", unit="stitch", disable=not enabled, leave=False)
