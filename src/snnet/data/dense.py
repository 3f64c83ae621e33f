"""Dense targets: a label map or a depth map per image, one more kind of target of
:class:`~snnet.data.images.ImageSet` (:class:`DenseTargets`), and the folders they come from.

Layout (mmsegmentation's, for segmentation)::

    root/img_dir/{train,val}/NAME.jpg      images (any format PIL reads)
    root/ann_dir/{train,val}/NAME.png      label maps: one channel (mode L or P), class indices,
                                           255 ignored; paired with the image by file stem
    root/depth_dir/{train,val}/NAME.png    depth maps: 16-bit PNGs in millimetres (0: no depth),
                         or NAME.npy      or float arrays in metres

Dense data is read whole: each image is resized (squashed) to the network's input size, and its
target resized with nearest neighbour to the same size, at training and evaluation alike.
``reduce_zero_label`` is mmsegmentation's: label 0 (often "other") becomes 255 and every other
label moves down by one.

Malformed data is refused with one line that names the file and the fix: a missing target, a
target of another size than its image, a label out of range, a depth map of the wrong type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from snnet.data.sources import IMG_EXTENSIONS

if TYPE_CHECKING:
    from snnet.data.images import ImageSet

IGNORE = 255
KINDS = ("mask", "depth")
IMG_DIR, ANN_DIR, DEPTH_DIR = "img_dir", "ann_dir", "depth_dir"
#: 16-bit PNG depth maps hold millimetres.
DEPTH_PNG_SCALE = 1000.0
MASK_MODES = ("L", "P", "I", "I;16")
DEPTH_PNG_MODES = ("I", "I;16", "I;16B")
_LAYOUT = (
    "expected root/img_dir/{split}/NAME.jpg with root/ann_dir/{split}/NAME.png (segmentation) or "
    "root/depth_dir/{split}/NAME.png|.npy (depth)"
)


@dataclass(frozen=True, eq=False)
class DenseTargets:
    """Per-image targets ``(H, W)``: ``kind`` ``mask`` (class indices, 255 ignored; uint8) or
    ``depth`` (metres, 0 where unknown; float32), held in ``memory`` (``(N, H, W)``, already at
    the input size) or read from ``files`` (resized with nearest neighbour to the input size).
    Masks' labels are checked against ``num_classes`` as they are read.

    Example:
        >>> targets = DenseTargets("mask", files=paths, num_classes=21)
        >>> targets.read(0, (512, 512)).shape
        torch.Size([512, 512])
    """

    kind: str
    memory: torch.Tensor | None = None
    files: tuple[Path, ...] | None = None
    num_classes: int | None = None
    reduce_zero_label: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"dense targets are {' or '.join(KINDS)}, not {self.kind!r}")
        if (self.memory is None) == (self.files is None):
            raise ValueError("dense targets are held in memory or read from files")
        want = torch.uint8 if self.kind == "mask" else torch.float32
        if self.memory is not None and (self.memory.ndim != 3 or self.memory.dtype != want):
            raise ValueError(
                f"{self.kind} targets in memory are (N, H, W) {want}, got "
                f"{tuple(self.memory.shape)} {self.memory.dtype}"
            )

    def __len__(self) -> int:
        return len(self.memory) if self.memory is not None else len(self.files)

    def subset(self, indices: torch.Tensor) -> DenseTargets:
        if self.memory is not None:
            return replace(self, memory=self.memory[indices])
        return replace(self, files=tuple(self.files[i] for i in indices.tolist()))

    def read(self, index: int, size: Sequence[int]) -> torch.Tensor:
        """Target ``index`` as an ``(H, W)`` tensor at ``size`` (H, W)."""
        if self.memory is not None:
            return self.memory[index]
        path = self.files[index]
        if self.kind == "mask":
            arr = read_mask(path, self.num_classes, self.reduce_zero_label)
        else:
            arr = read_depth(path)
        return resize_nearest(arr, size)


def resize_nearest(arr: np.ndarray, size: Sequence[int]) -> torch.Tensor:
    """A 2-D array resized to ``size`` (H, W) with nearest neighbour, as a tensor."""
    from PIL import Image

    h, w = (int(v) for v in size)
    if arr.shape != (h, w):
        mode = "L" if arr.dtype == np.uint8 else "F"
        img = Image.fromarray(arr if mode == "L" else arr.astype(np.float32), mode=mode)
        arr = np.asarray(img.resize((w, h), Image.Resampling.NEAREST))
    return torch.from_numpy(np.array(arr))


def read_mask(path: Path, num_classes: int | None, reduce_zero_label: bool) -> np.ndarray:
    """A label map as uint8 class indices (255: ignored), checked against ``num_classes``."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in MASK_MODES:
            raise ValueError(
                f"{path} is a {im.mode} image, not a label map: save one channel of class "
                "indices (a PNG of mode L or P; 255 for pixels to ignore)"
            )
        arr = np.asarray(im).astype(np.int64)
    if reduce_zero_label:  # mmsegmentation's: 0 -> ignored, the others down by one
        arr = np.where(arr == 0, IGNORE + 1, arr) - 1
        arr[arr == IGNORE - 1] = IGNORE
    if num_classes is not None:
        bad = (arr >= num_classes) & (arr != IGNORE)
        if bad.any():
            label = int(arr[bad].max()) + (1 if reduce_zero_label else 0)
            raise ValueError(
                f"{path} holds label {label}, but the data has {num_classes} classes"
                f"{' after reduce_zero_label' if reduce_zero_label else ''}: give all the "
                "class names (--classes or --num-classes), or mark the pixels 255 (ignored)"
            )
    return arr.astype(np.uint8)


