"""Datasets and loaders: Fashion-MNIST held in memory, any ImageFolder dataset, and a loader helper.

Fashion-MNIST is small enough (47 MB as uint8) to live in one tensor. Indexing it with a list or tensor
of indices returns a whole batch at once, which avoids the per-item Python overhead that dominates at
28x28; ``make_loader`` uses that path automatically.
"""

from __future__ import annotations

import copy
import gzip
import itertools
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    Subset,
)
from torch.utils.data.distributed import DistributedSampler

from snnet.preprocess import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    Augment,
    DataConfig,
    default_augment,
)

logger = logging.getLogger(__name__)

FASHION_MNIST_ENV = "SNNET_FASHION_MNIST"
FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
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

    Augmentation (random crop after zero padding, horizontal flip with probability ``flip``,
    ``True`` meaning 0.5) is off unless ``augment=True`` and draws from ``generator`` (torch's
    global generator when None), so a seeded generator makes it reproducible.
    """

    classes = FASHION_MNIST_CLASSES
    data_config = DataConfig.fashion_mnist()  # what get_batch applies (no resizing)

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        *,
        augment: bool = False,
        pad: int = 2,
        flip: bool | float = True,
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
    flip: bool | float = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random crop after zero padding by ``pad`` and random horizontal flip (probability
    ``flip``; ``True`` is 0.5, ``False`` or 0 draws nothing), per image, on (B, H, W)."""
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
        p = 0.5 if flip is True else float(flip)
        mask = torch.rand(b, generator=generator) < p
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
        data_config: DataConfig | None = None,
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
        self.data_config = data_config  # the preprocessing ``transform`` applies, when known
        self._bad: set[int] = set()

    def with_transform(self, transform, *, replace_unreadable: bool | None = None):
        """The same files and labels (not listed again) through another transform."""
        other = copy.copy(self)
        other.transform = transform
        other._bad = set(self._bad)
        if replace_unreadable is not None:
            other.replace_unreadable = replace_unreadable
        return other

    def subset(self, indices: Sequence[int]) -> ImageFolderDataset:
        """Only the images at ``indices`` (in that order), same classes and transform."""
        other = copy.copy(self)
        other.samples = [self.samples[i] for i in indices]
        other.targets = [y for _, y in other.samples]
        other._bad = set()
        return other

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
    from timm.data import (
        DEFAULT_CROP_PCT,
        IMAGENET_DEFAULT_MEAN,
        IMAGENET_DEFAULT_STD,
        create_transform,
    )

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
    config = DataConfig(
        in_chans,
        (img_size, img_size),
        tuple(mean),
        tuple(std),
        crop_pct=DEFAULT_CROP_PCT if crop_pct is None else crop_pct,  # timm's default
        interpolation=interpolation,
    )
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
        data_config=None if train else config,
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
# --data: one resolver for train, evaluate and the benchmarks

_KINDS_OF_DATA = (
    "'fmnist' (Fashion-MNIST), a folder of the Fashion-MNIST idx .gz files, or an image folder "
    "root/<class>/<image> (or root/train/<class>/<image> + root/val/<class>/<image>)"
)


@dataclass(frozen=True)
class DataSource:
    """Where ``--data`` points: Fashion-MNIST (``root``: its idx folder, None: the default place)
    or an image folder with training images ``train`` and held-out images ``val`` (None: none)."""

    kind: str  # "fmnist" or "folder"
    root: Path | None = None
    train: Path | None = None
    val: Path | None = None


def locate(spec: str | Path, *, option: str = "--data") -> DataSource:
    """What ``spec`` names: ``fmnist``, a folder of Fashion-MNIST idx files, ``root/train`` +
    ``root/val`` (either may be missing), or an image folder ``root/<class>/<image>``.

    Example: ``locate("imagenet")  # DataSource('folder', train=imagenet/train, val=imagenet/val)``
    """
    if str(spec) == "fmnist":
        return DataSource("fmnist")
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{option} {spec} does not exist; give {_KINDS_OF_DATA}")
    if not path.is_dir():
        raise NotADirectoryError(f"{option} {spec} is a file; give {_KINDS_OF_DATA}")
    if any((path / files[0]).is_file() for files in _FASHION_MNIST_FILES.values()):
        return DataSource("fmnist", root=path)
    train, val = path / "train", path / "val"
    if train.is_dir() or val.is_dir():
        return DataSource(
            "folder", train=train if train.is_dir() else None, val=val if val.is_dir() else None
        )
    return DataSource("folder", train=path, val=None)


@dataclass(frozen=True, eq=False)
class Data:
    """What ``--data`` resolved to, for a network whose preprocessing is ``config`` (with the
    training augmentation recorded in ``config.augment`` and the classes in ``config.classes``).

    ``train``: the training images, augmented; ``plain``: the same images through the evaluation
    transform (least squares must not see augmentation); ``val``: held-out images through the
    evaluation transform (``root/val``, ``--val``, Fashion-MNIST's test split), or, when
    resolved for evaluation, the images to evaluate. ``name`` and ``val_name`` describe them.
    """

    config: DataConfig
    train: Dataset | None = None
    plain: Dataset | None = None
    val: Dataset | None = None
    name: str = ""
    val_name: str | None = None


