"""What the serving core needs from the runtime that computes a network: the backend contract.

The batcher, the app, the controller and the Ray deployment never touch tensors: they hand a
backend per-image inputs it made (:meth:`Backend.pixels`) and get back per-image probabilities
it turns into each image's answer (:meth:`Backend.answers`: the top classes, or a dense
network's label or depth map as a PNG). :class:`~snnet.serve.model.ServedModel` is the torch
backend and :class:`~snnet.serve.ort.OrtBackend` the ONNX Runtime one (an exported front,
served without torch); another runtime slots in by offering the same members, and
:func:`load_backend` picks one for a directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from snnet.artifact import FORMAT as FRONT_FORMAT
from snnet.files import CONFIG
from snnet.measure.results import Record, Results
from snnet.stitch import Stitch

if TYPE_CHECKING:
    from PIL import Image


def is_front(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding an exported front."""
    config = Path(path) / CONFIG
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("format") == FRONT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


class Backend(Protocol):
    """One network loaded for serving, with its results.

    ``results`` holds every stitch's costs and accuracy, and latency measured on the device it
    runs on; ``front`` the stitches on the Pareto front of latency against top-1, cheapest
    first; ``classes`` the class names; ``source`` where it was loaded from.
    """

    results: Results
    front: list[Record]
    classes: tuple[str, ...]
    source: str

    def check(self, stitch: Stitch | str) -> Stitch:
        """The stitch, or a ``ValueError`` saying why the network has no such stitch."""

    def describe(self, stitch: Stitch) -> str:
        """What ``stitch`` runs, in words."""

    def preprocess_json(self) -> dict[str, Any]:
        """How an image becomes the network's input, as JSON."""

    def pixels(self, image: Image.Image) -> Any:
        """One decoded image as the input :meth:`run` takes (resized and cropped, not yet
        normalised: that is done per batch)."""

    def run(self, pixels: Sequence[Any], stitch: Stitch) -> Sequence[Any]:
        """The output of ``stitch``, one row per image of ``pixels`` (called on the replica's
        worker thread): class probabilities, or a dense network's label or depth map."""

    def answers(self, rows: Sequence[Any], k: int) -> list[dict[str, Any]]:
        """Each row's answer fields: ``top``, the ``k`` most probable classes (``index``,
        ``label``, ``prob``), or a dense network's map (:mod:`snnet.serve.maps`)."""

    def prepare(self, stitches: Iterable[Stitch], *, max_batch: int) -> list[Stitch]:
        """Get ``stitches`` ready to run fast (trace, compile, warm up) for batches of up to
        ``max_batch``; returns those that stay on the slow path."""

    def batch_ms(self, sizes: Iterable[int]) -> dict[int, dict[Stitch, float]]:
        """The time of a batch of each size per front stitch, measured now as :meth:`run`
        runs it: what the SLO controller predicts from."""

    def set_threads(self, threads: int) -> None:
        """Compute with ``threads`` threads (called on the event loop's thread and on the
        worker thread)."""


def load_backend(
    path: str | Path,
    *,
    results: str | Path | None = None,
    device: str = "cpu",
    threads: int | None = None,
) -> Backend:
    """The backend for ``path``: an exported front (``snnet export RUN --front``) on ONNX
    Runtime, without torch; else a run directory or saved network on torch (``results``: its
    results file, default the run's), loaded on ``device``. With ``threads``, set before
    loading (a load may measure latency).

    Example:
        >>> backend = load_backend("runs/demo")          # torch
        >>> backend = load_backend("deploy/demo-front")  # ONNX Runtime
    """
    if is_front(path):
        if device != "cpu" or results is not None:
            raise ValueError(
                "an exported front is served on the CPU with the results it holds: drop "
                "--device and --results"
            )
        from snnet.serve.ort import OrtBackend

        return OrtBackend.load(path, threads=threads or 1)
    from snnet.serve.model import ServedModel  # torch: only the torch backend imports it

    if threads is not None:
        ServedModel.set_threads(threads)
    return ServedModel.load(path, results=results, device=device)
