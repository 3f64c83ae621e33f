"""Datasets and loaders: Fashion-MNIST held in memory, any ImageFolder dataset, and a loader helper.

Fashion-MNIST is small enough (47 MB as uint8) to live in one tensor. Indexing it with a list or tensor
of indices returns a whole batch at once, which avoids the per-item Python overhead that dominates at
28x28; ``make_loader`` uses that path automatically.
"""

from __future__ import annotations

import gzip
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

logger = logging.getLogger(__name__)

FASHION_MNIST_ENV = "SNNET_FASHION_MNIST"
FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_MEAN = 0.2860  # of the 60k training images, pixels scaled to [0, 1]
FASHION_MNIST_STD = 0.3530
FASHION_MNIST_CLASSES = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")


# ---------------------------------------------------------------------------------------------------
# Fashion-MNIST


def _read_idx(path: Path) -> np.ndarray:
    """Read one gzipped idx file (the MNIST container format) into a numpy array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte payload
        raise ValueError(f"{path}: not a uint8 idx file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(shape)):
        raise ValueError(f"{path}: truncated idx file ({payload.size} bytes for shape {shape})")
    return payload.reshape(shape)


def _fashion_mnist_root(root: str | Path | None) -> Path:
    if root is not None:
        return Path(root)
    env = os.environ.get(FASHION_MNIST_ENV)
    return Path(env) if env else FASHION_MNIST_DEFAULT_ROOT


class FashionMNIST(Dataset):
    """One Fashion-MNIST split held in memory as uint8.

    ``images`` is (N, 28, 28) uint8 and ``targets`` is (N,) int64. ``ds[i]`` gives a normalised float
    (1, 28, 28) tensor and an int label; ``ds[indices]`` (a list or 1-D tensor) gives a batch
    ((B, 1, 28, 28), (B,)) in one vectorised step.

    Augmentation (random crop after zero padding, horizontal flip) is off unless ``augment=True`` and
    draws from ``generator``, so a seeded generator makes it reproducible.
    """

    classes = FASHION_MNIST_CLASSES

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        *,
        augment: bool = False,
        pad: int = 2,
        flip: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 3:
            raise ValueError(
                f"images must be (N, H, W) uint8, got {tuple(images.shape)} {images.dtype}"
            )
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = targets.long()
        self.augment = augment
        self.pad = pad
        self.flip = flip
        self.generator = generator

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        if isinstance(index, int | np.integer) or (torch.is_tensor(index) and index.ndim == 0):
            x, y = self.get_batch(torch.tensor([int(index)]))
            return x[0], int(y[0])
        return self.get_batch(index)

    def get_batch(self, indices: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (B, 1, H, W) float images and (B,) labels for ``indices``, augmented if enabled."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[idx]  # (B, H, W) uint8
        if self.augment:
            x = augment_batch(x, pad=self.pad, flip=self.flip, generator=self.generator)
        return normalize(x), self.targets[idx]

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate over the split in batches without a DataLoader.

        Example: ``for x, y in fashion_mnist("test").batches(256): ...``
        """
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield self.get_batch(order[start : start + batch_size])


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) Fashion-MNIST pixels to normalised float (B, 1, H, W)."""
    x = images.unsqueeze(1).float().div_(255.0)
    return x.sub_(FASHION_MNIST_MEAN).div_(FASHION_MNIST_STD)


def augment_batch(
    images: torch.Tensor,
    *,
    pad: int = 2,
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random crop after zero padding by ``pad`` and random horizontal flip, per image, on (B, H, W)."""
    b, h, w = images.shape
    out = images
    if pad > 0:
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))  # (B, H+2p, W+2p)
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
        out = padded[torch.arange(b)[:, None, None], rows, cols]
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
        out = torch.where(mask[:, None, None], out.flip(-1), out)
    return out


def fashion_mnist(
    split: str = "train",
    root: str | Path | None = None,
    *,
    augment: bool = False,
    generator: torch.Generator | None = None,
) -> FashionMNIST:
    """Load a Fashion-MNIST split ("train": 60,000 images, "test": 10,000) from the idx .gz files.

    The folder is ``root``, else ``$SNNET_FASHION_MNIST``, else ``/usr/share/datasets/fashion-mnist``
    (Debian's ``dataset-fashion-mnist`` package).

    Example: ``x, y = fashion_mnist("test")[0]  # (1, 28, 28) float, int``
    """
    if split not in _FASHION_MNIST_FILES:
        raise ValueError(f"unknown split {split!r}; use 'train' or 'test'")
    folder = _fashion_mnist_root(root)
    image_file, label_file = (folder / f for f in _FASHION_MNIST_FILES[split])
    missing = [p for p in (image_file, label_file) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST {split} files not found: {', '.join(str(p) for p in missing)}. "
            "Install them with `apt-get install dataset-fashion-mnist` (Debian), or point to a folder "
            f"holding the idx .gz files with `--data PATH` or ${FASHION_MNIST_ENV}."
        )
    images = torch.from_numpy(_read_idx(image_file).copy())
    targets = torch.from_numpy(_read_idx(label_file).astype(np.int64))
    return FashionMNIST(images, targets, augment=augment, generator=generator)


