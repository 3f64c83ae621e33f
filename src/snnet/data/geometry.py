"""The per-image half of preprocessing on PIL and numpy alone: resize and crop as timm's
evaluation transform does it, to (C, H, W) uint8 pixels.

:meth:`DataConfig.pixels <snnet.data.config.DataConfig.pixels>` is this, wrapped as a tensor;
a server without torch (``snnet serve`` of an ONNX front) calls :func:`pixels_array` directly.
Each crop mode follows timm's ``transforms_imagenet_eval`` (torchvision's ``Resize`` and
``CenterCrop`` on PIL images, timm's ``ResizeKeepRatio`` and ``CenterCropOrPad``), pixel for pixel
(``tests/test_data.py`` compares them over sizes, modes and interpolations).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from snnet.data.config import DataConfig

#: PIL's resampling filter for each interpolation a DataConfig names (as torchvision maps them).
RESAMPLE = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
    "box": Image.BOX,
    "hamming": Image.HAMMING,
}


def resize_and_crop(img: Image.Image, cfg: DataConfig) -> Image.Image:
    """``img`` (already in ``cfg.mode``) resized and cropped to ``cfg.size`` as timm's
    evaluation transform does for ``cfg.crop_mode``."""
    h, w = cfg.size
    scale = (math.floor(h / cfg.crop_pct), math.floor(w / cfg.crop_pct))
    resample = RESAMPLE[cfg.interpolation]
    if cfg.crop_mode == "squash":
        img = _resize(img, scale, resample)
        return _center_crop(img, (h, w), fill=0)
    if cfg.crop_mode == "border":
        img = _resize(img, _keep_ratio(img, scale, longest=1.0), resample)
        return _center_crop(img, (h, w), fill=tuple(round(255 * v) for v in cfg.mean))
    if scale[0] == scale[1]:  # the short side to scale, the long side in proportion
        short, long = sorted(img.size)
        new_long = int(scale[0] * long / short)
        size = (scale[0], new_long) if img.width <= img.height else (new_long, scale[0])
        img = _resize(img, size[::-1], resample)
    else:
        img = _resize(img, _keep_ratio(img, scale, longest=0.0), resample)
    return _center_crop(img, (h, w), fill=0)


def pixels_array(img: Image.Image, cfg: DataConfig) -> np.ndarray:
    """One image as the network's pixels: converted to ``cfg.mode``, resized and cropped, as a
    (C, H, W) uint8 array (not yet normalised).

    Example:
        >>> pixels_array(Image.open("shoe.png"), DataConfig.fashion_mnist()).shape
        (1, 28, 28)
    """
    x = np.array(resize_and_crop(img.convert(cfg.mode), cfg), dtype=np.uint8)
    return x[None] if x.ndim == 2 else np.ascontiguousarray(x.transpose(2, 0, 1))


def _resize(img: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
    """``img`` at ``size`` (H, W); the image itself when it is that size already."""
    if (img.height, img.width) == tuple(size):
        return img
    return img.resize((size[1], size[0]), resample)


def _keep_ratio(img: Image.Image, target: tuple[int, int], *, longest: float) -> tuple[int, int]:
    """timm's ``ResizeKeepRatio`` size (H, W): the ratio of the short side (``longest=0``) or
    the long side (``longest=1``) to ``target``, applied to both sides."""
    ratio_h, ratio_w = img.height / target[0], img.width / target[1]
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    return round(img.height / ratio), round(img.width / ratio)


def _center_crop(img: Image.Image, size: tuple[int, int], *, fill: int | tuple) -> Image.Image:
    """torchvision's ``center_crop`` on PIL (timm's ``center_crop_or_pad`` with ``fill``): pad
    a side smaller than ``size`` evenly (the extra pixel right and bottom), then crop the
    centre."""
    crop_h, crop_w = size
    if crop_w > img.width or crop_h > img.height:
        left = (crop_w - img.width) // 2 if crop_w > img.width else 0
        top = (crop_h - img.height) // 2 if crop_h > img.height else 0
        right = (crop_w - img.width + 1) // 2 if crop_w > img.width else 0
        bottom = (crop_h - img.height + 1) // 2 if crop_h > img.height else 0
        color = fill if isinstance(fill, int) else fill[0] if img.mode == "L" else tuple(fill)
        padded = Image.new(img.mode, (img.width + left + right, img.height + top + bottom), color)
        padded.paste(img, (left, top))
        img = padded
        if (img.height, img.width) == (crop_h, crop_w):
            return img
    top = round((img.height - crop_h) / 2.0)
    left = round((img.width - crop_w) / 2.0)
    return img.crop((left, top, left + crop_w, top + crop_h))
