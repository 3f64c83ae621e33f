"""Training checkpoints: one plain dict in ``run_dir/checkpoint.pt``, written atomically.

The dict holds everything a resumed run needs to continue exactly: weights, optimizer and
grad-scaler state, the step, epoch and position in the epoch, the stitch sampler's generators and
every rank's random-number states. The network itself also goes to ``run_dir/model`` through
:func:`snnet.save`, so ``snnet.load`` (and the other commands) can open a run without torch.load.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from snnet.files import atomic_write

CHECKPOINT = "checkpoint.pt"
FORMAT = "snnet-train"
VERSION = 1


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT


def save_checkpoint(run_dir: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus format and version) to ``run_dir/checkpoint.pt``: temp file, then rename."""
    path = checkpoint_path(run_dir)
    state = {"format": FORMAT, "version": VERSION, **state}
    atomic_write(path, lambda p: torch.save(state, p), mode="path")
    return path


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """The dict :func:`save_checkpoint` wrote; loads tensors on the CPU and never unpickles code."""
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: drop --resume to start a new run there, or point --out at "
            "the run directory to continue"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an snnet training checkpoint")
    if state.get("version", 0) > VERSION:
        raise ValueError(f"{path} was written by a newer snnet; upgrade snnet to resume it")
    return state


def rng_state() -> dict[str, Any]:
    """This process's random-number states (torch CPU and CUDA, Python, NumPy)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
