"""What ``--data`` names for a dense task: a dense folder (:mod:`snnet.data.dense`) or
``fmnist-canvas`` (the dense demo's canvases, :mod:`snnet.data.canvas`), as image sets whose
targets are label or depth maps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from snnet.data.canvas import CANVAS_CLASSES, fashion_mnist_canvas
from snnet.data.config import Augment, DataConfig
from snnet.data.dense import DenseTargets, dense_layout, list_dense
from snnet.data.images import ImageSet
from snnet.task import Task

#: ``--data`` for the dense demo's Fashion-MNIST canvases (their default sizes and seed).
CANVAS = "fmnist-canvas"
CANVAS_TRAIN, CANVAS_VAL = 20_000, 2_000


def dense_sets(
    spec: str | Path,
    config: DataConfig,
    task: Task,
    split: str,
    *,
    augment: Augment | None = None,
    classes: Sequence[str] | None = None,
) -> tuple[ImageSet | None, ImageSet | None]:
    """The training images (``split="train"``, with ``augment``; default none) and the held-out
    images (``val``; None when the folder has no ``val`` split) of a dense ``spec``; for
    ``split="eval"`` only the held-out ones. Images are read whole: squashed to the input size,
    their targets resized with nearest neighbour."""
    if config.crop_pct != 1:
        raise ValueError(
            f"dense data is read whole, squashed to the input size: drop --crop-pct "
            f"{config.crop_pct:g} (or set it to 1)"
        )
    config = replace(config, crop_mode="squash")
    if augment is not None and augment.kind == "auto":
        augment = Augment("light", hflip=augment.hflip) if augment.hflip else Augment("none")
    if str(spec) == CANVAS:
        train, val = _canvas(config, task, split)
    else:
        train, val = _folder(Path(spec), config, task, split, classes)
    if train is not None and augment is not None:
        train = train.augmented(augment)
    return train, val


def _canvas(config: DataConfig, task: Task, split: str) -> tuple[ImageSet | None, ImageSet]:
    depth = task.kind == "depth"
    size = config.size[0]
    if config.size != (size, size) or config.channels != 1:
        raise ValueError(
            f"--data {CANVAS} holds 1×S×S grey canvases; the network takes {config.describe()}"
        )
    if not depth and task.num_classes != len(CANVAS_CLASSES):
        raise ValueError(
            f"--data {CANVAS} has {len(CANVAS_CLASSES)} classes (background and Fashion-MNIST's "
            f"10), but the task has {task.num_classes}: give --num-classes {len(CANVAS_CLASSES)}"
        )
    val = fashion_mnist_canvas("test", CANVAS_VAL, size=size, depth=depth)
    train = (
        None
        if split == "eval"
        else fashion_mnist_canvas("train", CANVAS_TRAIN, size=size, depth=depth)
    )
    return train, _as(val, config)


def _as(images: ImageSet, config: DataConfig) -> ImageSet:
    """``images`` normalised as ``config`` says (the canvases' own statistics otherwise)."""
    return images.with_config(replace(config, classes=images.classes))


def _folder(
    root: Path, config: DataConfig, task: Task, split: str, classes: Sequence[str] | None
) -> tuple[ImageSet | None, ImageSet | None]:
    if not root.is_dir():
        raise FileNotFoundError(
            f"--data {root} is not a folder: give a dense folder root/img_dir/{{train,val}} + "
            f"root/ann_dir or root/depth_dir, or {CANVAS}"
        )
    kind = dense_layout(root)
    want = "mask" if task.kind == "segmentation" else "depth"
    if kind is None:
        raise ValueError(
            f"--data {root} has no img_dir/: a {task.kind} folder is root/img_dir/{{train,val}} "
            f"with root/{'ann_dir' if want == 'mask' else 'depth_dir'}/{{train,val}}"
        )
    if kind != want:
        raise ValueError(f"--data {root} holds {kind} targets, but the task is {task.kind}")
    names = _class_names(task, classes)
    has_val = (root / "img_dir" / "val").is_dir()
    val = _split(root, "val", config, task, names, strict=True) if has_val else None
    if split == "eval":
        if val is None:
            raise ValueError(f"--data {root} has no img_dir/val: nothing held out to evaluate")
        return None, val
    return _split(root, "train", config, task, names, strict=False), val


def _class_names(task: Task, classes: Sequence[str] | None) -> tuple[str, ...]:
    if task.kind != "segmentation":
        return ()
    if classes is None:
        return tuple(f"class_{i}" for i in range(task.num_classes))
    if len(classes) != task.num_classes:
        raise ValueError(
            f"{len(classes)} class names for {task.num_classes} classes: give one name per class"
        )
    return tuple(classes)


def _split(
    root: Path, split: str, config: DataConfig, task: Task, names: tuple[str, ...], *, strict: bool
) -> ImageSet:
    listing = list_dense(root, split, "mask" if task.kind == "segmentation" else "depth")
    targets = DenseTargets(
        listing.kind,
        files=listing.targets,
        num_classes=task.num_classes if listing.kind == "mask" else None,
        reduce_zero_label=task.reduce_zero_label,
    )
    name = f"{root}/img_dir/{split}"
    return ImageSet(
        config, None, classes=names, files=listing.images, name=name, strict=strict, dense=targets
    )
