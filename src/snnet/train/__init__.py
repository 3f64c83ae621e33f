"""Training an SN-Net: the pipeline (:func:`fit`), the loop (:mod:`~snnet.train.loop`), its
knobs (:class:`TrainConfig`), checkpoints, stitch sampling, importance estimates, validation
logs and data-parallel set-up.

The names most users need are re-exported here (``snnet.train.fit``, ``snnet.train.TrainConfig``)
and imported on first use, so that reading the knobs (``snnet train --help``) needs no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "snnet.train.config": ("TrainConfig",),
    "snnet.train.pipeline": ("fit",),
    "snnet.train.loop": ("TrainResult", "train_loop"),
    "snnet.train.step": ("get_lr", "parameter_groups"),
}
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'snnet.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
