"""A dense network's answer for one image: its label map or depth map as a PNG, base64 in the
JSON answer (no torch; PIL and numpy, as the ONNX Runtime server has them).

The maps are at the network's input size, on the image as the preprocessing resized and
cropped it (``/v1/stitches`` says how). A label map is an 8-bit PNG whose pixel values are
class indices (the ``classes`` of ``/v1/stitches`` name them); a depth map is a 16-bit PNG in
millimetres, the layout depth data sets use (NYUv2's, and what ``snnet train --task depth``
reads).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable
from typing import Any

import numpy as np
from PIL import Image


def png(array: np.ndarray) -> str:
    """``array`` (H, W; uint8 or uint16) as a base64 PNG."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)  # fast: answers are hot
    return base64.b64encode(buf.getvalue()).decode("ascii")


def label_answer(labels: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    """A segmentation answer: the label map and the share of the image each present class
    covers, largest first."""
    labels = np.asarray(labels, dtype=np.uint8)
    counts = np.bincount(labels.ravel(), minlength=len(classes))
    order = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i]]
    return {
        "mask": png(labels),
        "size": list(labels.shape),
        "classes": [
            {"index": i, "label": classes[i], "share": round(float(counts[i]) / labels.size, 4)}
            for i in order
        ],
    }


def depth_answer(metres: np.ndarray) -> dict[str, Any]:
    """A depth answer: the 16-bit PNG in millimetres (rounded; 65.535 m at most) and the range."""
    metres = np.asarray(metres, dtype=np.float32)
    mm = np.clip(np.rint(metres * 1000.0), 0, 65535).astype(np.uint16)
    return {
        "depth": png(mm),
        "units": "mm",
        "size": list(metres.shape),
        "min_m": round(float(metres.min()), 4),
        "max_m": round(float(metres.max()), 4),
    }


def dense_answers(kind: str, maps: Iterable[np.ndarray], classes: tuple[str, ...]) -> list[dict]:
    """Each of a dense network's ``maps`` as its answer: ``kind`` ``segmentation`` (label
    maps, :func:`label_answer`) or ``depth`` (metres, :func:`depth_answer`)."""
    if kind == "segmentation":
        return [label_answer(m, classes) for m in maps]
    if kind == "depth":
        return [depth_answer(m) for m in maps]
    raise ValueError(f"{kind!r} networks answer with classes, not maps")


def decode_png(data: str) -> np.ndarray:
    """The array a :func:`png` string holds (for clients and tests)."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))
