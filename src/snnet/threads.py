"""CPU threads for torch: a default that does not collapse on a shared machine, and results
that depend on the thread count only; and freed memory kept for reuse (:func:`keep_freed_memory`).

Two things make multi-threaded CPU runs collapse when other jobs share the cores. libgomp's
threads spin while they wait for each other (``OMP_WAIT_POLICY=ACTIVE``, the default), so a
thread that is descheduled stalls the whole team, for many times a step's own time
(``benchmarks/bench_threads.py`` measures it). :func:`wait_passively` sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the user chose a policy), which
libgomp reads once, when torch loads: the command line calls it before anything imports torch.
And more threads than free cores only queue: :func:`default_threads` takes half the cores this
process may use (1 on a 2-core machine), or ``OMP_NUM_THREADS`` when set (torchrun sets it to 1
per process).

MKL may also run a BLAS call on fewer threads than torch asked for when it judges the machine
busy (``MKL_DYNAMIC``), and a product split over fewer threads sums in another order.
:func:`set_threads` turns that off through ``MKL_Set_Dynamic``, which PyTorch's CPU library
exports (MKL is linked into it statically and reads the ``MKL_DYNAMIC`` variable once, at
``import torch``; the lower-case ``mkl_set_dynamic`` export is MKL's Fortran interface, which
takes a pointer: calling it with 0 crashes). With it off, a run's weights depend on its thread
count, not on what else the machine runs (``benchmarks/recipe/FINDINGS.md``, section C).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from pathlib import Path


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under a container's cpuset)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def default_threads() -> int:
    """snnet's thread count when ``--threads`` is not given: ``OMP_NUM_THREADS`` if set, else
    half the usable cores (at least 1), which leaves room for the other jobs of a shared machine.

    Example:
        >>> default_threads()   # on a 2-core machine
        1
    """
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) >= 1:
        return int(env)
    return max(1, usable_cores() // 2)


def wait_passively() -> None:
    """Idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``), unless the
    user set a policy. Effective only before torch is imported: libgomp reads it once."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def set_threads(threads: int | None) -> int:
    """Use ``threads`` CPU threads (None: keep torch's count) with MKL's dynamic adjustment off,
    so results depend on the thread count, not on the machine's load. Returns the count in use.

    Example:
        >>> set_threads(2)
        2
    """
    import torch

    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    _mkl_static_threads()
    return torch.get_num_threads()


def _mkl_static_threads() -> None:
    import torch

    lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    # On another platform, or a build without MKL, there is nothing to turn off.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(str(lib)).MKL_Set_Dynamic(0)


def keep_freed_memory() -> bool:
    """Let the C library keep freed tensor memory for the next tensor instead of handing it back
    to the OS (glibc only; a user's ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` win).
    Returns whether it applied. Changes no computed value, only where tensors are placed.

    Why: torch's CPU tensors come from ``malloc``. glibc serves a block over 128 KiB with its own
    ``mmap`` and unmaps it when freed, and gives the heap's free top back past 128 KiB; a
    training step allocates and frees activations of 0.1-1 MB many times, so it keeps touching
    fresh pages (page faults and system time). Blocks up to 32 MiB are served from the heap here,
    and the heap is trimmed only past 1 GiB (``benchmarks/bench_malloc.py`` measures the gain).
    Memory once used stays with the process until it exits.
    """
    if not sys.platform.startswith("linux"):
        return False
    if {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & os.environ.keys():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no glibc tunables
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))