# ---------------------------------------------------------------------------------------------------
# ImageFolder


def _is_readable_image(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()  # reads the whole file, checks structure, does not decode pixels
        return True
    except Exception:
        return False


class ImageFolderDataset(Dataset):
    """Images in ``root/<class>/<file>`` (the ImageNet layout), labels by sorted class folder name.

    Files without an image extension are ignored. With ``verify=True`` every file is checked once
    at index time (PIL ``verify``) and unreadable ones are left out with a warning, so ``len()``
    counts only readable images. Whatever slips through is caught in ``__getitem__``: with
    ``replace_unreadable=True`` (training) a file that fails to decode is logged once and replaced
    by the next valid sample, so a long run never dies on one bad file; with ``False``
    (evaluation, where a replacement would be counted under the wrong label) it is an error
    naming the file.
    """

    def __init__(
        self,
        root: str | Path,
        transform=None,
        *,
        mode: str = "RGB",
        verify: bool = False,
        replace_unreadable: bool = True,
    ) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        if not self.root.is_dir():
            raise NotADirectoryError(f"image folder {self.root} is not a directory")
        layout = "expected root/<class_name>/<image files>, e.g. train/n01440764/img_0001.JPEG"
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        if not self.classes:
            raise ValueError(f"no class subfolders in {self.root}; {layout}")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        samples: list[tuple[Path, int]] = []
        ignored: list[Path] = []
        for c in self.classes:
            for path in sorted((self.root / c).rglob("*")):
                if not path.is_file():
                    continue
                if path.suffix.lower() not in IMG_EXTENSIONS:
                    ignored.append(path)
                elif verify and not _is_readable_image(path):
                    logger.warning("skipping unreadable image %s", path)
                    ignored.append(path)
                else:
                    samples.append((path, self.class_to_idx[c]))
        if not samples:
            raise ValueError(f"no images found under {self.root}; {layout}")
        if ignored:
            logger.warning(
                "ignored %d non-image or unreadable files under %s", len(ignored), self.root
            )
        self.samples = samples
        self.targets = [y for _, y in samples]
        self.ignored = ignored
        self.transform = transform
        self.mode = mode
        self.replace_unreadable = replace_unreadable
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int):
        path, target = self.samples[index]
        with Image.open(path) as im:
            img = im.convert(self.mode)  # convert() decodes, so a corrupt file raises here
        if self.transform is not None:
            img = self.transform(img)
        return img, target

    def __getitem__(self, index: int):
        n = len(self.samples)
        for step in range(n):
            i = (index + step) % n  # deterministic fallback: the next index
            if i in self._bad:
                continue
            try:
                return self._load(i)
            except Exception as e:
                if not self.replace_unreadable:
                    raise ValueError(
                        f"cannot read image {self.samples[i][0]} ({e}): remove or replace the file"
                    ) from e
                self._bad.add(i)
                logger.warning("skipping unreadable image %s (%s)", self.samples[i][0], e)
        raise RuntimeError(f"no readable image left in {self.root}")


