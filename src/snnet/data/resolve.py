"""``--data``: the one reader of what a user points training and evaluation at."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from snnet.data.augment import default_augment
from snnet.data.config import Augment, DataConfig
from snnet.data.dense import dense_layout
from snnet.data.dense_data import CANVAS, dense_sets
from snnet.data.images import ImageSet, fashion_mnist, image_folder
from snnet.data.sources import DataSource, locate, peek
from snnet.task import Task


@dataclass(frozen=True, eq=False)
class Data:
    """What ``--data`` resolved to for a network whose preprocessing is ``config``.

    ``train``: the training images with their augmentation (``config.augment`` records it);
    ``val``: held-out images without augmentation (``root/val``, ``--val``, Fashion-MNIST's test
    split), or, resolved for evaluation, the images to evaluate; None when there are none.
    ``train.plain()`` gives the training images without augmentation (least squares).
    """

    config: DataConfig
    train: ImageSet | None = None
    val: ImageSet | None = None

    def sample_training(self, n: int, *, seed: int = 0) -> Data:
        """The training images cut to a seeded stratified sample of ``n`` (held-out images are
        left whole). Refuses a sample too small to hold every class."""
        classes = len(self.train.targets.unique())
        if n < classes:
            raise ValueError(
                f"a sample of {n} training images cannot hold all {classes} classes: "
                f"give --max-images {classes} or more"
            )
        return replace(self, train=self.train.sample(n, seed=seed))


def resolve_data(
    spec: str | Path,
    config: DataConfig,
    *,
    split: str = "train",
    augment: Augment | None = None,
    val: str | Path | None = None,
    num_classes: int | None = None,
    task: Task | None = None,
    classes: Sequence[str] | None = None,
) -> Data:
    """The data ``spec`` names, preprocessed with ``config`` (the network's
    :class:`~snnet.data.config.DataConfig`), for ``split="train"`` (training images augmented
    with ``augment``, default :func:`~snnet.data.augment.default_augment`, and held-out images if
    any) or ``split="eval"`` (the held-out images: ``root/val``, the Fashion-MNIST test split, or
    ``spec`` itself). ``val`` names held-out images explicitly. With ``num_classes``, data with
    another number of classes is refused.

    A dense ``task`` reads a dense folder (:mod:`snnet.data.dense`: ``root/img_dir`` with
    ``root/ann_dir`` or ``root/depth_dir``, ``train`` and ``val`` splits) or ``fmnist-canvas``
    (the dense demo's Fashion-MNIST canvases, :mod:`snnet.data.canvas`), each image whole at
    the input size; ``classes`` names the segmentation classes (default ``class_0`` ...).

    Example:
        >>> data = resolve_data("digits", resolve_preprocessing(net.anchors).config)
        >>> fit(net, data, TrainConfig(epochs=3))
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if task is not None and task.dense:
        if val is not None:
            raise ValueError("--val names an image folder; dense data keeps its val split")
        train, held_out = dense_sets(spec, config, task, split, augment=augment, classes=classes)
        return Data((train or held_out).config, train=train, val=held_out)
    if str(spec) == CANVAS or (Path(spec).is_dir() and dense_layout(spec) is not None):
        raise ValueError(
            f"--data {spec} holds dense targets: train it with --task segmentation or depth"
        )
    source = locate(spec)
    if split == "eval":
        if val is not None:
            raise ValueError("val is for training; to evaluate other images, pass them as spec")
        images = _held_out(source, spec, config)
        check_classes(images, num_classes)
        return Data(images.config, val=images)

    train = _training(source, spec, config)
    augment = _augment_for(source, train, augment)
    train = train.augmented(augment)
    check_classes(train, num_classes)
    held_out = None
    if val is not None:
        held_out = _held_out(locate(val, option="--val"), val, train.config)
    elif source.kind == "fmnist" or source.val is not None:
        held_out = _held_out(source, spec, train.config)
    if held_out is not None and held_out.classes != train.classes:
        raise ValueError(
            f"{held_out.name} has classes {list(held_out.classes)[:5]}... but the training "
            f"images {list(train.classes)[:5]}...: held-out images need the same class folders"
        )
    return Data(train.config, train=train, val=held_out)


def _training(source: DataSource, spec: str | Path, config: DataConfig) -> ImageSet:
    if source.kind == "fmnist":
        return _fashion_mnist("train", source, config)
    if source.train is None:
        raise ValueError(
            f"--data {spec} has val/ but no train/: give the training images as "
            "root/train/<class>/<image> (or a folder root/<class>/<image>)"
        )
    return image_folder(source.train, config)


def _augment_for(source: DataSource, train: ImageSet, augment: Augment | None) -> Augment:
    """The augmentation asked for, or the data's default (none for Fashion-MNIST)."""
    if augment is not None and augment.kind != "auto":
        return augment
    hflip = augment.hflip if augment is not None else None
    if source.kind == "fmnist":
        return Augment("light", hflip=hflip) if hflip else Augment("none")
    return default_augment(train.config, peek(source.train), hflip=hflip)


def _fashion_mnist(split: str, source: DataSource, config: DataConfig) -> ImageSet:
    return fashion_mnist(split, root=source.root).with_config(config)


def _held_out(source: DataSource, spec: str | Path, config: DataConfig) -> ImageSet:
    """Held-out images of ``source`` through ``config``'s evaluation transform. Every file is
    checked up front and none is ever replaced by another: a replacement would be counted under
    the wrong label."""
    if source.kind == "fmnist":
        return _fashion_mnist("test", source, config)
    if source.val is not None:
        root = source.val
    elif source.train is not None and source.train != Path(spec):
        raise ValueError(
            f"{spec} has train/ but no val/: evaluate held-out images (root/val/<class>/<image>), "
            f"or pass {source.train} itself to evaluate the training images"
        )
    else:
        root = source.train
    return image_folder(root, replace(config, augment=None), strict=True)


def check_classes(images: ImageSet, num_outputs: int | None, *, what: str | None = None) -> None:
    """Refuse ``images`` when their classes are not the ``num_outputs`` classes the network
    predicts, naming the fix."""
    if num_outputs is None or len(images.classes) == num_outputs:
        return
    n = len(images.classes)
    kind = "class folders" if images.files is not None else "classes"
    raise ValueError(
        f"{what or images.name} has {n} {kind} but the network predicts {num_outputs} classes: "
        f"give data of all {num_outputs} classes (root/<class>/<image>; for root/train + "
        f"root/val, give root), or train a network for {n} classes (--num-classes {n})"
    )
