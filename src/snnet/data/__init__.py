"""The data layer: images, their preprocessing, samples and batches, in one place.

- :class:`DataConfig` (:mod:`~snnet.data.config`): how an image becomes the network's input,
  recorded with the network; the one normalisation.
- :func:`resolve_preprocessing` (:mod:`~snnet.data.anchors`): what the anchors expect, with the
  user's overrides, and where each value came from.
- :class:`Augment` (:mod:`~snnet.data.augment`): training-time augmentation of (image, target)
  pairs.
- :class:`ImageSet` (:mod:`~snnet.data.images`): the one dataset type, in memory or on disk;
  :func:`fashion_mnist`, :func:`image_folder`; ``ImageSet.sample``: the one "N images".
- :func:`load_batches`, :class:`EpochBatches` (:mod:`~snnet.data.batches`): the one batching path.
- :func:`resolve_data` (:mod:`~snnet.data.resolve`): what ``--data`` names.

Names are imported on first use, so that ``snnet.data.config`` (a plain value, recorded in
saved networks and read by servers) loads without torch.
"""

from __future__ import annotations

from snnet.lazy import lazy_exports

_PUBLIC = {
    "snnet.data.anchors": ("Preprocessing", "read_data_config", "resolve_preprocessing"),
    "snnet.data.augment": ("default_augment",),
    "snnet.data.batches": ("EpochBatches", "default_workers", "load_batches"),
    "snnet.data.config": (
        "Augment",
        "FASHION_MNIST_CLASSES",
        "FASHION_MNIST_MEAN",
        "FASHION_MNIST_STD",
        "DataConfig",
    ),
    "snnet.data.images": ("ImageSet", "fashion_mnist", "image_folder"),
    "snnet.data.resolve": ("Data", "check_classes", "resolve_data"),
    "snnet.data.sample": ("stratified_indices",),
    "snnet.data.sources": ("write_image_folder",),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _PUBLIC, globals())
