"""The one dataset type: :class:`ImageSet`, labelled images together with what turns them into
the network's input.

An image set is held in memory (``memory``: uint8 pixels, e.g. Fashion-MNIST) or read from
``files`` (an image folder). Either way an item is ``(uint8 pixels (C, H, W), target)`` after
the geometry (resize and crop) and the training augmentation, where the target is a class label
or, for a dense task, an ``(H, W)`` label or depth map (:class:`~snnet.data.dense.DenseTargets`)
that the geometry and augmentation move with its image; a batch is normalised once,
by :meth:`~snnet.data.config.DataConfig.normalize`. Training, least squares, validation,
evaluation, the teachers' cache and the anchor zoo all read images through it, in batches made
by :func:`snnet.data.batches.load_batches`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import Dataset

from snnet.data.augment import shift_and_flip, shift_pad, timm_steps
from snnet.data.config import Augment, DataConfig, to_uint8
from snnet.data.dense import DenseTargets
from snnet.data.sample import stratified_indices
from snnet.data.sources import fashion_mnist_files, list_folder, read_idx

logger = logging.getLogger(__name__)


class ImageSet(Dataset):
    """Labelled images and their preprocessing (``config``, plus ``augment`` for training).

    ``images[i]`` is ``(pixels, target)``: a (C, H, W) uint8 tensor after resize, crop and
    augmentation, and an int label, or with ``dense`` targets an (H, W) map (``targets`` then
    holds no labels: zeros, one stratum for sampling). :meth:`batch` gives a normalised float
    batch. Files that fail to decode are an error naming the file when ``strict`` (evaluation: a
    replacement would be counted under the wrong label), else logged once and replaced by the
    next readable image (training keeps going past one bad file).

    Example:
        >>> test = fashion_mnist("test")
        >>> x, y = test.batch(torch.arange(8))         # (8, 1, 28, 28) float, (8,) int64
        >>> small = test.sample(1000, seed=0)          # 100 images of each class
    """

    def __init__(
        self,
        config: DataConfig,
        targets: Sequence[int] | torch.Tensor | None,
        *,
        classes: Sequence[str],
        memory: torch.Tensor | None = None,
        files: Sequence[Path] | None = None,
        augment: Augment | None = None,
        name: str = "",
        strict: bool = False,
        dense: DenseTargets | None = None,
    ) -> None:
        if (memory is None) == (files is None):
            raise ValueError("an ImageSet holds either memory (uint8 pixels) or files")
        n = len(memory) if memory is not None else len(files)
        if targets is None and dense is None:
            raise ValueError("an ImageSet needs targets: labels, or dense targets")
        self.targets = torch.as_tensor(targets if targets is not None else [0] * n).long()
        if n != len(self.targets) or (dense is not None and len(dense) != n):
            raise ValueError(f"{n} images but {len(dense or self.targets)} targets")
        in_memory = dense is not None and memory is not None and dense.memory is not None
        if in_memory and tuple(dense.memory.shape[1:]) != config.size:
            raise ValueError(
                f"targets in memory are {tuple(dense.memory.shape[1:])}, images {config.size}"
            )
        if memory is not None:
            if memory.dtype != torch.uint8 or memory.ndim != 4:
                raise ValueError(f"memory must be (N, C, H, W) uint8, got {tuple(memory.shape)}")
            if tuple(memory.shape[1:]) != config.input_size:
                c, h, w = memory.shape[1:]
                want = "×".join(map(str, config.input_size))
                raise ValueError(
                    f"these images are {c}×{h}×{w} but the network takes {want}: pass --data "
                    "PATH (an image folder root/<class>/<image>) for other sizes"
                )
        self.config = replace(config, classes=tuple(classes), augment=augment)
        self.classes = tuple(classes)
        self.memory = memory
        self.files = tuple(Path(p) for p in files) if files is not None else None
        self.augment = augment if augment is not None and augment.active else None
        self.name = name
        self.strict = strict
        self.dense = dense
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.targets)

    def __repr__(self) -> str:
        kind = f", {self.dense.kind} targets" if self.dense is not None else ""
        return (
            f"ImageSet({self.name or 'unnamed'}, {len(self)} images, {len(self.classes)} classes"
            f"{kind})"
        )

    # -- variants ------------------------------------------------------------------------------
    def _with(self, **changes) -> ImageSet:
        other = copy.copy(self)
        other.__dict__.update(changes)
        other._bad = set(self._bad) if "targets" not in changes else set()
        return other

    def with_config(self, config: DataConfig) -> ImageSet:
        """The same images preprocessed with ``config`` (classes and augmentation kept). Images
        held in memory are not resized: ``config`` must take their size, without a crop."""
        if self.memory is not None:
            c, h, w = self.memory.shape[1:]
            if config.input_size != (c, h, w) or config.crop_pct != 1:
                raise ValueError(
                    f"{self.name} holds {c}×{h}×{w} images in memory, used as they are; the "
                    f"network takes {config.describe()}: pass --data PATH (an image folder "
                    "root/<class>/<image>) to resize or crop"
                )
        keep = {"classes": self.classes, "augment": self.config.augment}
        return self._with(config=replace(config, **keep))

    def plain(self) -> ImageSet:
        """The same images without augmentation (least squares, validation, teachers)."""
        return self._with(augment=None, config=replace(self.config, augment=None))

    def augmented(self, augment: Augment) -> ImageSet:
        """The same images with ``augment`` applied in training."""
        if augment.kind == "timm" and self.dense is not None:
            raise ValueError(
                "timm's augmentation (random resized crops, colour jitter) moves class-labelled "
                "images only: use --augment light (shifts and flips move the targets too)"
            )
        if augment.kind == "timm" and self.memory is not None:
            raise ValueError(
                "timm's augmentation works on image files: use --augment light (shifts, flips) "
                "for images held in memory, or write them as an image folder "
                "(snnet.data.write_image_folder)"
            )
        active = augment if augment.active else None
        return self._with(augment=active, config=replace(self.config, augment=augment))

    def subset(self, indices: Sequence[int] | torch.Tensor, *, name: str | None = None) -> ImageSet:
        """Only the images at ``indices``, in that order."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self._with(
            targets=self.targets[idx],
            memory=self.memory[idx] if self.memory is not None else None,
            files=tuple(self.files[i] for i in idx.tolist()) if self.files is not None else None,
            dense=self.dense.subset(idx) if self.dense is not None else None,
            name=self.name if name is None else name,
        )

    def sample(self, n: int, *, seed: int = 0) -> ImageSet:
        """A seeded stratified sample of ``n`` images (every class in proportion); the set
        itself when it has ``n`` images or fewer."""
        if n >= len(self):
            return self
        idx = stratified_indices(self.targets, n, seed=seed)
        return self.subset(idx, name=f"{self.name}, stratified sample of {n} (seed {seed})")

    def tensors(
        self, n: int | None = None, *, seed: int = 0, num_workers: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` images (a seeded stratified sample; all without ``n``) as one normalised
        ``(n, C, H, W)`` batch and their labels, without augmentation: e.g. the calibration
        images of :func:`snnet.init_least_squares`.

        Example: ``x, _ = fashion_mnist("train").tensors(512, seed=0)``
        """
        from snnet.data.batches import load_batches

        images = self.plain() if n is None else self.plain().sample(n, seed=seed)
        rows = [torch.arange(len(images))]
        return next(iter(load_batches(images, rows, num_workers=num_workers)))

    # -- items and batches ---------------------------------------------------------------------
    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        """Image ``index`` as uint8 pixels (C, H, W) and its label (or its (H, W) dense target);
        augmentation draws from the global generators (:class:`~snnet.data.batches.SeededItems`
        seeds them per image)."""
        if self.memory is not None:
            pixels = self.memory[index]
        else:
            pixels, index = self._read(index)
        if self.dense is not None:
            target = self.dense.read(index, self.config.size)
        else:
            target = int(self.targets[index])
        if self.augment is not None and self.augment.kind == "light":
            t = target[None] if self.dense is not None else self.targets[index : index + 1]
            x, t = shift_and_flip(pixels[None], t, **self._shift_args())
            pixels, target = x[0], (t[0] if self.dense is not None else target)
        return pixels, target

    def batch(
        self, indices: Sequence[int] | torch.Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float images (B, C, H, W) and labels (B,) (or dense targets (B, H, W))
        of ``indices``. In memory the batch is indexed and augmented at once (drawing from
        ``generator``); files are read one by one here (use
        :func:`~snnet.data.batches.load_batches` for worker processes)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if self.memory is None:
            items = [self[int(i)] for i in idx]
            pixels = torch.stack([p for p, _ in items])
            targets = [t for _, t in items]
            stacked = torch.stack(targets) if self.dense is not None else torch.tensor(targets)
            return self.config.normalize(pixels), stacked
        pixels = self.memory[idx]
        if self.dense is not None and self.dense.memory is not None:
            targets = self.dense.memory[idx]  # (B, H, W)
        elif self.dense is not None:
            targets = torch.stack([self.dense.read(int(i), self.config.size) for i in idx])
        else:
            targets = self.targets[idx]
        if self.augment is not None:
            pixels, targets = shift_and_flip(pixels, targets, **self._shift_args(generator))
        return self.config.normalize(pixels), targets

    def _shift_args(self, generator: torch.Generator | None = None) -> dict:
        return {
            "pad": shift_pad(self.config.size),
            "flip": self.augment.flip,
            "generator": generator,
        }

    def _read(self, index: int) -> tuple[torch.Tensor, int]:
        """Decode file ``index`` (or, when it fails and the set is not strict, the next readable
        one) into uint8 pixels; returns the pixels and the index actually read."""
        n = len(self.files)
        for step in range(n):
            i = (index + step) % n  # deterministic fallback: the next index
            if i in self._bad:
                continue
            try:
                return self._decode(self.files[i]), i
            except Exception as e:
                if self.strict:
                    raise ValueError(
                        f"cannot read image {self.files[i]} ({e}): remove or replace the file"
                    ) from e
                self._bad.add(i)
                logger.warning("skipping unreadable image %s (%s)", self.files[i], e)
        raise RuntimeError(f"no readable image left in {self.name}")

    def _decode(self, path: Path) -> torch.Tensor:
        from PIL import Image

        with Image.open(path) as im:
            img = im.convert(self.config.mode)  # convert() decodes: a corrupt file raises here
        if self.augment is not None and self.augment.kind == "timm":
            for step in timm_steps(self.config, self.augment):
                img = step(img)
            return to_uint8(img)
        return self.config.pixels(img)


def fashion_mnist(split: str = "train", root: str | Path | None = None) -> ImageSet:
    """A Fashion-MNIST split ("train": 60,000 images, "test": 10,000) held in memory, from the
    idx .gz files in ``root``, else ``$SNNET_FASHION_MNIST``, else
    ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist`` package).

    Example: ``x, y = fashion_mnist("test").batch([0, 1])  # (2, 1, 28, 28) float, (2,)``
    """
    image_file, label_file = fashion_mnist_files(split, root)
    images = torch.from_numpy(read_idx(image_file).copy()).unsqueeze(1)  # (N, 1, 28, 28)
    targets = torch.from_numpy(read_idx(label_file).astype("int64"))
    config = DataConfig.fashion_mnist()
    name = f"Fashion-MNIST {split}" + (f" ({root})" if root is not None else "")
    return ImageSet(config, targets, classes=config.classes, memory=images, name=name)


def image_folder(
    root: str | Path,
    config: DataConfig,
    *,
    augment: Augment | None = None,
    strict: bool = False,
) -> ImageSet:
    """The images of ``root/<class>/<file>`` (labels by sorted class folder name) through
    ``config``. ``strict`` (evaluation) checks every file up front: unreadable files are left
    out with a warning, and one that still fails later is an error, never replaced.

    Example: ``val = image_folder("imagenet/val", network_preprocessing(net), strict=True)``
    """
    listing = list_folder(root, verify=strict)
    if listing.ignored:
        logger.warning(
            "ignored %d non-image or unreadable files under %s", len(listing.ignored), root
        )
    images = ImageSet(
        config,
        listing.labels,
        classes=listing.classes,
        files=listing.files,
        name=f"ImageFolder {root}",
        strict=strict,
    )
    return images.augmented(augment) if augment is not None else images
