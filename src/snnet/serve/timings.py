"""Batch times of each stitch, measured once for a device and kept beside the artifact they
time, so that a server starts without measuring them again.

The SLO controller predicts from the time of a batch of 1 and of a full batch on each front
stitch. A server of an exported front measures them on its first start on a machine
(:func:`measure`: interleaved rounds, so that a change of the machine's load during the
measurement shifts all stitches alike instead of reordering them) and keeps them in
``latency.json`` beside the artifact, under the device they were measured on (:func:`device`:
CPU model and count, runtime and version, threads). A later start on the same device reads
them; on another device, or with other threads, it measures again and replaces them.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from snnet.files import atomic_write
from snnet.stitch import Stitch

logger = logging.getLogger("snnet.serve")

FILE = "latency.json"
FORMAT, VERSION = "snnet-batch-times", 1

#: batch size -> stitch -> milliseconds per batch
Table = dict[int, dict[Stitch, float]]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device(runtime: str, version: str, threads: int, provider: str = "cpu") -> dict[str, Any]:
    """What batch times depend on besides the network: the device and how it is driven."""
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "runtime": runtime,
        "version": version,
        "provider": provider,
        "threads": threads,
    }


def measure(
    run: Callable[[Stitch, int], Any],
    stitches: Iterable[Stitch],
    sizes: Iterable[int],
    *,
    rounds: int = 9,
    warmup: int = 2,
) -> Table:
    """Milliseconds per batch of each size on each stitch: ``run(stitch, size)`` timed once per
    stitch in each of ``rounds`` rounds, the median over rounds.

    Example:
        >>> measure(lambda s, n: backend.run([x] * n, s), [r.stitch for r in front], (1, 8))
    """
    stitches = list(stitches)
    out: Table = {}
    for size in dict.fromkeys(sizes):
        times: dict[Stitch, list[float]] = {s: [] for s in stitches}
        for _ in range(warmup):
            for s in stitches:
                run(s, size)
        for _ in range(rounds):
            for s in stitches:
                start = time.perf_counter()
                run(s, size)
                times[s].append((time.perf_counter() - start) * 1e3)
        out[size] = {s: round(statistics.median(ts), 6) for s, ts in times.items()}
    return out


def load(path: Path, on: dict[str, Any]) -> Table:
    """The batch times kept in ``path`` for device ``on`` (empty when there are none, or they
    were measured on another device)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        return {}
    if data.get("device") != on:
        logger.info("%s holds batch times of another device (%s): measuring", path, data["device"])
        return {}
    return {
        int(size): {Stitch.parse(s): float(ms) for s, ms in row.items()}
        for size, row in data.get("batch_ms", {}).items()
    }


def save(path: Path, on: dict[str, Any], table: Table) -> bool:
    """Keep ``table`` in ``path`` for device ``on``; False (and a warning) where the directory
    cannot be written, so the next start measures again."""
    data = {
        "format": FORMAT,
        "version": VERSION,
        "device": on,
        "batch_ms": {
            str(size): {str(s): ms for s, ms in row.items()} for size, row in sorted(table.items())
        },
    }
    try:
        atomic_write(path, lambda f: json.dump(data, f, indent=2, sort_keys=True))
    except OSError as e:
        logger.warning(
            "could not keep the batch times in %s (%s): the next start measures", path, e
        )
        return False
    return True


def kept(
    path: Path,
    on: dict[str, Any],
    stitches: Iterable[Stitch],
    sizes: Iterable[int],
    run: Callable[[Stitch, int], Any],
) -> Table:
    """The batch times of ``stitches`` at ``sizes`` on device ``on``: those kept in ``path``,
    the rest measured now (with ``run``, see :func:`measure`) and kept there."""
    stitches, sizes = list(stitches), list(dict.fromkeys(sizes))
    table = load(path, on)
    missing = [n for n in sizes if not set(stitches) <= set(table.get(n, {}))]
    if missing:
        start = time.perf_counter()
        table.update(measure(run, stitches, missing))
        logger.info(
            "measured %d stitches at batch %s in %.1f s; kept in %s",
            len(stitches),
            "/".join(map(str, missing)),
            time.perf_counter() - start,
            path,
        )
        save(path, on, table)
    return {n: {s: table[n][s] for s in stitches} for n in sizes}
