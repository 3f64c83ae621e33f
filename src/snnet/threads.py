"""CPU threads for torch: a fixed count, and results that do not depend on the machine's load.

By default MKL may run a BLAS call on fewer threads than torch asked for when it judges the
machine busy (``MKL_DYNAMIC``). A matrix product split over fewer threads sums in another order,
so the same training command can give different weights on an idle and on a busy machine (seen
with 2 threads: 428 of 500 weight tensors differed after 60 steps beside a CPU hog, and 0 of 500
with dynamic adjustment off; the divergence does not happen on every busy run). :func:`set_threads` turns that adjustment off through
``MKL_Set_Dynamic``, which PyTorch's CPU library exports: MKL is linked into it statically, and the
``MKL_DYNAMIC`` variable is read once, at ``import torch``, so setting it later is too late. (The
lower-case ``mkl_set_dynamic`` export is MKL's Fortran interface, which takes a pointer: calling it
with 0 crashes.)
"""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path

import torch


def set_threads(threads: int | None) -> int:
    """Use ``threads`` CPU threads (None: keep torch's count) with MKL's dynamic adjustment off,
    so results depend on the thread count, not on the machine's load. Returns the count in use.

    Example:
        >>> set_threads(2)
        2
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    _mkl_static_threads()
    return torch.get_num_threads()


def _mkl_static_threads() -> None:
    lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    # On another platform, or a build without MKL, there is nothing to turn off.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(str(lib)).MKL_Set_Dynamic(0)
