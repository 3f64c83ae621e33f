"""Where images come from: the Fashion-MNIST idx files, image folders (``root/<class>/<image>``),
and what ``--data`` names (:func:`locate`).

These functions find and read files; :class:`~snnet.data.images.ImageSet` turns what they find
into network inputs.
"""

from __future__ import annotations

import gzip
import itertools
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FASHION_MNIST_ENV = "SNNET_FASHION_MNIST"
FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
KINDS_OF_DATA = (
    "'fmnist' (Fashion-MNIST), a folder of the Fashion-MNIST idx .gz files, or an image folder "
    "root/<class>/<image> (or root/train/<class>/<image> + root/val/<class>/<image>)"
)
FOLDER_LAYOUT = "expected root/<class_name>/<image files>, e.g. train/n01440764/img_0001.JPEG"


# -- Fashion-MNIST --------------------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """One gzipped idx file (the MNIST container format) as a uint8 numpy array."""
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


def fashion_mnist_files(split: str, root: str | Path | None = None) -> tuple[Path, Path]:
    """The image and label files of a Fashion-MNIST split (``train`` or ``test``): in ``root``,
    else ``$SNNET_FASHION_MNIST``, else ``/usr/share/datasets/fashion-mnist`` (Debian's
    ``dataset-fashion-mnist`` package)."""
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"unknown split {split!r}; use 'train' or 'test'")
    if root is None:
        root = os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT_ROOT
    images, labels = (Path(root) / f for f in FASHION_MNIST_FILES[split])
    missing = [p for p in (images, labels) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST {split} files not found: {', '.join(str(p) for p in missing)}. "
            "Install them with `apt-get install dataset-fashion-mnist` (Debian), or point to a folder "
            f"holding the idx .gz files with `--data PATH` or ${FASHION_MNIST_ENV}."
        )
    return images, labels


# -- image folders --------------------------------------------------------------------------------
@dataclass(frozen=True)
class FolderListing:
    """The images of ``root/<class>/<file>``: ``files`` with their ``labels`` (the index of
    their class folder in sorted order), the ``classes``, and the files ``ignored``."""

    root: Path
    classes: tuple[str, ...]
    files: tuple[Path, ...]
    labels: tuple[int, ...]
    ignored: tuple[Path, ...] = ()


def list_folder(root: str | Path, *, verify: bool = False) -> FolderListing:
    """Every image file under ``root/<class>/`` (in sorted order; files without an image
    extension are ignored; with ``verify``, so are files PIL cannot read)."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"image folder {root} is not a directory")
    classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir()))
    if not classes:
        raise ValueError(f"no class subfolders in {root}; {FOLDER_LAYOUT}")
    files, labels, ignored = [], [], []
    for label, c in enumerate(classes):
        for path in sorted((root / c).rglob("*")):
            if not path.is_file():
                continue
            if path.suffix.lower() not in IMG_EXTENSIONS or (verify and not readable(path)):
                ignored.append(path)
            else:
                files.append(path)
                labels.append(label)
    if not files:
        raise ValueError(f"no images found under {root}; {FOLDER_LAYOUT}")
    return FolderListing(root, classes, tuple(files), tuple(labels), tuple(ignored))


def readable(path: Path) -> bool:
    """Whether PIL can read ``path`` (its structure is checked; pixels are not decoded)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:
        return False


def peek(root: Path, per_class: int = 1, max_classes: int = 16) -> list[tuple[int, int, str]]:
    """(width, height, PIL mode) of a few images under ``root`` (headers only)."""
    from PIL import Image

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


def write_image_folder(
    dataset: Any,
    root: str | Path,
    limit: int | None = None,
    *,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write a labelled image set as PNG files in the ``root/<class>/<file>`` layout; returns
    ``root``. ``dataset`` is an :class:`~snnet.data.images.ImageSet` held in memory (its uint8
    pixels are written) or any sequence of ``(image, label)`` with uint8 tensor or PIL images.

    Class folders are named ``<label, zero padded>_<class name>`` so that their sorted order
    gives the labels back. Each file is written under a temporary name and renamed, so a killed
    run leaves no half file; files already there are kept (resumable).

    Example: ``write_image_folder(fashion_mnist("test"), "/tmp/fmnist_test", limit=1000)``
    """
    import torch
    from PIL import Image

    root = Path(root)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    raw = getattr(dataset, "memory", None)  # (N, C, H, W) uint8
    if class_names is None:
        class_names = getattr(dataset, "classes", None)
    width = max(2, len(str((len(class_names) if class_names else 10) - 1)))
    made: set[int] = set()
    for i in range(n):
        if raw is not None:
            img, label = raw[i], int(dataset.targets[i])
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
            if img.dtype != torch.uint8:
                raise ValueError("tensor images must be uint8 pixels, not normalised floats")
            arr = img.detach().cpu().numpy()
            if arr.ndim == 3:
                arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
            img = Image.fromarray(arr)
        tmp = folder / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    return root


# -- what --data names ----------------------------------------------------------------------------
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
        raise FileNotFoundError(f"{option} {spec} does not exist; give {KINDS_OF_DATA}")
    if not path.is_dir():
        raise NotADirectoryError(f"{option} {spec} is a file; give {KINDS_OF_DATA}")
    if any((path / files[0]).is_file() for files in FASHION_MNIST_FILES.values()):
        return DataSource("fmnist", root=path)
    train, val = path / "train", path / "val"
    if train.is_dir() or val.is_dir():
        return DataSource(
            "folder", train=train if train.is_dir() else None, val=val if val.is_dir() else None
        )
    return DataSource("folder", train=path, val=None)