def resolve_data(
    spec: str | Path,
    config: DataConfig,
    *,
    split: str = "train",
    augment: Augment | None = None,
    val: str | Path | None = None,
    num_classes: int | None = None,
) -> Data:
    """The data ``spec`` names, preprocessed with ``config`` (the network's
    :class:`~snnet.preprocess.DataConfig`), for ``split="train"`` (training images augmented
    with ``augment``, default :func:`~snnet.preprocess.default_augment`, their un-augmented view,
    and held-out images if any) or ``split="eval"`` (the held-out images: ``root/val``, the
    Fashion-MNIST test split, or ``spec`` itself). ``val`` names held-out images explicitly.
    With ``num_classes``, data with another number of classes is refused.

    Example:
        >>> data = resolve_data("digits", DataConfig.for_anchors(net.anchors))
        >>> fit(net, data.train, config, ls_dataset=data.plain, data_config=data.config)
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    source = locate(spec)
    if split == "eval":
        if val is not None:
            raise ValueError("val is for training; to evaluate other images, pass them as spec")
        images, name, cfg = _held_out(source, spec, config)
        _check_classes(images, name, num_classes)
        return Data(cfg, val=images, name=name, val_name=name)

    auto = augment is None or augment.kind == "auto"
    hflip = augment.hflip if augment is not None else None
    if source.kind == "fmnist":
        if auto:  # off by default: the demo's training stays what it always was
            augment = Augment("light", hflip=hflip) if hflip else Augment("none")
        if augment.kind == "timm":
            raise ValueError(
                "timm's augmentation works on image files: use --augment light (shifts, flips) "
                "for Fashion-MNIST, or write it as an image folder (snnet.data.write_image_folder)"
            )
        plain = fashion_mnist("train", root=source.root)
        train = plain
        if augment.kind == "light":  # shifts by up to 2 px, as FashionMNIST's own augmentation
            train = FashionMNIST(plain.images, plain.targets, augment=True, flip=augment.flip)
        cfg = replace(DataConfig.fashion_mnist(), augment=augment)
        name = "Fashion-MNIST train" + (f" ({source.root})" if source.root else "")
    else:
        if source.train is None:
            raise ValueError(
                f"--data {spec} has val/ but no train/: give the training images as "
                "root/train/<class>/<image> (or a folder root/<class>/<image>)"
            )
        if auto:
            augment = default_augment(config, _peek(source.train), hflip=hflip)
        plain = ImageFolderDataset(
            source.train, config.transform(), mode=config.mode, replace_unreadable=True
        )
        cfg = replace(config, classes=tuple(plain.classes), augment=augment)
        plain.data_config = cfg
        train = plain if augment.kind == "none" else plain.with_transform(cfg.transform(augment))
        name = f"ImageFolder {source.train}"
    _check_classes(plain, name, num_classes)

    held_out, val_name = None, None
    if val is not None:
        held_out, val_name, _ = _held_out(locate(val, option="--val"), val, cfg)
    elif source.kind == "fmnist" or source.val is not None:
        held_out, val_name, _ = _held_out(source, spec, cfg)
    if held_out is not None:
        got = getattr(held_out, "classes", None)
        if got is not None and tuple(got) != tuple(plain.classes):
            raise ValueError(
                f"{val_name} has classes {list(got)[:5]}... but the training images "
                f"{list(plain.classes)[:5]}...: held-out images need the same class folders"
            )
    return Data(cfg, train=train, plain=plain, val=held_out, name=name, val_name=val_name)


def _held_out(source: DataSource, spec: str | Path, config: DataConfig):
    """Held-out images of ``source`` through ``config``'s evaluation transform, a name for them,
    and the config they are read with."""
    if source.kind == "fmnist":
        if config.input_size != (1, 28, 28):
            c, h, w = config.input_size
            raise ValueError(
                f"Fashion-MNIST gives 1×28×28 images but the network takes {c}×{h}×{w}: pass "
                "--data PATH (an image folder root/<class>/<image>)"
            )
        name = "Fashion-MNIST test" + (f" ({source.root})" if source.root else "")
        return fashion_mnist("test", root=source.root), name, DataConfig.fashion_mnist()
    if source.val is not None:
        root = source.val
    elif source.train is not None and source.train != Path(spec):
        raise ValueError(
            f"{spec} has train/ but no val/: evaluate held-out images (root/val/<class>/<image>), "
            f"or pass {source.train} itself to evaluate the training images"
        )
    else:
        root = source.train
    # Every file is checked up front and none is ever replaced by another: a replacement would
    # be counted under the wrong label.
    images = ImageFolderDataset(
        root,
        config.transform(),
        mode=config.mode,
        verify=True,
        replace_unreadable=False,
        data_config=config,
    )
    return images, f"ImageFolder {root}", config


def _peek(root: Path, per_class: int = 1, max_classes: int = 16) -> list[tuple[int, int, str]]:
    """(width, height, PIL mode) of a few images under ``root`` (headers only, nothing decoded)."""
    seen = []
    for folder in sorted(d for d in root.iterdir() if d.is_dir())[:max_classes]:
        files = (p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMG_EXTENSIONS)
        for path in itertools.islice(files, per_class):
            try:
                with Image.open(path) as im:
                    seen.append((im.width, im.height, im.mode))
            except Exception:
                continue
    return seen


def _check_classes(dataset: Dataset, name: str, num_classes: int | None) -> None:
    if num_classes is not None:
        check_classes(dataset, num_classes, what=name)


def check_classes(dataset: Dataset, num_outputs: int, *, what: str = "the data") -> None:
    """Refuse ``dataset`` when its classes (``dataset.classes``) are not the ``num_outputs``
    classes the network predicts, naming the fix."""
    classes = getattr(dataset, "classes", None)
    if classes is None or len(classes) == num_outputs:
        return
    kind = "class folders" if isinstance(dataset, ImageFolderDataset) else "classes"
    raise ValueError(
        f"{what} has {len(classes)} {kind} but the network predicts {num_outputs} classes: give "
        f"data of all {num_outputs} classes (root/<class>/<image>; for root/train + root/val, "
        f"give root), or train a network for {len(classes)} classes (--num-classes {len(classes)})"
    )


# ---------------------------------------------------------------------------------------------------
# A fixed share of the images


def stratified_indices(
    targets: Sequence[int] | torch.Tensor, n: int, *, seed: int = 0
) -> list[int]:
    """``n`` indices (sorted) drawn with ``seed``, every class in proportion to its share of
    ``targets`` (largest remainders get the leftover places; with ``n`` at least the number of
    classes, each class keeps at least one image). The same seed gives the same sample.

    Example: ``stratified_indices([0, 0, 0, 1], 2)  # one image of each class``
    """
    labels = torch.as_tensor(targets, dtype=torch.long)
    total = len(labels)
    if n < 1:
        raise ValueError(f"the sample needs at least 1 image, got {n}")
    if n >= total:
        return list(range(total))
    classes, counts = labels.unique(return_counts=True)
    share = counts.double() * n / total
    take = share.floor().long()
    leftover = n - int(take.sum())
    order = sorted(range(len(classes)), key=lambda i: (-(share[i] - take[i]).item(), i))
    for i in order[:leftover]:
        take[i] += 1
    if n >= len(classes):
        for i in (take == 0).nonzero().flatten().tolist():  # tiny classes keep one image
            take[int(take.argmax())] -= 1
            take[i] = 1
    g = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for c, k in zip(classes.tolist(), take.tolist(), strict=True):
        members = (labels == c).nonzero().flatten()
        chosen += members[torch.randperm(len(members), generator=g)[:k]].tolist()
    return sorted(chosen)


def sample_training(data: Data, n: int, *, seed: int = 0) -> Data:
    """``data`` with its training images cut to a seeded stratified sample of ``n`` (the
    un-augmented view keeps the same images; held-out images are left whole). Refuses a sample
    too small to hold every class.

    Example: ``data = sample_training(resolve_data("imagenet", cfg), 50_000, seed=0)``
    """
    targets = getattr(data.train, "targets", None)
    classes = len(torch.as_tensor(targets).unique()) if targets is not None else 0
    if n < classes:
        raise ValueError(
            f"a sample of {n} training images cannot hold all {classes} classes: "
            f"give --max-images {classes} or more"
        )
    if n >= len(data.train):
        return data
    plain = None if data.plain is None else sample(data.plain, n, seed=seed)
    name = f"{data.name}, stratified sample of {n} (seed {seed})"
    return replace(data, train=sample(data.train, n, seed=seed), plain=plain, name=name)


def sample(dataset: Dataset, n: int, *, seed: int = 0) -> Dataset:
    """A seeded stratified sample of ``n`` images of ``dataset`` (see
    :func:`stratified_indices`); the dataset itself when it has ``n`` images or fewer.

    Example: ``sample(image_folder("imagenet/val", train=False), 5000, seed=0)  # 5 per class``
    """
    if n >= len(dataset):
        return dataset
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise ValueError(f"{type(dataset).__name__} has no targets: cannot sample by class")
    idx = stratified_indices(targets, n, seed=seed)
    if isinstance(dataset, FashionMNIST):
        t = torch.tensor(idx)
        return FashionMNIST(
            dataset.images[t],
            dataset.targets[t],
            augment=dataset.augment,
            pad=dataset.pad,
            flip=dataset.flip,
            generator=dataset.generator,
        )
    if isinstance(dataset, ImageFolderDataset):
        return dataset.subset(idx)
    out = Subset(dataset, idx)
    out.targets = [int(targets[i]) for i in idx]
    out.classes = getattr(dataset, "classes", None)
    return out


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
