"""The one dataset type: :class:`ImageSet`, labelled images together with what turns them into
the network's input.

An image set is held in memory (``memory``: uint8 pixels, e.g. Fashion-MNIST) or read from
``files`` (an image folder). Either way an item is ``(uint8 pixels (C, H, W), target)`` after
the geometry (resize and crop) and the training augmentation, and a batch is normalised once,
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
from snnet.data.sample import stratified_indices
from snnet.data.sources import fashion_mnist_files, list_folder, read_idx

logger = logging.getLogger(__name__)


class ImageSet(Dataset):
    """Labelled images and their preprocessing (``config``, plus ``augment`` for training).

    ``images[i]`` is ``(pixels, target)``: a (C, H, W) uint8 tensor after resize, crop and
    augmentation, and an int label. :meth:`batch` gives a normalised float batch. Files that
    fail to decode are an error naming the file when ``strict`` (evaluation: a replacement would
    be counted under the wrong label), else logged once and replaced by the next readable image
    (training keeps going past one bad file).

    Example:
        >>> test = fashion_mnist("test")
        >>> x, y = test.batch(torch.arange(8))         # (8, 1, 28, 28) float, (8,) int64
        >>> small = test.sample(1000, seed=0)          # 100 images of each class
    """

    def __init__(
        self,
        config: DataConfig,
        targets: Sequence[int] | torch.Tensor,
        *,
        classes: Sequence[str],
        memory: torch.Tensor | None = None,
        files: Sequence[Path] | None = None,
        augment: Augment | None = None,
        name: str = "",
        strict: bool = False,
    ) -> None:
        if (memory is None) == (files is None):
            raise ValueError("an ImageSet holds either memory (uint8 pixels) or files")
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        n = len(memory) if memory is not None else len(files)
        if n != len(self.targets):
            raise ValueError(f"{n} images but {len(self.targets)} targets")
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
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.targets)

    def __repr__(self) -> str:
        return (
            f"ImageSet({self.name or 'unnamed'}, {len(self)} images, {len(self.classes)} classes)"
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
    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Image ``index`` as uint8 pixels (C, H, W) and its label; augmentation draws from the
        global generators (:class:`~snnet.data.batches.SeededItems` seeds them per image)."""
        if self.memory is not None:
            pixels = self.memory[index]
        else:
            pixels, index = self._read(index)
        target = int(self.targets[index])
        if self.augment is not None and self.augment.kind == "light":
            x, _ = shift_and_flip(
                pixels[None], self.targets[index : index + 1], **self._shift_args()
            )
            pixels = x[0]
        return pixels, target

    def batch(
        self, indices: Sequence[int] | torch.Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float images (B, C, H, W) and labels (B,) of ``indices``. In memory the
        batch is indexed and augmented at once (drawing from ``generator``); files are read one
        by one here (use :func:`~snnet.data.batches.load_batches` for worker processes)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if self.memory is None:
            items = [self[int(i)] for i in idx]
            pixels = torch.stack([p for p, _ in items])
            return self.config.normalize(pixels), torch.tensor([t for _, t in items])
        pixels, targets = self.memory[idx], self.targets[idx]
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