def image_folder(
    root: str | Path,
    *,
    train: bool,
    img_size: int = 224,
    in_chans: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    interpolation: str = "bicubic",
    crop_pct: float | None = None,
    verify: bool | None = None,
    **transform_kwargs,
) -> ImageFolderDataset:
    """An ImageFolder dataset with timm's train (augmenting) or eval transform.

    ``mean``/``std`` default to ImageNet's (or 0.5 for one channel); extra keyword arguments go to
    ``timm.data.create_transform`` (e.g. ``auto_augment``, ``re_prob``, ``scale``).

    Example: ``ds = image_folder("imagenet/val", train=False, img_size=224)``
    """
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 (grey) or 3 (RGB), got {in_chans}")
    if mean is None:
        mean = IMAGENET_DEFAULT_MEAN if in_chans == 3 else (0.5,)
    if std is None:
        std = IMAGENET_DEFAULT_STD if in_chans == 3 else (0.5,)
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"mean and std need {in_chans} values, got {len(mean)} and {len(std)}")
    kwargs = dict(
        input_size=(in_chans, img_size, img_size),
        is_training=train,
        mean=tuple(mean),
        std=tuple(std),
        interpolation=interpolation,
    )
    if crop_pct is not None:
        kwargs["crop_pct"] = crop_pct
    if train and in_chans == 1:
        kwargs.setdefault("color_jitter", None)  # timm's colour jitter assumes RGB
    kwargs.update(transform_kwargs)
    transform = create_transform(**kwargs)
    # Evaluation checks every file up front and never substitutes one image for another (its
    # label would be counted for the wrong image); training keeps going past a bad file.
    return ImageFolderDataset(
        root,
        transform,
        mode="RGB" if in_chans == 3 else "L",
        verify=(not train) if verify is None else verify,
        replace_unreadable=train,
    )


def write_image_folder(
    dataset: Dataset,
    root: str | Path,
    limit: int | None = None,
    *,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write ``dataset`` as PNG files in ImageFolder layout under ``root`` and return ``root``.

    Class folders are named ``<label, zero padded>_<class name>`` so that their sorted order gives the
    original labels back. Each file is written under a temporary name and then renamed, so a killed
    run leaves no half file with an image extension; files already present are kept (resumable).
    Items may be uint8 tensors (H, W) / (C, H, W) or PIL images; a dataset with ``images`` and
    ``targets`` tensors (like ``FashionMNIST``) is read directly.

    Example: ``write_image_folder(fashion_mnist("test"), "/tmp/fmnist_test", limit=1000)``
    """
    root = Path(root)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    raw = hasattr(dataset, "images") and hasattr(dataset, "targets")
    labels = [int(dataset.targets[i]) for i in range(n)] if raw else None
    if class_names is None:
        class_names = getattr(dataset, "classes", None)
    num_classes = len(class_names) if class_names else None
    width = max(2, len(str((num_classes or 10) - 1)))
    made: set[int] = set()
    for i in range(n):
        if raw:
            img, label = dataset.images[i], labels[i]
        else:
            img, label = dataset[i]
            label = int(label)
        name = f"{label:0{width}d}" + (f"_{class_names[label]}" if class_names else "")
        folder = root / name
        if label not in made:
            folder.mkdir(parents=True, exist_ok=True)
            made.add(label)
        path = folder / f"{i:06d}.png"
        if path.exists():
            continue
        if torch.is_tensor(img):
            arr = img.detach().cpu()
            if arr.dtype != torch.uint8:
                raise ValueError(
                    "tensor images must be uint8; pass the raw dataset, not a normalised one"
                )
            arr = arr.numpy()
            if arr.ndim == 3:
                arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
            img = Image.fromarray(arr)
        tmp = folder / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    return root


# ---------------------------------------------------------------------------------------------------
# Loaders


def _default_num_workers(dataset: Dataset) -> int:
    if getattr(dataset, "images", None) is not None and torch.is_tensor(dataset.images):
        return 0  # in memory: workers only add IPC overhead
    cpus = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    return min(8, max(1, cpus - 1))  # leave one core to the training process


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    train: bool,
    seed: int = 0,
    num_workers: int | None = None,
    drop_last: bool | None = None,
) -> DataLoader:
    """A DataLoader with defaults for training (shuffle, drop_last) or evaluation (in order, all items).

    Uses a ``DistributedSampler`` when ``torch.distributed`` is initialised (call
    ``loader.sampler.set_epoch(epoch)`` or ``loader.batch_sampler.sampler.set_epoch(epoch)`` each epoch),
    a seeded generator otherwise. Datasets that accept a list of indices (``FashionMNIST``) are fetched
    one batch at a time instead of item by item.

    Example: ``loader = make_loader(fashion_mnist("train"), batch_size=128, train=True, seed=0)``
    """
    if drop_last is None:
        drop_last = train
    if num_workers is None:
        num_workers = _default_num_workers(dataset)
    generator = torch.Generator().manual_seed(seed)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        sampler = DistributedSampler(dataset, shuffle=train, seed=seed, drop_last=drop_last)
    elif train:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    common = dict(
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
    if isinstance(dataset, FashionMNIST):
        # batch_size=None: each sampled index list goes to dataset[list] in one vectorised call
        batches = BatchSampler(sampler, batch_size, drop_last)
        return DataLoader(dataset, sampler=batches, batch_size=None, **common)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        generator=generator,
        **common,
    )