def read_depth(path: Path) -> np.ndarray:
    """A depth map in metres (float32; 0 where unknown): a 16-bit PNG in millimetres or an
    ``.npy`` array in metres."""
    if path.suffix.lower() == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.ndim != 2 or arr.dtype.kind != "f":
            raise ValueError(
                f"{path} holds a {arr.dtype} array of shape {arr.shape}: a depth map in .npy is "
                "a 2-D float array in metres (0 where unknown)"
            )
        return np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in DEPTH_PNG_MODES:
            raise ValueError(_wrong_depth(path, im.mode))
        return np.asarray(im).astype(np.float32) / DEPTH_PNG_SCALE


def _wrong_depth(path: Path, mode: str) -> str:
    what = "an 8-bit" if mode in ("L", "P", "1") else f"a {mode}"
    return (
        f"{path} is {what} image, not a depth map: save depth as a 16-bit PNG in millimetres "
        "(mode I;16) or as a 2-D float .npy array in metres"
    )


# -- folders --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DenseListing:
    """Images and their targets of one split of a dense folder, paired by file stem."""

    images: tuple[Path, ...]
    targets: tuple[Path, ...]
    kind: str


def dense_layout(root: str | Path) -> str | None:
    """``mask`` or ``depth`` when ``root`` is a dense folder (``img_dir/`` beside ``ann_dir/``
    or ``depth_dir/``), else None."""
    root = Path(root)
    if not (root / IMG_DIR).is_dir():
        return None
    if (root / ANN_DIR).is_dir():
        return "mask"
    if (root / DEPTH_DIR).is_dir():
        return "depth"
    raise ValueError(f"{root} has {IMG_DIR}/ but neither {ANN_DIR}/ nor {DEPTH_DIR}/; {_LAYOUT}")


def list_dense(root: str | Path, split: str, kind: str) -> DenseListing:
    """Every image of ``root/img_dir/split`` with its target, checked from the files' headers:
    a missing target, sizes that differ and depth maps of the wrong type are refused here."""
    root = Path(root)
    images_dir = root / IMG_DIR / split
    targets_dir = root / (ANN_DIR if kind == "mask" else DEPTH_DIR) / split
    for folder in (images_dir, targets_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} does not exist; {_LAYOUT.format(split=split)}")
    images = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
    if not images:
        raise ValueError(f"no images in {images_dir}; {_LAYOUT.format(split=split)}")
    suffixes = (".png",) if kind == "mask" else (".png", ".npy")
    by_stem = {
        p.relative_to(targets_dir).with_suffix(""): p
        for p in sorted(targets_dir.rglob("*"))
        if p.suffix.lower() in suffixes
    }
    targets = []
    for image in images:
        target = by_stem.get(image.relative_to(images_dir).with_suffix(""))
        if target is None:
            want = targets_dir / image.relative_to(images_dir).with_suffix(suffixes[0])
            raise ValueError(
                f"{image} has no {'label map' if kind == 'mask' else 'depth map'}: expected {want}"
                " (paired by file stem); add it, or remove the image"
            )
        _check_pair(image, target, kind)
        targets.append(target)
    return DenseListing(tuple(images), tuple(targets), kind)


def _check_pair(image: Path, target: Path, kind: str) -> None:
    """The target's size (and, for depth, type) from the headers alone."""
    from PIL import Image

    with Image.open(image) as im:
        size = im.size  # (W, H)
    if target.suffix.lower() == ".npy":
        arr = np.load(target, mmap_mode="r", allow_pickle=False)
        if arr.ndim != 2 or arr.dtype.kind != "f":
            read_depth(target)  # the one-line error for the wrong type
        other, mode = (arr.shape[1], arr.shape[0]), None
    else:
        with Image.open(target) as t:
            other, mode = t.size, t.mode
        if kind == "depth" and mode not in DEPTH_PNG_MODES:
            raise ValueError(_wrong_depth(target, mode))
        if kind == "mask" and mode not in MASK_MODES:
            read_mask(target, None, False)  # the one-line error for the wrong type
    if other != size:
        raise ValueError(
            f"{target} is {other[0]}×{other[1]} but its image {image} is {size[0]}×{size[1]}: "
            "a target must have its image's size (resize it with nearest neighbour, or fix the "
            "pairing)"
        )


def write_dense_folder(images: ImageSet, root: str | Path, split: str) -> Path:
    """Write an in-memory dense set in the layout above: ``root/img_dir/split/NNNNNN.png`` with
    its label map (PNG, mode L) in ``ann_dir`` or its depth map (16-bit PNG, millimetres) in
    ``depth_dir``; returns ``root``.

    Example: ``write_dense_folder(fashion_mnist_canvas("test", 100), "/tmp/canvas", "val")``
    """
    from PIL import Image

    if images.memory is None or images.dense is None or images.dense.memory is None:
        raise ValueError("write_dense_folder writes an image set held in memory with dense targets")
    root = Path(root)
    kind = images.dense.kind
    img_dir = root / IMG_DIR / split
    target_dir = root / (ANN_DIR if kind == "mask" else DEPTH_DIR) / split
    for folder in (img_dir, target_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(len(images)):
        pixels = images.memory[i].numpy()
        pixels = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
        Image.fromarray(pixels).save(img_dir / f"{i:06d}.png")
        target = images.dense.memory[i].numpy()
        if kind == "depth":
            target = Image.fromarray(np.round(target * DEPTH_PNG_SCALE).astype(np.uint16))
        else:
            target = Image.fromarray(target, mode="L")
        target.save(target_dir / f"{i:06d}.png")
    return root
