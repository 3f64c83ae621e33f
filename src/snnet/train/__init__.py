"""Training an SN-Net: the pipeline (:func:`fit`), the loop (:mod:`~snnet.train.loop`), its
knobs (:class:`TrainConfig`), checkpoints, stitch sampling, importance estimates, validation
logs and data-parallel set-up.

The names most users need are re-exported here (``snnet.train.fit``, ``snnet.train.TrainConfig``)
and imported on first use, so that reading the knobs (``snnet train --help``) needs no torch.
"""

from __future__ import annotations

from snnet.lazy import lazy_exports

_PUBLIC = {
    "snnet.train.config": ("TrainConfig",),
    "snnet.train.pipeline": ("fit",),
    "snnet.train.loop": ("TrainResult", "train_loop"),
    "snnet.train.step": ("get_lr", "parameter_groups"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _PUBLIC, globals())
