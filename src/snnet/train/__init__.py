"""Training an SN-Net: the loop (:mod:`~snnet.train.loop`), its checkpoints, stitch sampling,
importance estimates, validation logs and data-parallel set-up.

The names most users need are re-exported here: ``snnet.train.fit``, ``snnet.train.TrainConfig``.
"""

from snnet.train.loop import (
    TrainConfig,
    TrainResult,
    fit,
    get_lr,
    parameter_groups,
    train_loop,
)

__all__ = ["TrainConfig", "TrainResult", "fit", "get_lr", "parameter_groups", "train_loop"]
